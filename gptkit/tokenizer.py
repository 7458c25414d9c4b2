"""
Text <-> token ids: the character vocabulary of a dataset's meta.pkl, or GPT-2's BPE (tiktoken); the
vocabulary sizes and the rule for whether a model's vocabulary fits a dataset's; streamed decoding.
"""

from gptkit.errors import UserError

GPT2_VOCAB = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>
GPT2_EOT = 50256  # <|endoftext|>, GPT-2's last token
# GPT-2's vocabulary padded up to a multiple of 64 for faster matmuls (nanoGPT's choice); the padding
# rows are never produced by the tokenizer
GPT2_PADDED_VOCAB = 50304


def vocab_mismatch(vocab_size, meta):
    """Why a model with `vocab_size` output tokens cannot be used with a dataset whose meta.pkl is
    `meta` (None for GPT-2 BPE data, which has none), or None when it can: a character model needs
    exactly its vocabulary, and other data needs every id it holds to have a row."""
    if meta is not None and "stoi" in meta and meta["vocab_size"] != vocab_size:
        return f"a vocabulary of {vocab_size} tokens but the character vocabulary has {meta['vocab_size']}"
    if meta is not None and meta.get("vocab_size", 0) > vocab_size:
        return f"a vocabulary of {vocab_size} tokens but the data uses {meta['vocab_size']}"
    if meta is None and vocab_size < GPT2_VOCAB:
        return f"a vocabulary of {vocab_size} tokens, too few for GPT-2's {GPT2_VOCAB} BPE tokens"
    return None


class CharTokenizer:
    """nanoGPT's character-level vocabulary: stoi/itos dicts stored in meta.pkl."""

    def __init__(self, meta):
        self.stoi, self.itos = meta["stoi"], meta["itos"]
        self.vocab_size = meta["vocab_size"]
        self.eot = None
        self.name = "char"
        self.chat_template = None  # a fine-tuned run's conversation.Transcript (loading.load_for_inference)

    def encode(self, text):
        unknown = sorted({c for c in text if c not in self.stoi})
        if unknown:
            raise UserError(f"the prompt has characters outside this model's vocabulary: {''.join(unknown)!r}; "
                            f"remove them (the model knows only the characters of its training text)")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        return "".join(self.itos[i] for i in ids)

    def token_bytes(self):
        """Bytes of UTF-8 text each id stands for (bits per byte divides by them): 1 for ASCII, 2-4 beyond."""
        return [len(self.itos[i].encode("utf-8")) for i in range(self.vocab_size)]


class BPETokenizer:
    """GPT-2's byte-pair encoding through tiktoken."""

    # tiktoken's r50k_base is GPT-2's encoding (the same ranks, pattern and <|endoftext|>) in its own
    # file format, which loads in 0.09 s where the gpt2 files take 0.31 s; gpt2 is the fallback for a
    # cache that holds only its files
    ENCODINGS = ("r50k_base", "gpt2")

    def __init__(self):
        import tiktoken
        for name in self.ENCODINGS:
            try:
                self.enc = tiktoken.get_encoding(name)
                break
            except Exception as e:  # network errors come in several types depending on the version
                error = e
        else:
            raise UserError(f"could not load GPT-2's tokenizer ({type(error).__name__}); tiktoken downloads it on "
                            f"first use, so connect to the internet once, or point TIKTOKEN_CACHE_DIR at a folder "
                            f"holding its files") from None
        self.vocab_size = self.enc.n_vocab
        self.eot = self.enc.eot_token
        self.name = "gpt2"
        self.chat_template = None  # a fine-tuned run's conversation.Transcript (loading.load_for_inference)

    def encode(self, text):
        return self.enc.encode(text, allowed_special={"<|endoftext|>"})

    def decode(self, ids):
        return self.enc.decode(ids)

    def token_bytes(self):
        """Bytes of text each id stands for (bits per byte divides by them); 0 for <|endoftext|>, which
        stands for none."""
        return [0 if i == self.eot else len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]


def load_tokenizer(meta):
    """The character vocabulary when a dataset's meta.pkl has one, else GPT-2 BPE."""
    if meta and "stoi" in meta:
        return CharTokenizer(meta)
    return BPETokenizer()


class StreamDecoder:
    """Turns tokens into text as they arrive. A BPE token can end in the middle of a multi-byte
    character; such a tail is held back until the next token completes it."""

    def __init__(self, tokenizer):
        self.tok, self.ids, self.done = tokenizer, [], 0

    def push(self, token_id):
        """Add a token; return the newly completed text (possibly empty)."""
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.done = text[self.done:], len(text)
        return new


class StopText:
    """Streams generated text up to the first of some stop strings, which are left out. Text that
    might be the start of a stop string is held back until the next tokens settle it.

    line_stop, when given, is a test on whole lines: the text ends before the first line it accepts
    (a play's speaker line, say), and a line is shown only once it is complete."""

    def __init__(self, stops, line_stop=None):
        self.stops = [s for s in stops if s]
        self.line_stop = line_stop
        self.text, self.shown, self.stopped = "", 0, False

    def _line_cut(self, complete_only=True):
        """Where the first line accepted by line_stop starts (its preceding newline), or -1."""
        start = 0
        while True:
            end = self.text.find("\n", start)
            if end < 0 and complete_only:
                return -1
            line = self.text[start:] if end < 0 else self.text[start:end]
            if self.line_stop(line):
                return max(start - 1, 0)
            if end < 0:
                return -1
            start = end + 1

    def push(self, new_text):
        """Add text; return the part that is now safe to show."""
        if self.stopped:
            return ""
        self.text += new_text
        cuts = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if self.line_stop is not None and self._line_cut() >= 0:
            cuts.append(self._line_cut())
        cut = min(cuts, default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            safe = cut
        else:  # hold back the longest tail that begins some stop string
            hold = max((n for s in self.stops for n in range(1, len(s)) if self.text.endswith(s[:n])), default=0)
            safe = len(self.text) - hold
            if self.line_stop is not None:  # and the line under way, with the newline before it
                safe = min(safe, max(self.text.rfind("\n"), 0))
        out, self.shown = self.text[self.shown:safe], max(self.shown, safe)
        return out

    def flush(self):
        """The held-back tail, once generation has ended without a stop (less a last line that
        line_stop accepts, cut short by the length limit)."""
        if self.line_stop is not None and not self.stopped:
            cut = self._line_cut(complete_only=False)
            if cut >= 0:
                self.text, self.stopped = self.text[:cut], True
        out, self.shown = self.text[self.shown:], max(self.shown, len(self.text))
        return out

"""
Text <-> token ids: the character vocabulary of a dataset's meta.pkl, GPT-2's BPE (tiktoken), or a
byte-level BPE trained on the corpus (Hugging Face tokenizers); the vocabulary sizes and the rule for
whether a model's vocabulary fits a dataset's; streamed decoding.
"""

import hashlib
import os

from gptkit.errors import USAGE, UserError
from gptkit.hf_tokenizer import TOKENIZER_FILE, HFTokenizer, token_bytes

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
    if meta is not None and meta.get("tokenizer") and not meta.get("hf") and meta["vocab_size"] != vocab_size:
        return f"a vocabulary of {vocab_size} tokens but the trained tokenizer has {meta['vocab_size']}"
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
        self.stop_ids = []  # the tokens that end a sample
        self.name = "char"
        self.chat_template = None  # a fine-tuned run's conversation.Transcript (loading.load_for_inference)
        self.prompt_format = None  # a run's arithmetic.ProblemFormat, where it was trained on generated problems

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
        self.stop_ids = [self.eot]  # the tokens that end a sample
        self.name = self.id = "gpt2"
        self.chat_template = None  # a fine-tuned run's conversation.Transcript (loading.load_for_inference)
        self.prompt_format = None  # a run's arithmetic.ProblemFormat, where it was trained on generated problems

    def meta(self):
        return None  # GPT-2 data has no meta.pkl (nanoGPT's layout)

    def encode(self, text):
        return self.enc.encode(text, allowed_special={"<|endoftext|>"})

    def encode_ordinary_batch(self, texts, num_threads=8):
        return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)

    def decode(self, ids):
        return self.enc.decode(ids)

    def token_bytes(self):
        """Bytes of text each id stands for (bits per byte divides by them); 0 for <|endoftext|>, which
        stands for none."""
        return [0 if i == self.eot else len(self.enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)]


# -----------------------------------------------------------------------------
# a byte-level BPE trained on the corpus

# End of text (what GPT-2 calls it), then the chat template's markers (conversation.SFT): real special
# tokens, each one id that no text encodes to, so a reply's end is one token the model learns to write.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# GPT-4's pre-tokenization (tiktoken's cl100k_base pattern): text is cut into words, runs of up to three
# digits, punctuation and whitespace before any merge, so no token spans two words; GPT-2's own pattern
# makes a token of every run of digits and mishandles case in contractions ('S, 'LL)
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte is a token, so any text can be encoded


def sha256_text(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_bpe(texts, vocab_size, length=None):
    """A TrainedTokenizer of vocab_size tokens fit to texts (an iterable of strings, read once):
    the 256 bytes, SPECIAL_TOKENS (ids 0, 1, 2) and merges of the most frequent pairs, each seen at
    least twice. The same texts in the same pieces give the same tokenizer, byte for byte."""
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise UserError("training a tokenizer needs Hugging Face tokenizers: pip install tokenizers (transformers "
                        "installs it too)") from None
    if vocab_size < MIN_VOCAB:
        raise UserError(f"--vocab_size={vocab_size} is too small: a byte-level BPE has the 256 bytes and "
                        f"{len(SPECIAL_TOKENS)} special tokens before any merge; use at least {MIN_VOCAB}",
                        status=USAGE)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),  # bytes as printable characters
    ])
    tok.decoder = decoders.ByteLevel()
    # min_frequency=2: a pair seen once is a piece of one word, a merge that saves one token once
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer, length=length)
    got = tok.get_vocab_size()
    if got < vocab_size:
        raise UserError(f"--vocab_size={vocab_size} is more than this text supports: after {got - MIN_VOCAB:,} merges "
                        f"no pair of tokens occurs twice, so it has {got:,} tokens; use --vocab_size={got} or less, "
                        f"or more text", status=USAGE)
    return TrainedTokenizer(tok.to_str())


class TrainedTokenizer:
    """A byte-level BPE trained on the dataset (train_bpe), stored as the dataset's tokenizer.json in
    Hugging Face's format (what transformers' PreTrainedTokenizerFast reads). Special tokens written
    in a prompt (<|im_start|>...) are those tokens; in training documents they are plain text
    (encode_ordinary), as tiktoken treats them, so a document cannot fake the end of a text."""

    def __init__(self, json_text, source="the tokenizer"):
        from tokenizers import Tokenizer
        try:
            self.tok = Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises its own exception type for a malformed file
            raise UserError(f"{source} is not a Hugging Face tokenizer file ({str(e)[:100]}); prepare the "
                            f"dataset again") from None
        self.json = json_text
        self.plain = Tokenizer.from_str(json_text)
        self.plain.encode_special_tokens = True  # documents: special markers are text
        self.sha256 = sha256_text(json_text)
        self.vocab_size = self.tok.get_vocab_size()
        self.eot = self.tok.token_to_id(SPECIAL_TOKENS[0])
        if self.eot is None:
            raise UserError(f"{source} has no {SPECIAL_TOKENS[0]} token, so it was not made by a prepare script; "
                            f"prepare the dataset again")
        self.stop_ids = [self.eot]  # the tokens that end a sample
        self.name = "bpe"
        self.id = f"bpe:{self.sha256[:16]}"  # what dataset.json and every shard record as their tokenizer
        self.chat_template = None  # a fine-tuned run's conversation.Transcript (loading.load_for_inference)

    @classmethod
    def load(cls, path, sha256=None):
        """The tokenizer in path; with sha256 (what meta.pkl recorded), refused unless it is that file."""
        return cls(cls.read(path, sha256), path)

    @staticmethod
    def read(path, sha256=None):
        """The text of the tokenizer.json in path; with sha256, refused unless it is that file."""
        if not os.path.isfile(path):
            raise UserError(f"{path} is missing: the vocabulary in its folder names a trained tokenizer; copy the "
                            f"dataset's {TOKENIZER_FILE} there, or prepare the dataset again")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if sha256 is not None and sha256_text(text) != sha256:
            raise UserError(f"{path} is not the tokenizer the dataset was prepared with (its hash differs from the "
                            f"one meta.pkl records), so token ids would mean other text; copy the dataset's "
                            f"{TOKENIZER_FILE} there, or prepare the dataset again")
        return text

    def meta(self):
        """The meta.pkl that names this tokenizer: how train.py sizes the model and copies the tokenizer
        into the run, as it copies a character vocabulary."""
        return {"vocab_size": self.vocab_size, "tokenizer": TOKENIZER_FILE, "tokenizer_sha256": self.sha256,
                "eot": self.eot}

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text):
        return self.plain.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts, num_threads=None):
        """Many documents at once, on all cores (the Rust core's threads: RAYON_NUM_THREADS, read when the
        first batch starts them, caps them; num_threads is tiktoken's argument, unused here)."""
        return [e.ids for e in self.plain.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_with_starts(self, texts):
        """[(ids, start)] of texts with special tokens: start[i] is the character where token i begins."""
        return [(e.ids, [a for a, _ in e.offsets]) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self):
        return token_bytes(self.tok, self.vocab_size)



def text_ids(tok, text):
    """The ids of text alone, without the BOS that a Hugging Face tokenizer adds where its model expects one
    (for a continuation or a stop sequence); the other tokenizers add nothing."""
    return tok.encode(text, add_special_tokens=False) if tok.name == "hf" else tok.encode(text)


def load_tokenizer(meta, folder=None):
    """The tokenizer of a dataset's or run's meta.pkl (in folder): its character vocabulary, the
    trained tokenizer it names (folder/tokenizer.json, checked against the hash meta.pkl records),
    or, without meta.pkl, GPT-2 BPE."""
    if meta and "stoi" in meta:
        return CharTokenizer(meta)
    if meta and meta.get("hf"):  # a Hugging Face model's tokenizer (hf_tokenizer), with its special tokens
        path = os.path.join(folder or ".", meta["tokenizer"])
        return HFTokenizer.from_meta(TrainedTokenizer.read(path, meta["tokenizer_sha256"]), meta, path)
    if meta and meta.get("tokenizer"):
        return TrainedTokenizer.load(os.path.join(folder or ".", meta["tokenizer"]), meta.get("tokenizer_sha256"))
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

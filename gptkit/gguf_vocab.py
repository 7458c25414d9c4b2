"""
The tokenizer inside a GGUF file: llama.cpp's tokenizer.ggml.* keys (model "gpt2": byte-level BPE tokens,
their types, merges, pre-tokenizer name, BOS/EOS ids) for GPT-2's BPE or for a tokenizer.json, the file
of a tokenizer trained by a prepare script or of a Hugging Face model a run started from.

The keys are the ones llama.cpp's convert_hf_to_gguf.py writes for the same tokenizer: ids past the
tokenizer's end (rows a release pads its embedding with) become "[PAD<id>]" tokens of type UNUSED, added
special tokens CONTROL, other added tokens USER_DEFINED, the rest NORMAL; merges as "a b" strings.
"""

import json
from dataclasses import dataclass

from gptkit import hf
from gptkit.errors import UserError
from gptkit.tokenizer import GPT2_EOT, GPT2_VOCAB

# llama.cpp picks its pre-tokenizer (the regex that cuts text into words before any merge) by name, not
# from the file; these are the names whose regex is the one a tokenizer.json's Split pre-tokenizer holds
SPLIT_NAMES = {
    # Llama 3's pattern
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    # GPT-4's (tiktoken's cl100k_base), what the prepare scripts train with (tokenizer.SPLIT_PATTERN): llama.cpp
    # runs Llama 3's regex for it, which cuts text the same way (Llama 3 took it from cl100k_base, spelled
    # without possessive quantifiers, which change nothing in these alternatives)
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""":
        "llama-bpe",
    # Qwen2's, Qwen2.5's and Qwen3's: Llama 3's with one digit a word
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


@dataclass
class Vocabulary:
    tokens: list  # by id, in the byte-level spelling (a space is "Ġ")
    types: list  # gguf.TokenType values by id
    merges: list  # "a b", highest priority first
    pre: str  # llama.cpp's name of the pre-tokenizer
    bos: int
    eos: int
    add_bos: bool  # whether encoding a prompt puts BOS first (llama.cpp then adds it too)
    pad: int = None
    chat_template: str = None

    def write(self, w):
        """Write the tokenizer.ggml.* keys (and a chat template) with a gguf.GGUFWriter."""
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(self.pre)
        w.add_token_list(self.tokens)
        w.add_token_types(self.types)
        w.add_token_merges(self.merges)
        w.add_bos_token_id(self.bos)
        w.add_eos_token_id(self.eos)
        if self.pad is not None:
            w.add_pad_token_id(self.pad)
        w.add_add_bos_token(self.add_bos)
        if self.chat_template:
            w.add_chat_template(self.chat_template)


def gpt2(tokenizer_dir=None):
    """GPT-2's BPE (vocab.json and merges.txt of tokenizer_dir, else made from tiktoken's files)."""
    import gguf
    files = hf.gpt2_bpe_files(tokenizer_dir)
    vocab = json.loads(files["vocab.json"])
    tokens = [None] * len(vocab)
    for token, i in vocab.items():
        tokens[i] = token
    if len(tokens) != GPT2_VOCAB or None in tokens:
        raise UserError(f"the tokenizer files in {tokenizer_dir or 'the tiktoken cache'} are not GPT-2's ({len(vocab)} "
                        f"tokens, not {GPT2_VOCAB}); use GPT-2's vocab.json and merges.txt")
    # merges.txt: a '#version' line, then one 'a b' pair per line in rank order (pairs may begin with '#')
    lines = files["merges.txt"].decode("utf-8").split("\n")
    merges = [line for line in lines[1 if lines[0].startswith("#version") else 0:] if line]
    types = [gguf.TokenType.CONTROL if i == GPT2_EOT else gguf.TokenType.NORMAL for i in range(len(tokens))]
    # GPT-2 reads a prompt as it is: no BOS added
    return Vocabulary(tokens, types, merges, "gpt-2", GPT2_EOT, GPT2_EOT, add_bos=False)


def pre_tokenizer_name(spec, source):
    """llama.cpp's name for a tokenizer.json's pre_tokenizer (a dict); a sentence when it has none."""
    parts = spec.get("pretokenizers", [spec]) if spec else []
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # GPT-2's own pattern, inside the ByteLevel step
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"  # SmolLM's and SmolLM2's: one digit a word, then GPT-2's pattern
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        if pattern in SPLIT_NAMES:
            return SPLIT_NAMES[pattern]
    raise UserError(f"the pre-tokenizer of {source} ({json.dumps(spec)[:120]}) is not one llama.cpp knows by name "
                    f"(it knows GPT-2's, Llama 3's, Qwen2's and SmolLM's), so llama.cpp would cut text into other "
                    f"tokens; export it with --format=hf instead")


def from_tokenizer_json(json_text, rows, source, bos=None, eos=None, chat_template=None):
    """The vocabulary of a tokenizer.json (byte-level BPE) for a model of `rows` embedding rows; bos, eos:
    the special tokens' text (None: the first special token)."""
    import gguf
    from tokenizers import Tokenizer
    spec = json.loads(json_text)
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(decoder):
        raise UserError(f"{source} is not a byte-level BPE (its model is {model.get('type')}), the only kind "
                        f"llama.cpp's gpt2 tokenizer reads; export it with --format=hf instead")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"), source)
    tok = Tokenizer.from_str(json_text)
    vocab = tok.get_vocab(with_added_tokens=True)
    n = max(vocab.values()) + 1
    if n > rows:
        raise UserError(f"{source} has {n} tokens and the model {rows} embedding rows: they do not belong together")
    tokens, types = [f"[PAD{i}]" for i in range(rows)], [gguf.TokenType.UNUSED] * rows
    added = tok.get_added_tokens_decoder()
    for token, i in vocab.items():
        tokens[i] = token
        if i in added:
            types[i] = gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
        else:
            types[i] = gguf.TokenType.NORMAL
    # tokenizers writes merges as "a b" strings or, since 0.20, as [a, b] pairs
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    specials = [added[i].content for i in sorted(added) if added[i].special]
    if not specials and eos is None:
        raise UserError(f"{source} has no special token to end a text with; export it with --format=hf instead")
    eos_id = vocab[eos if eos is not None else specials[0]]
    # without a BOS of its own (Qwen's), the first special token: what the converter takes from config.json
    bos_id = vocab[bos if bos is not None else specials[0] if specials else eos]
    first = tok.encode("a", add_special_tokens=True).ids  # the post-processor's BOS, as transformers adds it
    add_bos = len(first) > 1 and first[0] == bos_id
    return Vocabulary(tokens, types, merges, pre, bos_id, eos_id, add_bos, chat_template=chat_template)


def of_tokenizer(tok, rows, source, chat_template=None):
    """The vocabulary of a run's tokenizer (tokenizer.TrainedTokenizer or hf_tokenizer.HFTokenizer) for a
    model of `rows` embedding rows."""
    special = getattr(tok, "special", None)
    if special is not None:  # a Hugging Face model's own: its BOS, EOS, padding and template
        v = from_tokenizer_json(tok.json, rows, source, special.get("bos_token"),
                                special.get("eos_token") or tok.tok.id_to_token(tok.eot), chat_template or tok.template)
        if special.get("pad_token") is not None:
            v.pad = tok.tok.token_to_id(special["pad_token"])
        return v
    eot = tok.tok.id_to_token(tok.eot)
    return from_tokenizer_json(tok.json, rows, source, eot, eot, chat_template)

"""
A Hugging Face model's own tokenizer and chat template: tokenizer.json through the `tokenizers` library,
with the folder's special tokens, BOS/EOS and generation_config.json's end-of-sequence ids as stop
tokens, and the Jinja chat template rendered as transformers' apply_chat_template renders it.
"""

import hashlib
import json
import os

from gptkit import hub
from gptkit.errors import UserError

TOKENIZER_FILE = "tokenizer.json"  # the tokenizers library's file, as a dataset or run folder keeps it


def _token(value):
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path, what):
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        raise UserError(f"{path} is not readable JSON ({what}); download the model again") from None


class HFTokenizer:
    """Text <-> ids as transformers' tokenizer of the same folder: encode(text) is `tokenizer(text)`'s
    input_ids (BOS added where the tokenizer's post-processor adds it), decode(ids) is
    `tokenizer.decode(ids)` (special tokens kept; transformers 5 does no space clean-up on BPE)."""

    def __init__(self, json_text, special, eos_ids, template, source):
        from tokenizers import Tokenizer
        try:
            self.tok = Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises its own exception type for a malformed file
            raise UserError(f"{source}'s tokenizer.json cannot be read ({str(e)[:100]}); download the model "
                            f"again") from None
        self.plain = Tokenizer.from_str(json_text)
        self.plain.encode_special_tokens = True  # documents: special markers are text
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.json, self.sha256 = json_text, hashlib.sha256(json_text.encode("utf-8")).hexdigest()
        self.id = f"bpe:{self.sha256[:16]}"  # what dataset.json and every shard record (dataset.tokenizer_id)
        self.name = "hf"
        self.special, self.template = special, template
        eos = self.tok.token_to_id(special["eos_token"]) if "eos_token" in special else None
        # generation stops at any of generation_config's eos ids (eos_ids: an instruct model's end of turn and
        # end of text) and at the tokenizer's own eos, as transformers' generate does
        self.stop_ids = list(dict.fromkeys([*eos_ids, *([eos] if eos is not None else [])]))
        self.eot = eos if eos is not None else (self.stop_ids[0] if self.stop_ids else None)
        # the token a document starts after, where the model has one (evaluation reads a text after it)
        self.bos = self.tok.token_to_id(special["bos_token"]) if "bos_token" in special else None
        self.chat_template = ChatTemplate(template, special, source) if template else None
        self.prompt_format = None

    def meta(self):
        """The meta.pkl of data prepared in this tokenizer: what train.py sizes the model by, copies into the
        run beside tokenizer.json, and what sample.py and chat.py rebuild the tokenizer from."""
        return {"vocab_size": self.vocab_size, "tokenizer": TOKENIZER_FILE, "tokenizer_sha256": self.sha256,
                "eot": self.eot, "hf": {"special": self.special, "stop_ids": self.stop_ids,
                                        "chat_template": self.template}}

    @classmethod
    def from_meta(cls, json_text, meta, source):
        hf_meta = meta["hf"]
        return cls(json_text, hf_meta["special"], hf_meta["stop_ids"], hf_meta["chat_template"], source)

    def encode(self, text, add_special_tokens=True):
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_ordinary(self, text):
        """A training document's ids: special markers in it are plain text, and no BOS is added."""
        return self.plain.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts, num_threads=None):
        return [e.ids for e in self.plain.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_with_starts(self, texts):
        """[(ids, start)] of rendered conversations (special tokens are tokens, no BOS added: the template
        writes it): start[i] is the character where token i begins."""
        return [(e.ids, [a for a, _ in e.offsets]) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids):
        return self.tok.decode(list(map(int, ids)), skip_special_tokens=False)

    def token_bytes(self):
        return token_bytes(self.tok, self.vocab_size)


def to_transformers(tok, model_max_length):
    """transformers' PreTrainedTokenizerFast of an HFTokenizer: the same tokenizer.json, special tokens and
    chat template, no clean-up of spaces on decoding (what the model's own folder loads as)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.json), chat_template=tok.template,
                                   clean_up_tokenization_spaces=False, model_max_length=model_max_length, **tok.special)


def portable_config(folder):
    """Rewrite the tokenizer_config.json transformers 5 saved in folder so that transformers 4.x loads it
    too, as it loads the same tokenizer.json: 4.x has no class TokenizersBackend (5's name for what both call
    PreTrainedTokenizerFast) and reads extra_special_tokens as a mapping, so the list 5 writes there goes to
    additional_special_tokens, which 5 reads as well."""
    path = os.path.join(folder, "tokenizer_config.json")
    config = _read_json(path, "tokenizer_config")
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        del config["extra_special_tokens"]
        config["additional_special_tokens"] = extra
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def load(name_or_path):
    """The tokenizer of a Hugging Face folder or hub id; a sentence saying what still works when the
    folder has weights but no tokenizer.json."""
    where = name_or_path if os.path.isdir(name_or_path) else repr(name_or_path)
    path = hub.local_or_hub(name_or_path, "tokenizer.json", required=False)
    if path is None:
        raise UserError(f"{where} has no tokenizer.json, so its text cannot be turned into tokens: training from it "
                        f"on data prepared in its tokenizer works, sample.py and chat.py do not; put the model's "
                        f"tokenizer.json (and tokenizer_config.json) in the folder")
    with open(path, encoding="utf-8") as f:
        json_text = f.read()
    config = _read_json(hub.local_or_hub(name_or_path, "tokenizer_config.json", required=False), "tokenizer_config")
    if not any(k in config for k in ("bos_token", "eos_token")):  # older folders keep them here
        config = {**_read_json(hub.local_or_hub(name_or_path, "special_tokens_map.json", required=False),
                               "special_tokens_map"), **config}
    generation = _read_json(hub.local_or_hub(name_or_path, "generation_config.json", required=False),
                            "generation_config")
    # the template: chat_template.jinja (transformers 5 writes it apart), else tokenizer_config.json's
    template_path = hub.local_or_hub(name_or_path, "chat_template.jinja", required=False)
    if template_path is not None:
        with open(template_path, encoding="utf-8") as f:
            template = f.read()
    else:
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
    special = {k: _token(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
               if _token(config.get(k)) is not None}
    ids = generation.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
    return HFTokenizer(json_text, special, ids, template, where)


def token_bytes(tok, vocab_size):
    """Bytes of text each id of a Hugging Face tokenizers.Tokenizer stands for (bits per byte divides by
    them); 0 for special tokens, which stand for none."""
    from tokenizers import decoders
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    # byte-level BPE writes each byte as one printable character, so a token's length is its bytes, also for
    # a token holding part of a character (which decodes alone to a 3-byte replacement character)
    byte_level = isinstance(tok.decoder, decoders.ByteLevel)
    out = []
    for i in range(vocab_size):
        piece = tok.id_to_token(i)
        out.append(0 if piece is None or piece in special else
                   len(piece) if byte_level else len(tok.decode([i]).encode("utf-8")))
    return out


class ChatTemplate:
    """A model's Jinja chat template in the place of a conversation.Transcript: the conversation rendered
    as transformers' apply_chat_template(messages, add_generation_prompt=True) renders it (the same
    Jinja settings, helpers and variables), ending where the model's reply begins. The reply ends at
    the model's stop tokens (HFTokenizer.stop_ids), so no stop strings are needed."""

    def __init__(self, source_text, special, where):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        def strftime_now(fmt):
            from datetime import datetime
            return datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
        try:
            self.template = env.from_string(source_text)
        except jinja2.exceptions.TemplateError as e:
            raise UserError(f"the chat template of {where} is not a template this tool can render ({e}); chat "
                            f"with --style=chat instead") from None
        self.special, self.where = special, where

    def apply(self, messages, add_generation_prompt=True, **kwargs):
        """The text of messages ([{'role', 'content'}, ...]) in the template."""
        import jinja2
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special, **kwargs)
        except jinja2.exceptions.TemplateError as e:
            raise UserError(f"the chat template of {self.where} refused the conversation ({e})") from None

    def render(self, turns, line):
        messages = [m for u, r in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": r})]
        return self.apply(messages + [{"role": "user", "content": line}])

    def fit(self, encode, turns, line, budget):
        """Ids of render(turns, line) in at most budget tokens, the oldest turns dropped first. The template
        writes its own BOS, so none is added (as apply_chat_template encodes)."""
        history = list(turns)
        ids = encode(self.render(history, line), add_special_tokens=False)
        while history and len(ids) > budget:
            history.pop(0)
            ids = encode(self.render(history, line), add_special_tokens=False)
        return ids[-budget:]

    def segments(self, messages):
        """A conversation as (text, is_reply) pieces adding up to its rendering, for fine-tuning with the
        loss on the replies alone (data/chat/prepare.py): each message's piece is what rendering it adds to
        the conversation before it, and an assistant message's reply piece is what follows the generation
        prompt, its end-of-turn marker included, so the model learns to end its turn. A template that renders
        an earlier turn differently once a later one follows (one that drops past replies' reasoning) is
        refused: its pieces would not be the text chat.py shows the model."""
        out, done = [], ""
        for i, m in enumerate(messages):
            steps = [(self.apply(messages[:i], add_generation_prompt=True), False)] if m["role"] == "assistant" else []
            steps.append((self.apply(messages[:i + 1], add_generation_prompt=False), m["role"] == "assistant"))
            for text, reply in steps:
                if not text.startswith(done):
                    raise UserError(f"the chat template of {self.where} renders a conversation's earlier turns "
                                    f"differently once later ones follow, so the replies cannot be marked out for "
                                    f"fine-tuning in it; prepare the conversations with another model's template")
                out.append((text[len(done):], reply))
                done = text
        return [(text, reply) for text, reply in out if text]

    def stops(self):
        return []

    def line_stop(self):
        return None

    def unspellable(self, tok):
        return ""

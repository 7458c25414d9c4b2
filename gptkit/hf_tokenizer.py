"""
A Hugging Face model's own tokenizer and chat template: tokenizer.json through the `tokenizers` library,
with the folder's special tokens, BOS/EOS and generation_config.json's end-of-sequence ids as stop
tokens, and the Jinja chat template rendered as transformers' apply_chat_template renders it.
"""

import hashlib
import json
import os

from gptkit import hf
from gptkit.errors import UserError


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

    def __init__(self, json_text, config, generation, template, source):
        from tokenizers import Tokenizer
        try:
            self.tok = Tokenizer.from_str(json_text)
        except Exception as e:  # tokenizers raises its own exception type for a malformed file
            raise UserError(f"{source}'s tokenizer.json cannot be read ({str(e)[:100]}); download the model "
                            f"again") from None
        self.plain = Tokenizer.from_str(json_text)
        self.plain.encode_special_tokens = True  # documents: special markers are text
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.id = "hf:" + hashlib.sha256(json_text.encode("utf-8")).hexdigest()[:16]
        self.name = "hf"
        self.source = source
        self.special = {k: _token(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")
                        if _token(config.get(k)) is not None}
        self.bos = self.tok.token_to_id(self.special["bos_token"]) if "bos_token" in self.special else None
        eos = self.tok.token_to_id(self.special["eos_token"]) if "eos_token" in self.special else None
        ids = generation.get("eos_token_id")
        ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
        # generation stops at any of generation_config's eos ids (an instruct model's end of turn and end
        # of text) and at the tokenizer's own eos, as transformers' generate does
        self.stop_ids = list(dict.fromkeys([*ids, *([eos] if eos is not None else [])]))
        self.eot = eos if eos is not None else (self.stop_ids[0] if self.stop_ids else None)
        self.chat_template = ChatTemplate(template, self.special, source) if template else None
        self.prompt_format = None

    def encode(self, text, add_special_tokens=True):
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_ordinary(self, text):
        """A training document's ids: special markers in it are plain text, and no BOS is added."""
        return self.plain.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        return self.tok.decode(list(map(int, ids)), skip_special_tokens=False)

    def token_bytes(self):
        """Bytes of text each id stands for (bits per byte divides by them); 0 for special tokens."""
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        out = []
        for i in range(self.vocab_size):
            piece = self.tok.id_to_token(i)
            out.append(0 if piece is None or piece in special else len(self.tok.decode([i]).encode("utf-8")))
        return out


def load(name_or_path):
    """The tokenizer of a Hugging Face folder or hub id; a sentence saying what still works when the
    folder has weights but no tokenizer.json."""
    where = name_or_path if os.path.isdir(name_or_path) else repr(name_or_path)
    path = hf.local_or_hub(name_or_path, "tokenizer.json", required=False)
    if path is None:
        raise UserError(f"{where} has no tokenizer.json, so its text cannot be turned into tokens: training from it "
                        f"on data prepared in its tokenizer works, sample.py and chat.py do not; put the model's "
                        f"tokenizer.json (and tokenizer_config.json) in the folder")
    with open(path, encoding="utf-8") as f:
        json_text = f.read()
    config = _read_json(hf.local_or_hub(name_or_path, "tokenizer_config.json", required=False), "tokenizer_config")
    if not any(k in config for k in ("bos_token", "eos_token")):  # older folders keep them here
        config = {**_read_json(hf.local_or_hub(name_or_path, "special_tokens_map.json", required=False),
                               "special_tokens_map"), **config}
    generation = _read_json(hf.local_or_hub(name_or_path, "generation_config.json", required=False),
                            "generation_config")
    # the template: chat_template.jinja (transformers 5 writes it apart), else tokenizer_config.json's
    template_path = hf.local_or_hub(name_or_path, "chat_template.jinja", required=False)
    if template_path is not None:
        with open(template_path, encoding="utf-8") as f:
            template = f.read()
    else:
        template = config.get("chat_template")
        if isinstance(template, list):  # several named templates: the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return HFTokenizer(json_text, config, generation, template, where)


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

    def stops(self):
        return []

    def line_stop(self):
        return None

    def unspellable(self, tok):
        return ""

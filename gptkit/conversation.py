"""
The transcript a chat model reads: speaker prefixes and separators, the turns rendered as text, and the
oldest turns dropped until the transcript fits the context beside a reply. A fine-tuning template
(SFT) is such a transcript too: data/chat/prepare.py writes its training conversations with it, and
chat.py renders the conversation with the very same one (recorded with the data and the run).
"""

import json
import re
from dataclasses import asdict, dataclass

from gptkit.errors import USAGE, UserError
from gptkit.tokenizer import CharTokenizer

ROLES = ("system", "user", "assistant")

# A play's speaker line: a name and a colon alone on a line, "JULIET:" or "First Citizen:", and the
# garbled ones a small model writes ("Firstick, CORIOLANUS:"): the last word in capitals, or at most
# three words each capitalised. A verse line that ends in a colon has lower-case words in it.
SPEAKER_LINE = re.compile(r"^\s*(?:.*\b[A-Z][A-Z']+|[A-Z][\w']*(?: [A-Z][\w']*){0,2})\s*:\s*$")


def speaker_line(line):
    return bool(SPEAKER_LINE.match(line))


@dataclass
class Transcript:
    user: str       # your speaker prefix
    bot: str        # the model's speaker prefix
    sep: str        # what ends each speech
    preamble: str   # text before the first turn
    system: str = ""    # prefix of a system message (templates whose data has them)
    turn_end: str = ""  # a fine-tuned model writes this when its reply is done ("" for base models)
    play: bool = False  # a reply also ends at any speaker's line, not only the two prefixes

    def segments(self, messages):
        """A conversation ([{'role', 'content'}, ...]) as (text, is_reply) pieces: each message is its
        speaker's prefix, then its content and sep. The assistant's content and sep are the reply
        pieces, which fine-tuning trains on: sep is how the model learns to end its turn."""
        prefix = {"system": self.system, "user": self.user, "assistant": self.bot}
        out = [(self.preamble, False)] if self.preamble else []
        for m in messages:
            out.append((prefix[m["role"]], False))
            out.append((m["content"] + self.sep, m["role"] == "assistant"))
        return out

    def render(self, turns, line):
        """The conversation so far plus the new line, ending in the bot's prefix: what the model continues."""
        messages = [m for u, r in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": r})]
        messages.append({"role": "user", "content": line})
        return "".join(text for text, _ in self.segments(messages)) + self.bot

    def stops(self):
        """Strings that end a reply: the start of the next speaker's line, whichever speaker it picks,
        the end-of-turn marker of a fine-tuned template, and in a play the blank line that ends a speech."""
        return (["\n" + self.user.strip(), "\n" + self.bot.strip()] + ([self.turn_end] if self.turn_end else [])
                + (["\n\n"] if self.play else []))

    def line_stop(self):
        """In a play, the test for a line that starts another speech (StopText's line_stop)."""
        return speaker_line if self.play else None

    def fit(self, encode, turns, line, budget):
        """Token ids of render(turns, line) in at most `budget` tokens: the oldest turns are dropped
        first; a single line longer than the budget keeps its end (the part next to the reply)."""
        history = list(turns)
        ids = encode(self.render(history, line))
        while history and len(ids) > budget:
            history.pop(0)
            ids = encode(self.render(history, line))
        return ids[-budget:]

    def unspellable(self, tok):
        """The characters of the prefixes and separators that a character vocabulary lacks, as one string
        ('' when it can spell them all, and always for GPT-2's BPE, which spells any text)."""
        stoi = getattr(tok, "stoi", None)
        text = self.preamble + self.system + self.user + self.bot + self.sep + self.turn_end
        return "".join(sorted({c for c in text if c not in stoi})) if stoi is not None else ""

    def jinja(self):
        """This template as a Jinja chat template, Hugging Face's format (tokenizer.apply_chat_template):
        it renders a conversation as exactly the text segments() writes, the text the model was trained
        on (contents stripped, as data/chat/prepare.py and chat.py strip them), and with
        add_generation_prompt the bot's prefix, where the model's reply begins."""
        def text(s):  # a Jinja string literal: JSON's escapes are Jinja's, and no text is read as a tag
            return "{{ " + json.dumps(s) + " }}" if s else ""
        prefix = {"system": self.system, "user": self.user, "assistant": self.bot}
        roles = "".join(f"{'{% if' if i == 0 else '{% elif'} message['role'] == {json.dumps(r)} %}}{text(p)}"
                        for i, (r, p) in enumerate(prefix.items()))
        return (text(self.preamble) + "{% for message in messages %}" + roles
                + "{% else %}{{ raise_exception('roles are system, user and assistant') }}{% endif %}"
                + "{{ message['content'] | trim }}" + text(self.sep) + "{% endfor %}"
                + "{% if add_generation_prompt %}" + text(self.bot) + "{% endif %}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d, source):
        """The template recorded in a dataset.json or a checkpoint (`source` names it in the error)."""
        fields = cls.__dataclass_fields__
        if (not isinstance(d, dict) or not all(isinstance(d.get(k, f.default), f.type) for k, f in fields.items())
                or not d.get("bot")):
            raise UserError(f"{source} holds a damaged chat template ({str(d)[:80]}); prepare the data again, or "
                            f"chat with --style=chat")
        return cls(**{k: d[k] for k in fields if k in d})


PLAY = Transcript(user="ROMEO:\n", bot="JULIET:\n", sep="\n\n", preamble="", play=True)
CHAT = Transcript(user="User: ", bot="Assistant: ", sep="\n",
                  preamble="A conversation between a curious user and a helpful, knowledgeable assistant.\n\n")
# The fine-tuning template: ChatML's markers (OpenAI's chat format, used by many open chat models),
# plain text in GPT-2's BPE, which has no special tokens but <|endoftext|>, and one special token each
# in a tokenizer trained by a prepare script (tokenizer.SPECIAL_TOKENS). The explicit end marker lets
# replies hold newlines and blank lines; the model learns to write it, and chat.py stops there.
SFT = Transcript(user="<|im_start|>user\n", bot="<|im_start|>assistant\n", sep="<|im_end|>\n", preamble="",
                 system="<|im_start|>system\n", turn_end="<|im_end|>")


def transcript_for(tok, style="auto"):
    """(transcript, style) to talk to a model with tokenizer tok: for style 'auto', the chat template it was
    fine-tuned in (tok.chat_template), else a play for a character model, else a chat; or the style named
    ('template', 'play', 'chat'). Raises UserError for 'template' where the model has none."""
    if style == "template" and tok.chat_template is None:
        raise UserError("this model was not fine-tuned on conversations, so it has no chat template; use "
                        "style=auto", status=USAGE)
    if style == "auto":
        style = "template" if tok.chat_template else "play" if isinstance(tok, CharTokenizer) else "chat"
    return {"template": tok.chat_template, "play": PLAY, "chat": CHAT}[style], style

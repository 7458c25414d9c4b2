"""
The transcript a chat model reads: speaker prefixes and separators, the turns rendered as text, and the
oldest turns dropped until the transcript fits the context beside a reply.
"""

import re
from dataclasses import dataclass

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
    play: bool = False  # a reply also ends at any speaker's line, not only the two prefixes

    def render(self, turns, line):
        """The conversation so far plus the new line, ending in the bot's prefix: what the model continues."""
        text = self.preamble + "".join(f"{self.user}{u}{self.sep}{self.bot}{r}{self.sep}" for u, r in turns)
        return text + f"{self.user}{line}{self.sep}{self.bot}"

    def stops(self):
        """Strings that end a reply: the start of the next speaker's line, whichever speaker it picks,
        and in a play the blank line that ends a speech."""
        return ["\n" + self.user.strip(), "\n" + self.bot.strip()] + (["\n\n"] if self.play else [])

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


PLAY = Transcript(user="ROMEO:\n", bot="JULIET:\n", sep="\n\n", preamble="", play=True)
CHAT = Transcript(user="User: ", bot="Assistant: ", sep="\n",
                  preamble="A conversation between a curious user and a helpful, knowledgeable assistant.\n\n")

"""
The transcript a chat model reads: speaker prefixes and separators, the turns rendered as text, and the
oldest turns dropped until the transcript fits the context beside a reply.
"""

from dataclasses import dataclass


@dataclass
class Transcript:
    user: str       # your speaker prefix
    bot: str        # the model's speaker prefix
    sep: str        # what ends each speech
    preamble: str   # text before the first turn

    def render(self, turns, line):
        """The conversation so far plus the new line, ending in the bot's prefix: what the model continues."""
        text = self.preamble + "".join(f"{self.user}{u}{self.sep}{self.bot}{r}{self.sep}" for u, r in turns)
        return text + f"{self.user}{line}{self.sep}{self.bot}"

    def stops(self):
        """Strings that end a reply: the start of the next speaker's line, whichever speaker it picks."""
        return ["\n" + self.user.strip(), "\n" + self.bot.strip()]

    def fit(self, encode, turns, line, budget):
        """Token ids of render(turns, line) in at most `budget` tokens: the oldest turns are dropped
        first; a single line longer than the budget keeps its end (the part next to the reply)."""
        history = list(turns)
        ids = encode(self.render(history, line))
        while history and len(ids) > budget:
            history.pop(0)
            ids = encode(self.render(history, line))
        return ids[-budget:]


PLAY = Transcript(user="ROMEO:\n", bot="JULIET:\n", sep="\n\n", preamble="")
CHAT = Transcript(user="User: ", bot="Assistant: ", sep="\n",
                  preamble="A conversation between a curious user and a helpful, knowledgeable assistant.\n\n")

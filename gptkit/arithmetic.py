"""
Generated datasets: arithmetic problems (addition, subtraction, multiplication) drawn as training asks
for them, instead of read from train.bin and val.bin, with a held-out set training can never draw.

A problem is one row: the operands with `digits` digits each (zero-padded), the operator, '=', the
answer's digits (least significant first with reverse=True, so that the model writes them in the order
the carries are worked out; a '-' in front of a negative difference) and a newline:

    123+456=975\n       (digits=3, reverse=True; 579 without reversing)

A multiplication can be written with a scratchpad (scratchpad=True): the partial products first, the
first operand times each digit of the second from its last digit up, each shifted to its column by zeros
and written with all its digits, joined by '+', then '=' and the answer; every number in the same digit
order as the answer, so each column of the sum lines up at the same place in every number:

    12*34=840+0630=804\n  (digits=2, reverse=True: 12*4 = 048, 12*3*10 = 0360, 408)

Each digit of a partial product then depends on two digits of the prompt and a carry from the digit just
written, and each digit of the answer on one column of the partial products and a carry: steps a small
model learns for every problem, where the answer alone asks it to do all of them at once.

Only what the model writes counts in the loss: the answer (with its scratchpad) and its newline; the
targets of the problem's own characters are -1 (they are given, not predicted), and the newline teaches
the model where an answer ends.

Arithmetic is a source.DataSource, like batches.Batches, and its batches are, like those, a pure
function of (seed, iteration, micro-step). Which problems are held out is decided by a fixed hash of
the problem alone, not by the seed: training rejects held-out problems whatever the seed, so no run,
resumed or not, can train on the problems its accuracy is measured on. The exact-match accuracy
(greedy decoding of the whole answer) comes from the evaluation's forward pass: see
Arithmetic.eval_counts.
"""

import re
from dataclasses import dataclass

import numpy as np

from gptkit.errors import USAGE, UserError
from gptkit.source import DataSource

TASKS = {"addition": "+", "subtraction": "-", "multiplication": "*"}
CHARS = sorted("0123456789+-*=\n")  # one vocabulary for every task, so their meta.pkl files agree
STOI = {c: i for i, c in enumerate(CHARS)}
META = {"vocab_size": len(CHARS), "stoi": STOI, "itos": dict(enumerate(CHARS))}  # nanoGPT's meta.pkl layout
# operands up to 9 digits: a problem's hash key a * 10**digits + b must fit in 64 bits
MAX_DIGITS = 9
# the share of problems held out: 5% of the 10**6 3-digit additions is ~50,000, ample for an evaluation
# of 10,000 distinct problems; with 1 digit it still leaves a few
HELD_OUT_PERCENT = 5
# up to this many possible problems (3 digits: 10**6, ~30 MB of arrays for a moment) the held-out set
# is listed in full; above it, distinct held-out problems are found by drawing
ENUMERATE_LIMIT = 10 ** 6

_LUT = np.zeros(256, dtype=np.int64)  # ASCII code -> token id
for _c, _i in STOI.items():
    _LUT[ord(_c)] = _i


def _mix(x):
    """splitmix64's finalizer (Steele, Lea and Flood 2014): every bit of the key moves every bit of
    the result, so a fixed share of any region of problems is held out. uint64 arithmetic wraps."""
    x = x.astype(np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def answer(op, a, b):
    return a + b if op == "+" else a - b if op == "-" else a * b


def answer_text(c, reverse):
    digits = str(abs(c))
    return ("-" if c < 0 else "") + (digits[::-1] if reverse else digits)


def partial_products(a, b, digits, reverse):
    """The scratchpad of a * b: a times each digit of b (its last first) and the place value of that
    digit, zero-padded to its full width (digits + 1 + place), joined by '+': '840+0630' for 12*34."""
    out = []
    for place in range(digits):
        text = f"{a * (b // 10 ** place % 10) * 10 ** place:0{digits + 1 + place}d}"
        out.append(text[::-1] if reverse else text)
    return "+".join(out)


@dataclass(frozen=True)
class ProblemFormat:
    """How a task's problems are written, which is the only way a model trained on them can be asked:
    sample.py checks a prompt against it, and chat.py and train.py's last line point to it."""
    task: str
    digits: int
    reverse: bool
    scratchpad: bool = False  # multiplication only: the partial products before the answer

    @classmethod
    def of_run(cls, config):
        """The format of a run trained on generated problems (its saved config, a dict), else None."""
        if config.get("dataset") in TASKS and not config.get("data_dir"):
            return cls(config["dataset"], int(config.get("digits", 3)), bool(config.get("reverse", True)),
                       bool(config.get("scratchpad", False)))
        return None

    @property
    def op(self):
        return TASKS[self.task]

    @property
    def longest_answer(self):
        """Characters written after '=' at most: 999+999=1998, 000-999=-999, 99*99=9801; with a
        scratchpad its partial products (d + 1, d + 2, ... 2d digits), their d - 1 '+' and the '='."""
        d = self.digits
        if self.scratchpad:
            return d * (d + 1) + d * (d - 1) // 2 + d + 2 * d
        return d + 1 if self.op in "+-" else 2 * d

    def problem(self, a, b):
        """(prompt, answer) text of one problem: ('123+456=', '975'); the answer is everything the model
        writes, the scratchpad included ('12*34=', '840+0630=804')."""
        d = self.digits
        written = answer_text(answer(self.op, a, b), self.reverse)
        if self.scratchpad:
            written = partial_products(a, b, d, self.reverse) + "=" + written
        return f"{a:0{d}d}{self.op}{b:0{d}d}=", written

    def example(self):
        return int("123456789"[:self.digits]), int("456789123"[:self.digits])  # 123, 456 with 3 digits

    def _rules(self):
        order = f"{'least' if self.reverse else 'most'} significant digit first"
        padded = f"operands zero-padded to {self.digits} digit{'s' if self.digits > 1 else ''}"
        if self.scratchpad:
            return (f"{padded}, the partial products (the first operand times each digit of the second, shifted, "
                    f"joined by '+') before '=' and the answer, every number {order}")
        return f"{padded}, the answer {order}"

    def describe(self):
        written = "".join(self.problem(*self.example()))
        return f"{self.digits}-digit {self.task} problems written {written} ({self._rules()})"

    def sample_command(self, out_dir):
        """sample.py asking the run one problem, greedily, up to the end of its answer."""
        return (f"python sample.py --out_dir={out_dir} --start=\"{self.problem(*self.example())[0]}\" --temperature=0 "
                f"--max_new_tokens={self.longest_answer + 1} --stop=\"('\\n',)\"")

    def note(self, prompt):
        """None for a prompt in the format (a problem, and perhaps the start of its answer); else a note
        showing the format, with the prompt's own operands where it has some that fit."""
        op, d = re.escape(self.op), self.digits
        if re.fullmatch(rf"\d{{{d}}}{op}\d{{{d}}}=" + (r"[\d+=]*" if self.scratchpad else r"-?\d*"), prompt):
            return None
        numbers = re.fullmatch(rf"\s*(\d+)\s*{op}\s*(\d+)\s*=?\s*", prompt)
        fit = numbers and max(int(numbers[1]), int(numbers[2])) < 10 ** d  # operands the model can be asked
        a, b = (int(numbers[1]), int(numbers[2])) if fit else self.example()
        asked, ans = self.problem(a, b)
        reversed_ = self.reverse and len(ans.strip("-")) > 1
        shown = f" (the answer {answer(self.op, a, b)} comes as {ans})" if reversed_ else ""
        if self.scratchpad:
            shown = f" (the answer {answer(self.op, a, b)} comes as {ans}, after the last '=')"
        return (f"note: {prompt!r} is not in this model's format, so its answer means nothing: it was trained on "
                f"{d}-digit {self.task} problems, {self._rules()}; ask --start=\"{asked}\"{shown}")


class Arithmetic(DataSource):
    """Problems of one task as batches: inputs (B, seq_len) and targets that are -1 everywhere but at
    the answer and its newline. Every row is one problem starting at position 0, as at evaluation and
    in sample.py; rows shorter than the longest answer are padded with newlines (masked)."""

    # a row is one problem: its accuracy is whether every counted target is right, so with a scratchpad
    # whether greedy decoding writes the whole scratchpad and the answer right (stricter than the answer
    # alone, which a wrong partial product could still reach)
    eval_figures = ("accuracy",)
    schedule = ""  # no sampling options: every row is a problem drawn fresh (batches.Batches has them)
    chat_template = None

    def __init__(self, task, digits, reverse, block_size, batch_size, seed, device, pin_memory=False,
                 scratchpad=False):
        if task not in TASKS:
            raise UserError(f"dataset={task} is not a generated task; use one of {', '.join(TASKS)}", status=USAGE)
        if not 1 <= digits <= MAX_DIGITS:
            raise UserError(f"digits={digits} is out of range; use 1 to {MAX_DIGITS} digits per operand",
                            status=USAGE)
        if scratchpad and task != "multiplication":
            raise UserError(f"scratchpad=True writes the partial products of a multiplication; {task} has none: "
                            f"use it with dataset=multiplication, or set scratchpad=False", status=USAGE)
        self.task, self.op, self.digits, self.reverse = task, TASKS[task], digits, reverse
        self.prompt_format = ProblemFormat(task, digits, reverse, scratchpad)
        self.counted = "scratchpad and answer tokens" if scratchpad else "answer tokens"  # for the log line
        self.batch_size, self.seed, self.device, self.pin_memory = batch_size, seed, device, pin_memory
        self.meta, self.vocab_size = META, META["vocab_size"]  # its ids are drawn from META: always in range
        self.origin = f"the generated {task} problems"
        self.space = 10 ** digits  # values of one operand
        self.prompt_len = 2 * digits + 2  # "123+456="
        self.seq_len = self.prompt_len + self.prompt_format.longest_answer  # the problem, less its final newline
        if block_size < self.seq_len:
            raise UserError(f"block_size={block_size} is too short for {digits}-digit {task} problems, which take "
                            f"{self.seq_len} positions; set block_size >= {self.seq_len}", status=USAGE)
        self._held = None  # (a, b): the held-out problems found so far, in the evaluation's order
        self._held_rng = np.random.default_rng([seed, 2])
        self._eval_cache = {}

    # -------------------------------------------------------------------------
    # which problems are held out

    def held_out(self, a, b):
        """Whether each problem (a[i], b[i]) is in the held-out set. a+b and b+a (a*b and b*a) are one
        problem here, so a model cannot have learnt a held-out sum from its mirror image."""
        if self.op in "+*":
            a, b = np.minimum(a, b), np.maximum(a, b)
        key = np.asarray(a, dtype=np.uint64) * np.uint64(self.space) + np.asarray(b, dtype=np.uint64)
        return _mix(key) % np.uint64(100) < np.uint64(HELD_OUT_PERCENT)

    def _draw(self, rng, n, held_out):
        """n problems drawn uniformly from the training set (held_out=False) or the held-out set:
        candidates from the other set are rejected."""
        a_kept, b_kept, have = [], [], 0
        while have < n:
            size = 40 * n if held_out else 2 * n  # candidates kept: about 5% / 95%
            a = rng.integers(0, self.space, size=size)
            b = rng.integers(0, self.space, size=size)
            keep = self.held_out(a, b) == held_out
            a_kept.append(a[keep])
            b_kept.append(b[keep])
            have += int(keep.sum())
        return np.concatenate(a_kept)[:n], np.concatenate(b_kept)[:n]

    def held_out_problems(self, count):
        """The first `count` problems of the evaluation's fixed, seeded order of distinct held-out
        problems (repeating from the start when there are fewer)."""
        if self.space ** 2 <= ENUMERATE_LIMIT:  # list them all, in a seeded order
            if self._held is None:
                a = np.repeat(np.arange(self.space), self.space)
                b = np.tile(np.arange(self.space), self.space)
                keep = self.held_out(a, b)
                if not keep.any():
                    raise UserError(f"{self.digits}-digit {self.task} leaves no held-out problems to evaluate on; "
                                    f"use more digits")
                order = self._held_rng.permutation(int(keep.sum()))
                self._held = (a[keep][order], b[keep][order])
            a, b = self._held
            reps = -(-count // len(a))
            return np.tile(a, reps)[:count], np.tile(b, reps)[:count]
        # too many to list: draw candidates, in blocks of a fixed size so that the order does not depend on
        # how many are asked for (processes ask for different batches first), keeping the first
        # occurrence of each held-out problem
        a, b = self._held or (np.zeros(0, np.int64), np.zeros(0, np.int64))
        while len(a) < count:
            more_a = self._held_rng.integers(0, self.space, size=1 << 16)
            more_b = self._held_rng.integers(0, self.space, size=1 << 16)
            keep = self.held_out(more_a, more_b)
            a, b = np.concatenate([a, more_a[keep]]), np.concatenate([b, more_b[keep]])
            _, first = np.unique(a * self.space + b, return_index=True)
            a, b = a[np.sort(first)], b[np.sort(first)]
        self._held = (a, b)
        return a[:count], b[:count]

    # -------------------------------------------------------------------------
    # rows

    def problem(self, a, b):
        """(prompt, answer) text of one problem: ('123+456=', '975')."""
        return self.prompt_format.problem(a, b)

    def _answer_lengths(self, a, b):
        """Counted targets per row: the answer's characters and its newline."""
        return np.array([len(self.problem(x, y)[1]) + 1 for x, y in zip(a.tolist(), b.tolist())])

    def _tensors(self, a, b):
        import torch  # here, not at the top: data/addition/prepare.py imports this module and needs no torch
        width = self.seq_len + 1
        text = "".join((p + s + "\n").ljust(width, "\n") for p, s in map(self.problem, a.tolist(), b.tolist()))
        rows = _LUT[np.frombuffer(text.encode("ascii"), dtype=np.uint8).reshape(len(a), width)]  # (B, seq_len + 1)
        pos = np.arange(self.seq_len)
        # the target at position j is the character at j + 1; those of the answer and its newline count
        counted = (pos >= self.prompt_len - 1) & (pos < self.prompt_len - 1 + self._answer_lengths(a, b)[:, None])
        x = torch.from_numpy(rows[:, :-1].copy())
        y = torch.from_numpy(np.where(counted, rows[:, 1:], -1))
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=self.pin_memory), y.to(self.device, non_blocking=self.pin_memory)

    # -------------------------------------------------------------------------
    # the batches and the evaluation of a DataSource

    def _train_problems(self, iteration, micro_step):
        return self._draw(np.random.default_rng([self.seed, 0, iteration, micro_step]), self.batch_size, False)

    def train_batch(self, iteration, micro_step):
        """The micro-batch for (iteration, micro_step); micro_step counts over all ranks."""
        return self._tensors(*self._train_problems(iteration, micro_step))

    def target_counts(self, iteration, micro_steps):
        """Counted targets of each of the step's micro-batches (all processes'), computed without
        building them: training.Step weighs each micro-batch by its share."""
        return [int(self._answer_lengths(*self._train_problems(iteration, m)).sum()) for m in range(micro_steps)]

    def eval_batch(self, split, k):
        """The k-th fixed evaluation batch: fresh training-set problems for 'train', the held-out
        problems in order for 'val' (distinct across batches while there are enough of them)."""
        key = (split, k)
        if key not in self._eval_cache:
            if split == "train":
                a, b = self._draw(np.random.default_rng([self.seed, 1, k]), self.batch_size, False)
            else:
                a, b = self.held_out_problems((k + 1) * self.batch_size)
                a, b = a[k * self.batch_size:], b[k * self.batch_size:]
            self._eval_cache[key] = self._tensors(a, b)
        return self._eval_cache[key]

    def eval_counts(self, logits, Y):
        """(rows exactly right, rows) of an evaluation batch, as [[hits, trials]]. Greedy decoding gets a
        row's whole answer right exactly when, given the right answer so far, the most likely next token
        is the right one at every counted position: by induction the greedy prefix is then the right
        prefix. So the evaluation's one teacher-forced pass decides it, with no token-by-token generation."""
        import torch
        right = ((logits.argmax(dim=-1) == Y) | (Y < 0)).all(dim=1)  # (B,)
        return torch.stack([right.sum().float(), right.new_full((), right.numel(), dtype=torch.float32)])[None]

    def eval_summary(self, figures, rows):
        return (f"; exact match (greedy): train {figures['train_accuracy']:.2%}, held-out "
                f"{figures['val_accuracy']:.2%} of {rows:,}")

    def training_problems(self, rng, n):
        """n problems (a, b) drawn with rng from the training set: never a held-out one (rl.py's prompts)."""
        return self._draw(rng, n, False)

"""
What training reads its data through: the DataSource protocol, which a prepared dataset's batches
(gptkit/batches.py, whose open_source opens the one a config names) and generated problems
(gptkit/arithmetic.py) implement.

train.py, training.Step and training.evaluate use a source through these members alone, whatever the
data: what sets one kind apart (masked targets, exact-match scoring, a prompt format, a chat template)
is a value or a method of the source, never a question the caller asks about its kind.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class DataSource(Protocol):
    """The data of a run. Every batch is (X, Y), two (B, seq_len) int64 tensors on the source's device:
    inputs and their next tokens, -1 at a target the loss ignores.

    Both implementations subclass it: a source whose rows are windows of a token stream keeps the
    defaults of the evaluation members below (nothing to score but the loss)."""

    # what the data is
    origin: str                  # where it comes from, for messages: its folder, or "the generated addition problems"
    meta: dict | None            # its vocabulary (meta.pkl's dict; None: GPT-2's BPE): what the model is sized by
    vocab_size: int              # ids it may hold, given at construction: a drawn id at or past it is refused
    seq_len: int                 # positions in a row: block_size, or a generated problem's length
    counted: str | None          # what the loss counts where targets are masked ("answer tokens"); None: every one
    schedule: str                # how training rows are chosen, for the log, where not nanoGPT's random windows
    chat_template: dict | None   # its conversations' template (dataset.json): every checkpoint keeps it for chat.py
    prompt_format: object | None  # how its problems are written (arithmetic.ProblemFormat), which a prompt must follow

    # its batches
    def train_batch(self, iteration, micro_step):
        """Training micro-batch (iteration, micro_step), micro_step counted over all processes: a pure
        function of (seed, iteration, micro_step), so a resumed or re-split run sees the same data."""

    def eval_batch(self, split, k):
        """The k-th evaluation batch of split "train" or "val": the same at every evaluation."""

    def target_counts(self, iteration, micro_steps):
        """Counted targets of each micro-batch of a step, without building them (where counted is set):
        training.Step weighs each micro-batch by its share."""

    # how it is evaluated: the mean loss over counted targets, and these figures beside it
    eval_figures = ()            # names of the figures eval_counts scores, logged as <split>_<name>

    def eval_counts(self, logits, Y):
        """(len(eval_figures), 2) float tensor on Y's device: each figure's hits and trials in one
        evaluation batch, summed over batches and processes into hits / trials."""
        return logits.new_zeros((0, 2)).float()

    def eval_summary(self, figures, rows):
        """The eval log line's words on the figures ({"<split>_<name>": value}) of `rows` rows per split,
        starting with "; "; "" where there are none."""
        return ""


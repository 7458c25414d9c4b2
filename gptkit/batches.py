"""
The data source a config names (open_source), and the batches of a prepared dataset (whose files
gptkit/dataset.py reads): rows drawn from its token stream by a deterministic schedule, nanoGPT's
random windows or epochs, at any offset or at documents' starts.

Batches are a pure function of (seed, iteration, micro-step): nothing depends on what was drawn
before, so an interrupted and resumed run, or a run split over more processes, sees exactly the
same data as an uninterrupted single-process run. Rows are nanoGPT's windows at random offsets by
default; sampling="epoch" visits every row start once per epoch in a shuffled order (without
replacement), and align="doc" starts every row at a document's first token.
"""

import os

import numpy as np

from gptkit import arithmetic
from gptkit.dataset import SPLITS, Tokens, check_folder, data_root, end_of_text, mask_file
from gptkit.errors import USAGE, UserError
from gptkit.source import DataSource
from gptkit.tokenizer import GPT2_VOCAB


class Batches(DataSource):
    """Memory-mapped train/val tokens (and loss masks) and the deterministic batch schedule.

    Training rows: sampling="random" draws each row's start uniformly (nanoGPT's windows, with
    replacement); "epoch" numbers every row of the run, (iteration * micro_steps + micro_step) *
    batch_size + row, and visits the row starts in a shuffled order that changes each epoch, so no
    start repeats within an epoch. The starts are any offset (align="none"; an epoch is the split cut
    into block_size windows, every token a target once) or a document's first token (align="doc":
    right after an end-of-text token; an epoch is one row per document, whose text past block_size
    tokens is not its own row). Evaluation batches are random windows whatever the options, so val
    losses stay comparable."""

    # rows are windows of a token stream, not whole problems in a format a prompt must follow
    # (arithmetic.py): the loss is their whole evaluation (DataSource's eval_figures, none)
    prompt_format = None

    def __init__(self, data_dir, dataset, block_size, batch_size, seed, device, pin_memory=False, vocab_size=None,
                 sampling="random", align="none", micro_steps=1):
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.device, self.pin_memory = device, pin_memory
        self.sampling, self.align, self.micro_steps = sampling, align, micro_steps
        self.seq_len, self.origin = block_size, data_dir
        self.meta, dtype, manifest, parts = check_folder(data_dir, dataset)
        if vocab_size is None:  # its own vocabulary, which every model is held to cover (tokenizer.vocab_mismatch)
            vocab_size = self.meta["vocab_size"] if self.meta is not None else GPT2_VOCAB
        self.vocab_size = vocab_size
        manifest = manifest or {}
        self.counted = manifest.get("counted")  # what the loss counts where targets are masked, else None
        self.chat_template = manifest.get("chat_template")
        self.data, self.mask = {}, {}
        for split in SPLITS:
            self.data[split] = Tokens(parts[split], dtype)
            n = len(self.data[split])
            if n <= block_size:  # a batch's rows are windows of block_size + 1 tokens
                where = parts[split][0][0] if len(parts[split]) == 1 else f"the {split} shards of {data_dir}"
                shorter = f"--block_size={n - 1} or less, or " if n > 1 else ""
                more = ("more conversations (data/chat/prepare.py puts up to a quarter of a small file in val)"
                        if self.chat_template else f"more {split} data")
                raise UserError(f"{where} holds {n} tokens, fewer than block_size+1={block_size + 1}; use "
                                f"{shorter}prepare the dataset with {more}", status=USAGE)
            if self.counted:
                self.mask[split] = np.memmap(os.path.join(data_dir, mask_file(split)), dtype=np.uint8, mode="r")
        self._eval_cache = {}
        self._starts = None  # the row starts of align="doc"
        self._orders = {}  # epoch -> its order of row starts (sampling="epoch")
        self.schedule = ""  # a line for the log, where the rows are not nanoGPT's
        last = len(self.data["train"]) - block_size - 1  # the last offset a row of block_size + 1 tokens fits at
        if align == "doc":
            eot = end_of_text(self.meta)
            if eot is None:
                raise UserError(f"align=doc starts rows at documents, which {data_dir} does not mark: character data "
                                f"has no end-of-text token; use align=none", status=USAGE)
            starts = np.concatenate([[0], self.data["train"].positions_after(eot)])
            self._starts = starts[starts <= last]
            if not len(self._starts):
                raise UserError(f"no document in {data_dir}'s train split is followed by block_size+1="
                                f"{block_size + 1} tokens, so align=doc has no row to start; use a smaller block_size "
                                f"or align=none", status=USAGE)
        self.rows = len(self._starts) if self._starts is not None else last // block_size + 1
        if (align == "doc" or sampling == "epoch") and self.rows < batch_size:
            # rows are drawn from these alone, so every batch repeats the same few, step after step
            what = (f"{self.rows} document(s) long enough for a row" if align == "doc"
                    else f"{self.rows} block_size window(s)")
            raise UserError(f"{data_dir}'s train split holds {what}, fewer than batch_size={batch_size}, so with "
                            f"{'align=doc' if align == 'doc' else 'sampling=epoch'} every batch would repeat the same "
                            f"rows; use batch_size={self.rows} or less, prepare more data, or use align=none and "
                            f"sampling=random", status=USAGE)
        if sampling == "epoch":
            per_iter = micro_steps * batch_size
            self.schedule = (f"epochs of {self.rows:,} rows ({self.rows / per_iter:,.1f} iterations), "
                             f"{'one per document' if align == 'doc' else 'block_size windows'}, in a shuffled order")
        elif align == "doc":
            self.schedule = f"rows start at a random one of {self.rows:,} documents"

    def _offsets(self, split, stream):
        """Start offsets of a batch's rows, from a generator seeded by `stream` alone."""
        rng = np.random.default_rng(stream)
        return rng.integers(0, len(self.data[split]) - self.block_size, size=self.batch_size)

    def _order(self, epoch):
        """The shuffled order of row starts of an epoch: a permutation seeded by (seed, epoch) alone, 4
        bytes per row, kept for the current and the previous epoch (a batch may span the two)."""
        if epoch not in self._orders:
            order = np.arange(self.rows, dtype=np.uint32 if self.rows < 2**32 else np.int64)
            np.random.default_rng([self.seed, 3, epoch]).shuffle(order)
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def _train_offsets(self, iteration, micro_step):
        """Start offsets of the rows of training micro-batch (iteration, micro_step)."""
        if self.sampling == "random" and self.align == "none":
            return self._offsets("train", [self.seed, 0, iteration, micro_step])  # nanoGPT's windows
        if self.sampling == "random":
            rows = np.random.default_rng([self.seed, 0, iteration, micro_step]).integers(0, self.rows,
                                                                                       size=self.batch_size)
        else:
            assert 0 <= micro_step < self.micro_steps, (micro_step, self.micro_steps)
            first = (iteration * self.micro_steps + micro_step) * self.batch_size  # the run's row number
            n = np.arange(first, first + self.batch_size, dtype=np.int64)
            rows = np.array([self._order(int(e))[p] for e, p in zip(n // self.rows, n % self.rows)], dtype=np.int64)
        return self._starts[rows] if self._starts is not None else rows * self.block_size

    def _draw(self, split, ix):
        """The batch of rows starting at offsets ix."""
        import torch  # here, not at the top: the prepare scripts import this module and need no torch
        data = self.data[split]
        rows = np.stack([data[i:i + self.block_size + 1] for i in ix]).astype(np.int64)
        # checked here on the host, where it costs microseconds: on a GPU an id past the embedding
        # is a device-side assert that kills the process without saying which file is wrong
        if rows.max() >= self.vocab_size:
            raise UserError(f"the {split} data of {self.origin} holds token id {rows.max()} but its vocabulary has "
                            f"only {self.vocab_size} tokens; the data and its meta.pkl do not belong together: "
                            f"prepare the dataset again")
        x = torch.from_numpy(rows[:, :-1].copy())
        y = rows[:, 1:].copy()
        if self.counted:
            counted = np.stack([self.mask[split][i + 1:i + self.block_size + 1] for i in ix])
            y[counted == 0] = -1  # the loss ignores -1
        y = torch.from_numpy(y)
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=self.pin_memory), y.to(self.device, non_blocking=self.pin_memory)

    def train_batch(self, iteration, micro_step):
        """The micro-batch for (iteration, micro_step); micro_step counts over all ranks."""
        return self._draw("train", self._train_offsets(iteration, micro_step))

    def target_counts(self, iteration, micro_steps):
        """Counted targets of each of the step's micro-batches (all processes'), read from the mask
        alone (a byte per target): training.Step weighs each micro-batch by its share."""
        mask = self.mask["train"]
        return [int(sum(np.count_nonzero(mask[i + 1:i + self.block_size + 1])
                        for i in self._train_offsets(iteration, m)))
                for m in range(micro_steps)]

    def eval_batch(self, split, k):
        """The k-th fixed evaluation batch of a split: the same every evaluation, so evals are
        comparable; drawn once and kept."""
        key = (split, k)
        if key not in self._eval_cache:
            stream = [self.seed, 1 if split == "train" else 2, k]
            self._eval_cache[key] = self._draw(split, self._offsets(split, stream))
        return self._eval_cache[key]


def open_source(name, data_dir, block_size, batch_size, seed, device, pin_memory=False, digits=3, reverse=True,
                sampling="random", align="none", micro_steps=1, scratchpad=False):
    """The DataSource of dataset=<name>: a prepared folder (data_dir, else data/<name> under the data
    root), or problems generated as they are drawn (arithmetic.TASKS)."""
    if name in arithmetic.TASKS and not data_dir:
        if (sampling, align) != ("random", "none"):
            raise UserError(f"sampling={sampling} and align={align} choose rows of a prepared dataset; the {name} "
                            f"problems are drawn fresh, one per row: leave them at random and none", status=USAGE)
        return arithmetic.Arithmetic(name, digits, reverse, block_size, batch_size, seed, device, pin_memory,
                                     scratchpad)
    if data_dir and not os.path.isdir(data_dir):
        raise UserError(f"data_dir={data_dir} is not a folder; give the folder a data/<name>/prepare.py script wrote "
                        f"(its --out)", status=USAGE)
    data_dir = data_dir or os.path.join(data_root(), name)
    return Batches(data_dir, name, block_size, batch_size, seed, device, pin_memory, sampling=sampling, align=align,
                   micro_steps=micro_steps)

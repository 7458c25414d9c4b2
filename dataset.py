"""
The on-disk token format and batch sampling.

A prepared dataset is a folder data/<name>/ with train.bin and val.bin (flat arrays of token ids,
uint16, or uint32 when the vocabulary does not fit in 16 bits) and, for character-level data,
meta.pkl ({'vocab_size', 'stoi', 'itos'}, the layout nanoGPT writes). A uint32 dataset also records
its dtype in meta.pkl.

Batches are a pure function of (seed, iteration, micro-step): nothing depends on what was drawn
before, so an interrupted and resumed run, or a run split over more processes, sees exactly the
same data as an uninterrupted single-process run.
"""

import os
import pickle
import shutil
import sys
import urllib.request

import numpy as np
import torch

from runtime import fail

DATA_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def write_tokens(ids, path, vocab_size):
    """Write a token array atomically (a crash mid-write never leaves a half-written bin)."""
    arr = np.asarray(ids, dtype=token_dtype(vocab_size))
    tmp = path + ".tmp"
    arr.tofile(tmp)
    os.replace(tmp, path)
    return len(arr)


def write_meta(meta, folder):
    tmp = os.path.join(folder, "meta.pkl.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(meta, f)
    os.replace(tmp, os.path.join(folder, "meta.pkl"))


def read_meta(folder):
    path = os.path.join(folder, "meta.pkl")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def read_text(input_path, url, cache_path):
    """The corpus as a string: from input_path if given, else from cache_path, else downloaded."""
    if input_path:
        if not os.path.isfile(input_path):
            fail(f"--input={input_path} does not exist; give the path of a text file")
        with open(input_path, encoding="utf-8") as f:
            return f.read()
    if not os.path.exists(cache_path):
        print(f"downloading {url}")
        tmp = cache_path + ".tmp"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            fail(f"could not download {url} ({e}); download it by hand and run again with "
                 f"--input=path/to/input.txt")
        os.replace(tmp, cache_path)
    with open(cache_path, encoding="utf-8") as f:
        return f.read()


def parse_prepare_args(argv, allowed):
    """The prepare scripts take only --name=value flags; return them as a dict of strings."""
    out = {}
    for arg in argv:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not eq or name not in allowed:
            fail(f"unknown argument {arg!r}; this script takes " + ", ".join(f"--{a}=..." for a in allowed), status=2)
        out[name] = value
    return out


def report_split(folder, train_n, val_n, vocab_size):
    print(f"{folder}: train.bin {train_n:,} tokens, val.bin {val_n:,} tokens, vocab {vocab_size:,} "
          f"({np.dtype(token_dtype(vocab_size)).name})")


# -----------------------------------------------------------------------------
# reading and sampling

def prepare_hint(dataset):
    script = os.path.join("data", dataset, "prepare.py")
    if os.path.exists(os.path.join(DATA_ROOT, dataset, "prepare.py")):
        return f"run `python {script}` first"
    return f"prepare it first (data/<name>/prepare.py writes train.bin and val.bin into data/{dataset}/)"


class Batches:
    """Memory-mapped train/val tokens and the deterministic batch schedule."""

    def __init__(self, data_dir, dataset, block_size, batch_size, seed, device, pin_memory=False):
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.device, self.pin_memory = device, pin_memory
        meta = read_meta(data_dir) or {}
        dtype = np.dtype(meta.get("dtype", "uint16"))
        self.data = {}
        for split in ("train", "val"):
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.exists(path):
                fail(f"{path} is missing: {prepare_hint(dataset)}")
            self.data[split] = np.memmap(path, dtype=dtype, mode="r")
            if len(self.data[split]) <= block_size:
                fail(f"{path} holds {len(self.data[split])} tokens, fewer than block_size+1={block_size + 1}; "
                     f"use a smaller block_size or more data")
        self._eval_cache = {}

    def _draw(self, split, stream):
        """A batch whose start offsets come from a generator seeded by `stream` alone."""
        data = self.data[split]
        rng = np.random.default_rng(stream)
        ix = rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        rows = np.stack([data[i:i + self.block_size + 1] for i in ix]).astype(np.int64)
        x = torch.from_numpy(rows[:, :-1].copy())
        y = torch.from_numpy(rows[:, 1:].copy())
        if self.pin_memory:
            x, y = x.pin_memory(), y.pin_memory()
        return x.to(self.device, non_blocking=self.pin_memory), y.to(self.device, non_blocking=self.pin_memory)

    def train_batch(self, iteration, micro_step):
        """The micro-batch for (iteration, micro_step); micro_step counts over all ranks."""
        return self._draw("train", [self.seed, 0, iteration, micro_step])

    def eval_batch(self, split, k):
        """The k-th fixed evaluation batch of a split: the same every evaluation, so evals are
        comparable; drawn once and kept."""
        key = (split, k)
        if key not in self._eval_cache:
            self._eval_cache[key] = self._draw(split, [self.seed, 1 if split == "train" else 2, k])
        return self._eval_cache[key]


def main_guard(fn):
    """Run a prepare script's main, turning Ctrl-C into a one-line message."""
    try:
        fn(sys.argv[1:])
    except KeyboardInterrupt:
        fail("interrupted; nothing was half-written, run it again to finish")

"""
A prepared dataset as training reads it: the on-disk token format, its consistency check, and the
deterministic batch schedule.

A prepared dataset is a folder data/<name>/ with train.bin and val.bin (flat arrays of token ids,
uint16, or uint32 when the vocabulary does not fit in 16 bits), for character-level data meta.pkl
({'vocab_size', 'stoi', 'itos'}, the layout nanoGPT writes; a uint32 dataset also records its dtype
there), and dataset.json, written last by this project's prepare scripts: the sizes, dtype and
vocabulary of the other files, so that a folder left half-rewritten by a killed prepare is refused
instead of trained on. Folders prepared by nanoGPT have no dataset.json and train as they always did.

A dataset may also say which targets count in the loss: train_mask.bin and val_mask.bin (one uint8 per
token, 1 where predicting that token counts), named in dataset.json with what they count ("counted",
e.g. "assistant tokens"). Batches then carry -1, which the loss ignores, at the other targets.
dataset.json may also hold the chat template the data was written in (data/chat/prepare.py), which
training passes on to the run so that chat.py talks in it.

Batches are a pure function of (seed, iteration, micro-step): nothing depends on what was drawn
before, so an interrupted and resumed run, or a run split over more processes, sees exactly the
same data as an uninterrupted single-process run.
"""

import hashlib
import json
import os
import pickle

import numpy as np

from gptkit import fileio
from gptkit.errors import UserError

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder of train.py and data/
MANIFEST = "dataset.json"
SPLITS = ("train", "val")


def data_root():
    """Where dataset=<name> is looked up: data/ beside the code, or $GPT_DATA_ROOT (datasets on
    another disk; the tests keep theirs out of the checkout this way)."""
    return os.environ.get("GPT_DATA_ROOT") or os.path.join(PROJECT, "data")


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


# -----------------------------------------------------------------------------
# meta.pkl: read with an unpickler that builds nothing but plain values

class _Refused(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """meta.pkl holds dicts, lists, strings and numbers, which pickle stores without naming any class.
    A file that names one (a class, a function such as os.system) is refused before anything runs."""

    def find_class(self, module, name):
        raise _Refused(f"it refers to {module}.{name}")


def check_meta(meta, path):
    """The vocabulary a meta.pkl must describe, or a sentence saying what is wrong with it."""
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int) or meta["vocab_size"] < 1:
        raise UserError(f"{path} is not a vocabulary file: it should be a dict with a positive 'vocab_size' "
                        f"(nanoGPT's layout); prepare the dataset again")
    if "stoi" in meta or "itos" in meta:
        stoi, itos = meta.get("stoi"), meta.get("itos")
        ok = (isinstance(stoi, dict) and isinstance(itos, dict) and len(stoi) == len(itos) == meta["vocab_size"]
              and all(isinstance(k, str) and isinstance(v, int) for k, v in stoi.items())
              and all(isinstance(k, int) and isinstance(v, str) for k, v in itos.items()))
        if not ok:
            raise UserError(f"{path} has a broken character vocabulary (stoi/itos do not match vocab_size "
                            f"{meta['vocab_size']}); prepare the dataset again")
    if meta.get("dtype", "uint16") not in ("uint16", "uint32"):
        raise UserError(f"{path} names the token dtype {meta.get('dtype')!r}; only uint16 and uint32 are read")
    return meta


def read_meta(folder):
    """The folder's meta.pkl (None when it has none), read safely: see _PlainUnpickler."""
    path = os.path.join(folder, "meta.pkl")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except _Refused as e:
        raise UserError(f"{path} was not loaded: {fileio.reason(e)}, and a vocabulary file holds only plain "
                        f"values, so loading it could run code; delete it and prepare the dataset again") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OSError) as e:
        raise UserError(f"{path} is truncated or not a pickle ({fileio.reason(e)}); prepare the dataset "
                        f"again") from None
    return check_meta(meta, path)


def same_vocabulary(a, b):
    """Whether two vocabularies (meta.pkl dicts, None for GPT-2's BPE) give every token id the same text:
    the same size is not enough, a re-prepared corpus can map the same number of characters otherwise."""
    if a is None or b is None:
        return a is None and b is None
    return a.get("vocab_size") == b.get("vocab_size") and a.get("stoi") == b.get("stoi")


def write_meta(meta, folder):
    with fileio.atomic_open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump(meta, f)


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -----------------------------------------------------------------------------
# consistency

def prepare_hint(dataset):
    script = os.path.join("data", dataset, "prepare.py")
    if os.path.exists(os.path.join(PROJECT, script)):
        return f"run `python {script}` first"
    return f"prepare it first (data/<name>/prepare.py writes train.bin and val.bin into data/{dataset}/)"


def mask_file(split):
    return f"{split}_mask.bin"


def check_folder(data_dir, dataset):
    """(meta, dtype, manifest) of a prepared folder after checking it: both bins present, sizes whole
    tokens, and, where dataset.json exists (else the manifest is None), every file as it recorded,
    loss masks included. One sentence for anything wrong."""
    meta = read_meta(data_dir)
    dtype = np.dtype((meta or {}).get("dtype", "uint16"))
    manifest_path = os.path.join(data_dir, MANIFEST)
    manifest = None
    if os.path.exists(manifest_path):
        try:
            with open(manifest_path) as f:
                manifest = json.load(f)
            complete = bool(manifest.get("complete"))
        except (OSError, ValueError, AttributeError):
            complete = False
        if not complete:
            raise UserError(f"{data_dir} was left half-prepared (its prepare.py stopped before it finished, so its "
                            f"files may mix two versions); run the prepare script again")
        dtype = np.dtype(manifest["dtype"])
    for split in SPLITS:
        path = os.path.join(data_dir, f"{split}.bin")
        if not os.path.exists(path):
            raise UserError(f"{path} is missing: {prepare_hint(dataset)}")
        size = os.path.getsize(path)
        if size == 0 or size % dtype.itemsize:
            raise UserError(f"{path} holds {size} bytes, {'nothing' if size == 0 else 'not a whole number of'} "
                            f"{dtype.name} tokens; it is damaged or cut short: prepare the dataset again")
        if manifest is not None and manifest["files"].get(f"{split}.bin", {}).get("bytes") != size:
            raise UserError(f"{path} is not the file {MANIFEST} recorded (a different size): the folder mixes "
                            f"two preparations; prepare the dataset again")
        if manifest is not None and manifest.get("counted"):
            mask_path = os.path.join(data_dir, mask_file(split))
            if not os.path.exists(mask_path) or os.path.getsize(mask_path) != size // dtype.itemsize:
                raise UserError(f"{mask_path}, the loss mask of {split}.bin, is missing or not one byte per token; "
                                f"prepare the dataset again")
    if manifest is not None:
        recorded = manifest["files"].get("meta.pkl")
        meta_path = os.path.join(data_dir, "meta.pkl")
        if (recorded is None) != (meta is None) or (recorded and recorded.get("sha256") != file_sha256(meta_path)):
            raise UserError(f"{meta_path} is not the vocabulary {MANIFEST} recorded: the folder mixes two "
                            f"preparations; prepare the dataset again")
    return meta, dtype, manifest


# -----------------------------------------------------------------------------
# reading and sampling

def open_batches(name, data_dir, block_size, batch_size, seed, device, pin_memory=False, digits=3, reverse=True):
    """(batches, where they come from, for messages) of dataset=<name>: a prepared folder (data_dir, else
    data/<name> under the data root), or problems generated as they are drawn (gptkit/arithmetic.py)."""
    from gptkit import arithmetic
    if name in arithmetic.TASKS and not data_dir:
        problems = arithmetic.Arithmetic(name, digits, reverse, block_size, batch_size, seed, device, pin_memory)
        return problems, f"the generated {name} problems"
    data_dir = data_dir or os.path.join(data_root(), name)
    return Batches(data_dir, name, block_size, batch_size, seed, device, pin_memory), data_dir


class Batches:
    """Memory-mapped train/val tokens (and loss masks) and the deterministic batch schedule."""

    exact_match = False  # rows are windows of a token stream, not whole problems (see arithmetic.py)

    def __init__(self, data_dir, dataset, block_size, batch_size, seed, device, pin_memory=False, vocab_size=None):
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.device, self.pin_memory, self.vocab_size = device, pin_memory, vocab_size
        self.seq_len = block_size
        self.meta, dtype, manifest = check_folder(data_dir, dataset)
        manifest = manifest or {}
        self.counted = manifest.get("counted")  # what the loss counts where targets are masked, else None
        self.chat_template = manifest.get("chat_template")
        self.data, self.mask = {}, {}
        for split in SPLITS:
            path = os.path.join(data_dir, f"{split}.bin")
            self.data[split] = np.memmap(path, dtype=dtype, mode="r")
            if len(self.data[split]) <= block_size:
                raise UserError(f"{path} holds {len(self.data[split])} tokens, fewer than block_size+1="
                                f"{block_size + 1}; use a smaller block_size or more data")
            if self.counted:
                self.mask[split] = np.memmap(os.path.join(data_dir, mask_file(split)), dtype=np.uint8, mode="r")
        self._eval_cache = {}

    def _offsets(self, split, stream):
        """Start offsets of a batch's rows, from a generator seeded by `stream` alone."""
        rng = np.random.default_rng(stream)
        return rng.integers(0, len(self.data[split]) - self.block_size, size=self.batch_size)

    def _draw(self, split, stream):
        """A batch whose start offsets come from a generator seeded by `stream` alone."""
        import torch  # here, not at the top: the prepare scripts import this module and need no torch
        data = self.data[split]
        ix = self._offsets(split, stream)
        rows = np.stack([data[i:i + self.block_size + 1] for i in ix]).astype(np.int64)
        # checked here on the host, where it costs microseconds: on a GPU an id past the embedding
        # is a device-side assert that kills the process without saying which file is wrong
        if self.vocab_size is not None and rows.max() >= self.vocab_size:
            raise UserError(f"the {split} data holds token id {rows.max()} but the model has only "
                            f"{self.vocab_size} tokens; the data and its meta.pkl do not belong together: "
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
        return self._draw("train", [self.seed, 0, iteration, micro_step])

    def target_counts(self, iteration, micro_steps):
        """Counted targets of each of the step's micro-batches (all processes'), read from the mask
        alone (a byte per target): training.Step weighs each micro-batch by its share."""
        mask = self.mask["train"]
        return [int(sum(np.count_nonzero(mask[i + 1:i + self.block_size + 1])
                        for i in self._offsets("train", [self.seed, 0, iteration, m])))
                for m in range(micro_steps)]

    def eval_batch(self, split, k):
        """The k-th fixed evaluation batch of a split: the same every evaluation, so evals are
        comparable; drawn once and kept."""
        key = (split, k)
        if key not in self._eval_cache:
            self._eval_cache[key] = self._draw(split, [self.seed, 1 if split == "train" else 2, k])
        return self._eval_cache[key]


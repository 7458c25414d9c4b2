"""
Checkpoint files: nanoGPT's layout, atomic writes, safe (weights_only) reads with one-sentence errors,
and what a training run saves in them.

A checkpoint is a dict with at least nanoGPT's six keys: model, optimizer, model_args, iter_num,
best_val_loss, config. model_args holds only the settings nanoGPT's GPTConfig knows, so nanoGPT's own
sample.py and train.py open a GPT-2-shaped run of this project unchanged; the architecture options
beyond them sit beside it in model_options. Ours add the state needed to continue a run exactly
(RunSaver). A LoRA run's 'model' holds its adapters alone, and its 'lora' entry the settings and the
base they adapt (gptkit/lora.py). Everything in it is tensors and plain Python values, so
torch.load(weights_only=True) reads it. Building a model from one is loading.py's job.
"""

import os
import pickle
import random
import shutil
import warnings
import zipfile

import numpy as np
import torch

from gptkit import fileio, lora, runtime
from gptkit.errors import UserError

# the fields of nanoGPT's GPTConfig: a checkpoint's model_args holds these and nothing else
NANOGPT_MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def save(obj, path):
    """Write a checkpoint atomically (fileio's rule): a crash at any moment leaves either the old or
    the new file, never a torn one. Temporaries of processes that died mid-save are removed."""
    folder = os.path.dirname(os.path.abspath(path))
    previous = ("the previous checkpoint there is intact" if os.path.exists(path)
                else "nothing was saved there before")
    os.makedirs(folder, exist_ok=True)
    try:
        with fileio.atomic_open(path, "wb", advice=lambda: f"{previous}: {_full_disk(folder)}") as f:
            torch.save(obj, f)
    except RuntimeError as e:  # torch's writer reports some OS errors (a full disk) as RuntimeError
        raise UserError(f"could not write {path} ({fileio.reason(e)}); {previous}: {_full_disk(folder)}") from None
    fileio.remove_stale_temps(folder)


def _full_disk(folder):
    """What to do after a failed write, naming a full disk when it is one (torch's writer does not say)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        return (f"the disk is full ({free / 2**20:.0f} MB free): free some space or set out_dir to another disk, "
                f"then resume")
    return "free some disk space or set out_dir to a writable folder, then resume"


def link(path, other):
    """Make `other` a second name of `path`'s file (a hard link where the filesystem has them, else a
    copy), replacing it atomically. Checkpoints are only ever replaced by a rename, never written in
    place, so each name keeps its version when the other is saved again."""
    tmp = fileio.temp_name(other)
    fileio.remove(tmp)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, other)


def keep_copy(path, numbered, keep_last):
    """Keep `path` also as `numbered` (link()) and delete all but the newest `keep_last` numbered
    copies beside it. Numbered names sort by iteration (zero-padded)."""
    folder = os.path.dirname(os.path.abspath(path))
    link(path, numbered)
    stem, ext = os.path.splitext(os.path.basename(numbered))
    prefix = stem.rstrip("0123456789")
    copies = sorted(f for f in os.listdir(folder)
                    if f.startswith(prefix) and f.endswith(ext) and f[len(prefix):-len(ext)].isdigit())
    for old in copies[:-keep_last]:
        fileio.remove(os.path.join(folder, old))


def read(path, map_location="cpu"):
    """torch.load(weights_only=True) of a checkpoint file; any problem is one sentence naming the file."""
    if not os.path.exists(path):
        sharded = os.path.splitext(path)[0] + ".dcp"
        if os.path.isdir(sharded):  # a parallel=fsdp run that has not written its one-file checkpoint
            raise UserError(f"no checkpoint at {path}, only the sharded one of a parallel=fsdp run ({sharded}); "
                            f"write {os.path.basename(path)} from it with: python -m gptkit.sharding "
                            f"--out_dir={os.path.dirname(path) or '.'}")
        from gptkit import runs
        others = [n for n in runs.checkpoints(os.path.dirname(path) or ".") if n.endswith(".pt")]
        if others:  # e.g. best.pt alone, or numbered copies: the run is there, under another name
            raise UserError(f"no checkpoint at {path}, but its folder holds {', '.join(others)}; choose one with "
                            f"--ckpt_name={others[0]}")
        raise UserError(f"no checkpoint at {path}; train one first (python train.py ...) or point out_dir at "
                        f"the run folder")
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a checkpoint file; point out_dir at the folder that holds ckpt.pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warning would bury the sentence
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # random bytes, a plain pickle, or a pickle of arbitrary Python objects: weights_only refuses
        # them all, and we never fall back to the unsafe loader
        raise UserError(f"{path} is not a checkpoint that can be read safely: it is corrupt, or it is not a "
                        f"torch checkpoint of tensors and plain values (torch.load(weights_only=True) refused it)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as e:
        raise UserError(f"{path} is truncated or corrupt (a copy cut short, or a disk error?) and cannot be read: "
                        f"{fileio.reason(e)}") from None


def load(path, map_location="cpu", require=()):
    """Read a checkpoint safely; any problem is one sentence naming the file. `require` lists
    entries beyond 'model' and 'model_args' the caller needs (e.g. 'optimizer' to resume)."""
    ckpt = read(path, map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("model_args"), dict):
        raise UserError(f"{path} is not a training checkpoint: it lacks the 'model' and 'model_args' entries")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise UserError(f"{path} is not a training checkpoint: its 'model' entry holds values other than tensors")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise UserError(f"{path} cannot be resumed: it lacks the {', '.join(repr(k) for k in missing)} "
                        f"entr{'ies' if len(missing) > 1 else 'y'} (it holds weights only?)")
    return ckpt


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add, and drop causal-mask
    buffers that old nanoGPT versions stored as 'attn.bias'."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        if k.endswith(".attn.bias") and v.dim() == 4:
            continue
        out[k] = v
    return out


def model_state(model):
    """The state dict of the plain model under any DDP / compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model.state_dict()


# -----------------------------------------------------------------------------
# random state, stored as tensors and plain values so weights_only loading accepts it

def rng_state():
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


# -----------------------------------------------------------------------------
# the network's settings: nanoGPT's in model_args, the others beside them

def model_entries(config):
    """{'model_args': nanoGPT's settings, 'model_options': the rest} of a GPTConfig."""
    args = dict(vars(config))
    return {"model_args": {k: args.pop(k) for k in NANOGPT_MODEL_ARGS}, "model_options": args}


def model_args(ckpt):
    """Every network setting a checkpoint records (nanoGPT's have only model_args: the others keep their
    defaults, which are nanoGPT's network)."""
    return {**ckpt["model_args"], **(ckpt.get("model_options") or {})}


# -----------------------------------------------------------------------------
# a training run's checkpoints

class RunSaver:
    """Writes a run's checkpoints, out_dir/<name>, atomically from the plain (unwrapped, uncompiled)
    model. Every process contributes its random state; only the first writes, and if it cannot, every
    process stops with its sentence (none is left waiting at the next collective)."""

    def __init__(self, out_dir, model, optimizer, scaler, config, chat_template, keep_last, dist, device):
        """config: the run's resolved settings (a dict); scaler: the fp16 gradient scaler, or None."""
        self.out_dir, self.model, self.optimizer, self.scaler = out_dir, model, optimizer, scaler
        self.config, self.chat_template, self.keep_last = config, chat_template, keep_last
        self.dist, self.device = dist, device

    def run_state(self, progress):
        """Everything a checkpoint holds besides the weights and the optimizer state: on the first process
        a dict, on the others None. Every process must call it: each contributes its random state."""
        rng = rng_state()
        if self.dist.enabled:
            import torch.distributed as tdist
            states = [None] * self.dist.world_size
            tdist.all_gather_object(states, rng)
        else:
            states = [rng]
        if not self.dist.master:
            return None
        return dict(
            **model_entries(self.model.config),
            **progress.state(),
            config=self.config,
            chat_template=self.chat_template,  # the format chat.py must talk in, where the data has one
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=states,
            # the data schedule is a function of (seed, iteration, micro-step); nothing else to keep
            sampler=dict(kind="stateless", seed=self.config["seed"]),
        )

    def save(self, names, progress):
        """names: a checkpoint's name, or several that hold the same state (best.pt and ckpt.pt of one
        iteration): written once, under the first, and linked under the others, so they take the disk
        space of one (a GPT-2 fine-tune's is 1.5 GB). progress: training.Progress, the counters that
        place the run (iteration, best val loss, ...)."""
        names = [names] if isinstance(names, str) else list(names)
        state = self.run_state(progress)
        failure = None
        if self.dist.master:
            # a LoRA run keeps its adapters and what identifies its base, not the base's weights
            weights = lora.checkpoint_entries(self.model) or dict(model=model_state(self.model))
            state = dict(**weights, optimizer=self.optimizer.state_dict(), **state)
            path = os.path.join(self.out_dir, names[0])
            try:
                save(state, path)
                for other in names[1:]:
                    link(path, os.path.join(self.out_dir, other))
                if "ckpt.pt" in names and self.keep_last > 0:
                    keep_copy(path, os.path.join(self.out_dir, f"ckpt_{progress.iter_num:07d}.pt"), self.keep_last)
            except UserError as e:
                failure = e
        runtime.raise_everywhere(failure, self.dist, self.device)

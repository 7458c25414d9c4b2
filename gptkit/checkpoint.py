"""
Checkpoints: the file (nanoGPT's layout, atomic writes, safe reads with one-sentence errors) and a run
folder's store of them (checkpoint.Store: their names, declared here alone; which one to read; saving,
whole-file or sharded; keep_last's copies; one-file checkpoints from sharded ones).

A checkpoint is a dict with at least nanoGPT's six keys: model, optimizer, model_args, iter_num,
best_val_loss, config. model_args holds only the settings nanoGPT's GPTConfig knows, so nanoGPT's own
sample.py and train.py open a GPT-2-shaped run of this project unchanged; the architecture options
beyond them sit beside it in model_options. Ours add the state needed to continue a run exactly
(RunSaver). A LoRA run's 'model' holds its adapters alone, and its 'lora' entry the settings and the
base they adapt (gptkit/lora.py). Everything in it is tensors and plain Python values, so
torch.load(weights_only=True) reads it. Building a model from one is loading.py's job.

A parallel=fsdp run saves each checkpoint as a sharded folder instead (ckpt.pt -> ckpt.dcp; the format
is dcp.py's, the names runs.py's), with RUN_STATE beside the shards: the checkpoint less its weights and optimizer state.

    store = checkpoint.Store(out_dir)
    ckpt, path, note = store.load("best.pt")     # the newest of best.pt and best.dcp (read whole, in memory)
    saver = store.saver(sharded, model, ...)     # saver.save(progress, latest=True, best=False)
    store.consolidate("ckpt.pt")                 # ckpt.pt from ckpt.dcp, never over a newer ckpt.pt
"""

import os
import pickle
import random
import shutil
import warnings
import zipfile

import numpy as np
import torch

from gptkit import dcp, fileio, lora, optim, runtime
from gptkit.errors import USAGE, UserError
from gptkit.runs import BEST, LATEST, NUMBERED, RUN_STATE, SHARDED, checkpoints, complete_sharded, numbered, \
    sharded_name
from model import GPT, MODEL_ARG_KEYS, GPTConfig

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


def read(path, map_location="cpu"):
    """torch.load(weights_only=True) of a checkpoint file; any problem is one sentence naming the file."""
    if not os.path.exists(path):
        raise UserError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a checkpoint file; point out_dir at the folder that holds {LATEST}")
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


def model_config(args, dropout=None):
    """The GPTConfig of a checkpoint's settings (model_args()); settings this version does not know are
    left out, those it lacks keep their defaults."""
    args = {k: args[k] for k in MODEL_ARG_KEYS if k in args}
    if dropout is not None:
        args["dropout"] = dropout
    return GPTConfig(**args)




# -----------------------------------------------------------------------------
# a run folder's checkpoints (their names are declared in runs.py, which plot.py reads without torch)

def file_iteration(path):
    """The iteration a checkpoint file holds, read without loading its tensors (memory-mapped); None
    when it is missing or cannot be read that way."""
    if not os.path.isfile(path):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["iter_num"])
    except Exception:  # noqa: BLE001 -- unreadable: read() says why when the file is read
        return None


class Store:
    """The checkpoints of the run folder `folder`: which are there, which one a script should read,
    saving, keep_last's copies, and one-file checkpoints from sharded ones."""

    def __init__(self, folder):
        self.folder = folder

    def path(self, name, sharded=False):
        return os.path.join(self.folder, sharded_name(name) if sharded else name)

    def names(self):
        """The checkpoints in the folder: ckpt.pt, best.pt, numbered copies, sharded ones (empty when none)."""
        return checkpoints(self.folder)

    def sharded(self, name):
        """The complete sharded checkpoint that stands for `name` (ckpt.pt or ckpt.dcp: ckpt.dcp), or None."""
        return complete_sharded(self.path(name, sharded=not name.endswith(SHARDED)))

    def find(self, name=None):
        """(path, sharded, note): the newest checkpoint under `name`, the file or its sharded form (a run killed
        after a sharded save, or with fsdp_consolidate=never, left a ckpt.pt older than its ckpt.dcp); note
        says so, else None. A missing one is a sentence naming what the folder holds instead. name: the file's
        (ckpt.pt, best.pt, a numbered copy) or a sharded folder's (best.dcp); None or "": the latest."""
        name = name or LATEST
        path = self.path(name)
        if name.endswith(SHARDED):
            folder = self.sharded(name)
            if folder is None:
                self._missing(path)
            return folder, True, None
        folder = self.sharded(name)
        if folder is None:
            if not os.path.exists(path):
                self._missing(path)
            return path, False, None
        if not os.path.exists(path):
            return folder, True, f"{name} is not there: read from the sharded {os.path.basename(folder)}"
        theirs, ours = self.run_state(folder)["iter_num"], file_iteration(path)
        if ours is not None and theirs > ours:
            return folder, True, (f"{os.path.basename(folder)} (iteration {theirs}) is newer than {name} (iteration "
                                  f"{ours}): read from it")
        return path, False, None

    def saved(self):
        """The path of the run's latest checkpoint (the file or its sharded form, the newer), or None."""
        try:
            return self.find()[0]
        except UserError:
            return None

    def describe(self):
        """The run's latest and best checkpoints, each as 'name (what it holds)', for a run's last lines."""
        said = []
        for name, what in ((LATEST, "latest"), (BEST, "best val loss")):
            folder = self.sharded(name)
            if os.path.exists(self.path(name)):
                newer = folder is not None and self.find(name)[1]
                said.append(f"{name} ({what}" + (f"; older than {os.path.basename(folder)}, which the scripts read)"
                                                 if newer else ")"))
            if folder is not None:
                said.append(f"{os.path.basename(folder)} ({what}, sharded)")
        return said

    def _missing(self, path):
        if os.path.isdir(path) and not path.endswith(SHARDED):
            raise UserError(f"{path} is a folder, not a checkpoint file; point out_dir at the folder that holds "
                            f"{LATEST}")
        others = self.names()
        if others:  # e.g. best.pt alone, or numbered copies: the run is there, under another name
            raise UserError(f"no checkpoint at {path}, but its folder holds {', '.join(others)}; choose one with "
                            f"--ckpt_name={others[0]}")
        raise UserError(f"no checkpoint at {path}; train one first (python train.py ...) or point out_dir at "
                        f"the run folder")

    def load(self, name=None, require=()):
        """(checkpoint, path, note) of find(name): a checkpoint file, or a sharded checkpoint read whole into
        this process's memory (its weights; with 'optimizer' in require, its optimizer state too)."""
        path, sharded, note = self.find(name)
        if not sharded:
            return load(path, require=require), path, note
        return self.read_whole(path, optimizer="optimizer" in require), path, note

    def run_state(self, folder):
        """The run state of a sharded checkpoint: what a checkpoint file holds besides model and optimizer."""
        path = os.path.join(folder, RUN_STATE)
        state = read(path)
        if not isinstance(state, dict) or not {"model_args", "config", "iter_num"} <= set(state):
            raise UserError(f"{path} is not the run state of a sharded checkpoint (it lacks model_args, config or "
                            f"iter_num)")
        return state

    def check(self, folder):
        """A sentence naming the damaged file of the sharded checkpoint folder, and the run's checkpoints that are
        intact; nothing when it is whole."""
        problem = dcp.damage(folder)
        if problem is None:
            return
        intact = [n for n in self.names() if os.path.join(self.folder, n) != folder and not n.endswith(".previous")
                  and (not n.endswith(SHARDED) or dcp.damage(self.path(n)) is None)]
        raise UserError(f"{problem}: the sharded checkpoint {folder} is damaged and cannot be read"
                        + (f"; intact: {', '.join(intact)} (read one with --ckpt_name=NAME, or resume from one by "
                           f"copying it to {os.path.basename(folder)})" if intact else ""))

    def read_whole(self, folder, optimizer=True):
        """A sharded checkpoint as the one checkpoint file a DDP run writes, in this process's memory (CPU), read
        by this process alone: 16 bytes a parameter with AdamW's state, 4 without."""
        self.check(folder)
        state = self.run_state(folder)
        c = state["config"]
        config = model_config(model_args(state))
        with torch.device("meta"):  # shapes only: every value is read from the checkpoint
            model = GPT(config, init_weights=False)
        model.to_empty(device="cpu")
        if config.tie_embeddings:
            model.lm_head.weight = model.transformer.wte.weight  # to_empty made two parameters of the tied pair
        opt = optim.configure_optimizers(model, c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]),
                                         optimizer=c.get("optimizer", "adamw"), muon_lr=c.get("muon_lr", 0.02),
                                         muon_momentum=c.get("muon_momentum", 0.95),
                                         muon_ns_steps=c.get("muon_ns_steps", 5)) if optimizer else None
        try:
            dcp.load(folder, model, opt, alone=True)
        except ValueError as e:
            raise UserError(f"{folder} does not fit the model and optimizer its {RUN_STATE} describes ({e}); it "
                            f"was assembled by hand?") from None
        return dict(model=model.state_dict(), optimizer=opt.state_dict() if optimizer else None, **state)

    def consolidate(self, name):
        """Write the checkpoint file `name` from its sharded form (nanoGPT's sample.py reads it; so does every
        script here, which read the sharded one themselves). Returns a line saying what was done: a file holding
        a later iteration than the sharded one is never replaced (a run that went on with parallel=ddp)."""
        name = os.path.splitext(name)[0] + ".pt"  # best.dcp -> best.pt
        folder = self.sharded(name)
        if folder is None:
            raise UserError(f"{self.path(name, sharded=True)} is not a complete sharded checkpoint, so there is nothing "
                            f"to write {name} from", status=USAGE)
        path = self.path(name)
        state = self.run_state(folder)
        theirs, ours = int(state["iter_num"]), file_iteration(path)
        if ours is not None and ours > theirs:
            return (f"kept {path} (iteration {ours}): it is newer than {os.path.basename(folder)} (iteration {theirs}), "
                    f"which is not written over it")
        save(self.read_whole(folder), path)
        return f"wrote {path} from {folder} (iteration {theirs})"

    def keep_copy(self, path, iter_num, keep_last):
        """Keep the checkpoint at path (a file or a sharded folder) also as its numbered copy (a second name for
        the same files) and delete all but the newest `keep_last` numbered copies of its kind."""
        sharded = path.endswith(SHARDED)
        copy = self.path(numbered(iter_num, sharded))
        (dcp.copy if sharded else link)(path, copy)
        kind = SHARDED if sharded else ".pt"
        copies = sorted(n for n in self.names() if NUMBERED.match(n) and n.endswith(kind))
        for old in copies[:-keep_last]:
            fileio.remove_any(self.path(old))

    def saver(self, sharded, *args, **kwargs):
        """The RunSaver that writes this run's checkpoints: one file each, or (parallel=fsdp) sharded folders."""
        return (ShardedSaver if sharded else RunSaver)(self, *args, **kwargs)


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


# -----------------------------------------------------------------------------
# saving a training run

class RunSaver:
    """Writes a run's checkpoints atomically from the plain (unwrapped, uncompiled) model, one file each.
    Every process contributes its random state; only the first writes, and if it cannot, every process
    stops with its sentence (none is left waiting at the next collective)."""

    def __init__(self, store, model, optimizer, scaler, config, chat_template, keep_last, dist, device):
        """config: the run's resolved settings (a dict); scaler: the fp16 gradient scaler, or None."""
        self.store, self.model, self.optimizer, self.scaler = store, model, optimizer, scaler
        self.config, self.chat_template, self.keep_last = config, chat_template, keep_last
        self.dist, self.device = dist, device
        self.latest = store.path(LATEST)  # where the latest state is saved

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

    def save(self, progress, latest=True, best=False):
        """Save the run as its latest checkpoint and/or its best: when both, one file under two names, so they
        take the disk space of one (a GPT-2 fine-tune's is 1.5 GB). progress: training.Progress, the counters
        that place the run (iteration, best val loss, ...)."""
        names = [BEST] * best + [LATEST] * latest
        state = self.run_state(progress)
        failure = None
        if self.dist.master:
            # a LoRA run keeps its adapters and what identifies its base, not the base's weights
            weights = lora.checkpoint_entries(self.model) or dict(model=model_state(self.model))
            state = dict(**weights, optimizer=self.optimizer.state_dict(), **state)
            path = self.store.path(names[0])
            try:
                save(state, path)
                for other in names[1:]:
                    link(path, self.store.path(other))
                if latest and self.keep_last > 0:
                    self.store.keep_copy(self.latest, progress.iter_num, self.keep_last)
            except UserError as e:
                failure = e
        runtime.raise_everywhere(failure, self.dist, self.device)

    def consolidate(self):
        """Lines to print once the run ends (a sharded run's consolidation); none for one-file checkpoints."""
        return []


class ShardedSaver(RunSaver):
    """RunSaver for parallel=fsdp: each checkpoint is a sharded folder (ckpt.dcp, best.dcp), each process
    writing its own shards; consolidate() writes the one-file ckpt.pt (best.pt) from it when the run's
    fsdp_consolidate says. The folder is written as <name>.tmp<pid>, then renamed into place (dcp.replace)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.latest = self.store.path(LATEST, sharded=True)
        self.unconsolidated = []  # names of the files whose sharded checkpoint changed since consolidate()
        # the temporary folder every process writes into is named after the first process's pid
        pid = [os.getpid()]
        if self.dist.enabled:
            torch.distributed.broadcast_object_list(pid, src=0)
        self.pid = pid[0]

    def save(self, progress, latest=True, best=False):
        for name in [BEST] * best + [LATEST] * latest:
            self.save_one(name, progress)

    def save_one(self, name, progress):
        folder = self.store.path(name, sharded=True)
        tmp = f"{folder}.tmp{self.pid}"
        state = self.run_state(progress)
        failure = None
        try:
            dcp.save(tmp, self.model, self.optimizer)
        except UserError as e:
            failure = e
        if self.dist.master and failure is None:
            try:
                save(state, os.path.join(tmp, RUN_STATE))  # last: a folder with its run state is complete
                dcp.replace(tmp, folder)
                if name == LATEST and self.keep_last > 0:
                    self.store.keep_copy(folder, progress.iter_num, self.keep_last)
            except UserError as e:
                failure = e
        if self.dist.master and failure is not None:
            fileio.remove_any(tmp)
        runtime.raise_everywhere(failure, self.dist, self.device)
        if name not in self.unconsolidated:
            self.unconsolidated.append(name)
        if self.config["fsdp_consolidate"] == "always":
            self.consolidate()

    def consolidate(self):
        """Write ckpt.pt (and best.pt) from the sharded checkpoints saved since the last time, unless
        fsdp_consolidate=never: the first process reads them back whole, the others wait. Returns the lines
        saying what was kept instead of written (a newer file is never replaced)."""
        failure, said = None, []
        if self.dist.master and self.config["fsdp_consolidate"] != "never":
            try:
                said = [line for line in map(self.store.consolidate, self.unconsolidated) if line.startswith("kept")]
            except UserError as e:
                failure = e
        self.unconsolidated = []
        runtime.raise_everywhere(failure, self.dist, self.device)
        return said

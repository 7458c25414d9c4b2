"""
Sharded data parallelism (parallel=fsdp): FSDP2 (torch.distributed.fsdp.fully_shard) splits each block,
then the rest of the model, over the processes, so each holds 1/N of the weights, gradients and
optimizer state and gathers a block's weights only while it runs. Its checkpoints are written in
shards, each process its own (torch.distributed.checkpoint), resume on any number of processes, and
are consolidated into the one-file ckpt.pt that sample.py, chat.py and export.py read. Also activation
checkpointing per block, for either engine.

    model, said = sharding.place(model, cfg.parallel, ...)  # instead of model.to(device)
    saver = sharding.ShardedSaver(...)                      # checkpoint.RunSaver, writing ckpt.dcp for ckpt.pt
    saver.consolidate()                                     # ckpt.pt (and best.pt) as the run ends
    python -m gptkit.sharding --out_dir=OUT                 # the same for a run folder, at any time

A sharded checkpoint is a folder, out_dir/ckpt.dcp (and best.dcp): torch.distributed.checkpoint's files
(.metadata, and one __<rank>_0.distcp per process holding its shards of every tensor) and run.pt, the
rest of what checkpoint.RunSaver saves (counters, settings, every process's random state). It is
written as ckpt.dcp.tmp<pid>, then renamed into place (replace()).
"""

import os
import re
import shutil
import warnings
from contextlib import contextmanager

import torch

from gptkit import checkpoint, fileio, loading, optim, runtime
from gptkit.errors import USAGE, UserError

RUN_STATE = "run.pt"  # in each sharded checkpoint: everything but the weights and the optimizer state


def folder_of(name):
    """The sharded checkpoint that stands for the checkpoint file `name`: ckpt.pt -> ckpt.dcp."""
    return os.path.splitext(name)[0] + ".dcp"


def distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def single_process_quietly():
    """torch.distributed.checkpoint warns at every save and load in a single process, which here is
    meant: parallel=fsdp on one process, and consolidation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# -----------------------------------------------------------------------------
# the model on the processes

def shards(parallel, shard_size, world_size):
    """How many processes share each weight: each holds 1/shards of the model (1 without sharding)."""
    return (shard_size or world_size) if parallel == "fsdp" else 1


def place(model, parallel, shard_size, activation_checkpointing, dist, plan):
    """Put the model where it trains: whole on the device (parallel=ddp, and fsdp on one process), or
    sharded over the processes (fsdp): each block, then the rest (embeddings and the tied head, the
    final norm). Returns (the model, a line saying how, or None)."""
    if activation_checkpointing:
        checkpoint_blocks(model)
    if parallel != "fsdp":
        return model.to(plan.device), None
    if plan.grad_scaler:
        raise UserError("parallel=fsdp does not train in float16, whose gradient scaler would have to agree over "
                        "every process's shards; use --dtype=bfloat16 (or float32), or parallel=ddp", status=USAGE)
    if dist.world_size == 1:
        return model.to(plan.device), ("parallel=fsdp on one process shards nothing: the whole model trains here, "
                                       "and its checkpoints are sharded ones (ckpt.dcp), which resume on any number "
                                       "of processes")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    # every process starts from the first one's weights, as DDP makes them (each drew its own: the seed
    # is per process, for dropout)
    first = model.state_dict() if dist.master else {}
    groups = dist.world_size // shard_size if shard_size else 1
    if groups > 1:
        # hybrid sharding: each group (one node's GPUs, on fast links) holds one sharded copy, and the
        # groups all-reduce their gradients as DDP processes do (keys.check made the groups equal)
        mesh = init_device_mesh(plan.device_type, (groups, shard_size), mesh_dim_names=("replicate", "shard"))
        how = f"sharded over each group of {shard_size} processes, replicated across the {groups} groups"
    else:
        mesh = init_device_mesh(plan.device_type, (dist.world_size,))
        how = f"sharded over {dist.world_size} processes"
    # On GPUs the gathered weights are cast to dtype for the forward and backward passes and the gradients
    # reduced in float32, while the shards (master weights) and the optimizer state stay float32. On CPU,
    # where autocast is slower than fp32 (runtime.pick_dtype), the weights stay as they are.
    mixed = plan.device_type == "cuda" and plan.dtype != "float32"
    policy = (MixedPrecisionPolicy(param_dtype=plan.ptdtype, reduce_dtype=torch.float32) if mixed
              else MixedPrecisionPolicy())
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # moves the shards to the mesh's device
    set_model_state_dict(model, first, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    precision = f"; computes in {plan.dtype}, reduces gradients in float32" if mixed else ""
    return model, f"parallel=fsdp: weights, gradients and optimizer state {how}{precision}"


def checkpoint_blocks(model):
    """Activation checkpointing per block: the forward pass keeps only each block's input and the
    backward pass recomputes the block's activations from it (with the same dropout: the random state
    is replayed), so activation memory falls from all blocks' to one block's for about one more forward
    pass. The composable form leaves the parameters' names as they were (no wrapper module)."""
    from torch.distributed._composable import checkpoint
    for block in model.transformer.h:
        checkpoint(block)


# -----------------------------------------------------------------------------
# sharded checkpoints

def optimizers(optimizer):
    """The torch optimizers inside train.py's optimizer (MuonAdamW steps two)."""
    return (optimizer.muon, optimizer.adamw) if isinstance(optimizer, optim.MuonAdamW) else (optimizer,)


def save_shards(folder, model, optimizer):
    """Every process writes its shards of the weights and the optimizer state into folder (the first
    also .metadata, where each piece is); none gathers the model."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(model, optimizers(optimizer))
    try:
        with single_process_quietly():
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=folder, no_dist=not distributed())
    except (CheckpointException, OSError, RuntimeError) as e:  # CheckpointException: some process failed
        raise UserError(f"could not write {folder} ({fileio.reason(e)}); the previous checkpoint is intact: free some "
                        f"disk space or set out_dir to a writable folder, then resume") from None


def load(folder, model, optimizer, alone=False):
    """Give model and optimizer the weights and optimizer state saved in the sharded checkpoint folder,
    whatever number of processes wrote it and reads it now: each process reads its part of every tensor
    (resharding). alone: this process only, without the others (consolidation). Raises ValueError when
    the checkpoint does not fit the model or the optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    torch_optimizers = optimizers(optimizer)
    scales = [g.get("lr_scale") for g in optimizer.param_groups]  # Muon's: today's muon_lr, not the saved one
    model_state, optim_state = get_state_dict(model, torch_optimizers)
    state = {"model": model_state, "optimizer": optim_state}
    try:
        with single_process_quietly():
            dcp.load(state, checkpoint_id=folder, no_dist=alone or not distributed())
        set_state_dict(model, torch_optimizers, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except (CheckpointException, KeyError, RuntimeError) as e:
        raise ValueError(fileio.reason(e)) from None
    for g, scale in zip(optimizer.param_groups, scales):
        if scale is not None:
            g["lr_scale"] = scale


def read_run_state(folder):
    """The run.pt of a sharded checkpoint: what a checkpoint file holds besides model and optimizer."""
    path = os.path.join(folder, RUN_STATE)
    state = checkpoint.read(path)
    if not isinstance(state, dict) or not {"model_args", "config", "iter_num"} <= set(state):
        raise UserError(f"{path} is not the run state of a sharded checkpoint (it lacks model_args, config or "
                        f"iter_num)")
    return state


def latest(folder):
    """folder if it holds a sharded checkpoint; else the previous one, where a crash fell between
    replace()'s two renames; None if neither is there."""
    for path in (folder, folder + ".previous"):
        if os.path.isfile(os.path.join(path, RUN_STATE)):
            return path
    return None


def replace(tmp, folder):
    """Rename the complete checkpoint tmp to folder. A folder cannot be renamed over another, so the
    previous checkpoint is first moved aside to folder.previous and deleted once the new one is in
    place: a crash at any moment leaves a complete checkpoint that latest() finds."""
    previous = folder + ".previous"
    try:
        fileio.fsync_folder(tmp)
        if os.path.isdir(folder):
            shutil.rmtree(previous, ignore_errors=True)  # left by a crash just after an earlier replacement
            os.rename(folder, previous)
        os.rename(tmp, folder)
        fileio.fsync_folder(os.path.dirname(os.path.abspath(folder)))
    except OSError as e:
        raise UserError(f"could not move {tmp} to {folder} ({fileio.reason(e)}); the previous checkpoint is "
                        f"intact") from None
    shutil.rmtree(previous, ignore_errors=True)


def keep_copy(folder, numbered, keep_last):
    """Keep the sharded checkpoint folder also as `numbered` (ckpt_<iter>.dcp: hard links where the
    filesystem has them, else copies; a save never writes into a checkpoint in place, so the links keep
    this version) and delete all but the newest `keep_last` such copies."""
    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    out_dir = os.path.dirname(os.path.abspath(folder))
    tmp = fileio.temp_name(numbered)
    try:
        fileio.remove_any(tmp)
        shutil.copytree(folder, tmp, copy_function=link_or_copy)
        fileio.remove_any(numbered)  # the same iteration saved again (stopped during its evaluation, resumed)
        os.rename(tmp, numbered)
    except OSError as e:
        fileio.remove_any(tmp)
        raise UserError(f"could not keep {numbered} ({fileio.reason(e)}); {folder} is intact") from None
    copies = sorted(f for f in os.listdir(out_dir) if re.fullmatch(r"ckpt_\d+\.dcp", f))
    for old in copies[:-keep_last]:
        fileio.remove_any(os.path.join(out_dir, old))


def consolidate(folder, path):
    """Write the sharded checkpoint folder as one checkpoint file, path: the very file a DDP run writes
    (checkpoint.RunSaver's, nanoGPT's layout), read back whole by this process alone, without the
    others. It needs the whole model and optimizer state in this process's memory (CPU): 16 bytes a
    parameter with AdamW."""
    from model import GPT
    state = read_run_state(folder)
    c = state["config"]
    config = loading.model_config(checkpoint.model_args(state))
    with torch.device("meta"):  # shapes only: every value is read from the checkpoint
        model = GPT(config, init_weights=False)
    model.to_empty(device="cpu")
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # to_empty made two parameters of the tied pair
    optimizer = optim.configure_optimizers(model, c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]),
                                           optimizer=c.get("optimizer", "adamw"), muon_lr=c.get("muon_lr", 0.02),
                                           muon_momentum=c.get("muon_momentum", 0.95),
                                           muon_ns_steps=c.get("muon_ns_steps", 5))
    try:
        load(folder, model, optimizer, alone=True)
    except ValueError as e:
        raise UserError(f"{folder} does not fit the model and optimizer its {RUN_STATE} describes ({e}); it is "
                        f"damaged or was assembled by hand") from None
    checkpoint.save(dict(model=model.state_dict(), optimizer=optimizer.state_dict(), **state), path)
    return state


class ShardedSaver(checkpoint.RunSaver):
    """checkpoint.RunSaver for parallel=fsdp: save("ckpt.pt") writes the sharded ckpt.dcp, each process
    its own shards, and consolidate() the one-file ckpt.pt from it, when the run's fsdp_consolidate says."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.unconsolidated = []  # names of the files whose sharded checkpoint changed since consolidate()
        # the temporary folder every process writes into is named after the first process's pid
        pid = [os.getpid()]
        if self.dist.enabled:
            torch.distributed.broadcast_object_list(pid, src=0)
        self.pid = pid[0]

    def save(self, names, progress):
        """names: a checkpoint's name or several (best.pt and ckpt.pt of one iteration), each written as
        its sharded folder; progress: training.Progress, the counters that place the run."""
        for name in [names] if isinstance(names, str) else names:
            self.save_one(name, progress)

    def save_one(self, name, progress):
        folder = os.path.join(self.out_dir, folder_of(name))
        tmp = f"{folder}.tmp{self.pid}"
        state = self.run_state(progress)
        failure = None
        try:
            save_shards(tmp, self.model, self.optimizer)
        except UserError as e:
            failure = e
        if self.dist.master and failure is None:
            try:
                checkpoint.save(state, os.path.join(tmp, RUN_STATE))  # last: a folder with run.pt is complete
                replace(tmp, folder)
                if name == "ckpt.pt" and self.keep_last > 0:
                    keep_copy(folder, os.path.join(self.out_dir, f"ckpt_{progress.iter_num:07d}.dcp"), self.keep_last)
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
        fsdp_consolidate=never: the first process reads them back whole, the others wait."""
        failure = None
        if self.dist.master and self.config["fsdp_consolidate"] != "never":
            try:
                for name in self.unconsolidated:
                    consolidate(os.path.join(self.out_dir, folder_of(name)), os.path.join(self.out_dir, name))
            except UserError as e:
                failure = e
        self.unconsolidated = []
        runtime.raise_everywhere(failure, self.dist, self.device)


# -----------------------------------------------------------------------------
# python -m gptkit.sharding --out_dir=OUT: a run folder's ckpt.pt and best.pt from its sharded checkpoints

def main():
    from gptkit import configurator
    from gptkit.configurator import Key
    from gptkit import runs
    cfg = configurator.configure([Key("out_dir", "out", "the run folder of a parallel=fsdp run (holding ckpt.dcp)")],
                                 script="-m gptkit.sharding")
    found = [(name, latest(os.path.join(cfg.out_dir, folder_of(name)))) for name in ("ckpt.pt", "best.pt")]
    if not any(folder for _, folder in found):
        raise UserError(f"{cfg.out_dir} holds no sharded checkpoint (ckpt.dcp), so there is nothing to consolidate; "
                        f"point --out_dir at the folder of a parallel=fsdp run", status=USAGE)
    lock = runs.RunLock(cfg.out_dir).acquire()  # refused while a training run writes the folder
    for name, folder in found:
        if folder:
            state = consolidate(folder, os.path.join(cfg.out_dir, name))
            print(f"wrote {os.path.join(cfg.out_dir, name)} from {folder} (iteration {state['iter_num']})")
    lock.release()


if __name__ == "__main__":
    from gptkit import errors
    errors.install()
    main()

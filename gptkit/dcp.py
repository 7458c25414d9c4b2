"""
Sharded checkpoint folders (torch.distributed.checkpoint): every process writes its shards of the weights
and the optimizer state, any number of processes reads them back (resharding), one process reads them
whole; a folder is replaced atomically and checked for missing or truncated files. Which folder is
which checkpoint of a run, and the run state beside the shards, are checkpoint.py's.

A sharded checkpoint folder holds .metadata (where each piece of each tensor is), one __<rank>_0.distcp
per process that wrote it, and the run state file the store puts there last: a folder that has it is
complete.
"""

import os
import shutil
import warnings
from contextlib import contextmanager

import torch

from gptkit import fileio, optim
from gptkit.errors import UserError

METADATA = ".metadata"


def distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextmanager
def single_process_quietly():
    """torch.distributed.checkpoint warns at every save and load in a single process, which here is
    meant: parallel=fsdp on one process, and reading a checkpoint whole."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def optimizers(optimizer):
    """The torch optimizers inside train.py's optimizer (MuonAdamW steps two)."""
    return (optimizer.muon, optimizer.adamw) if isinstance(optimizer, optim.MuonAdamW) else (optimizer,)


def save(folder, model, optimizer):
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


def load(folder, model, optimizer=None, alone=False):
    """Give model (and optimizer, unless None) the weights (and optimizer state) saved in folder,
    whatever number of processes wrote it and reads it now: each process reads its part of every tensor
    (resharding). alone: this process only, without the others (reading it whole). Raises ValueError
    when the checkpoint does not fit the model or the optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                         set_state_dict)
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        torch_optimizers = optimizers(optimizer)
        scales = [g.get("lr_scale") for g in optimizer.param_groups]  # Muon's: today's muon_lr, not the saved one
        model_state, optim_state = get_state_dict(model, torch_optimizers)
        state = {"model": model_state, "optimizer": optim_state}
    try:
        with single_process_quietly():
            dcp.load(state, checkpoint_id=folder, no_dist=alone or not distributed())
        if optimizer is None:
            set_model_state_dict(model, state["model"])
        else:
            set_state_dict(model, torch_optimizers, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"])
    except (CheckpointException, KeyError, RuntimeError) as e:
        raise ValueError(fileio.reason(e)) from None
    if optimizer is not None:
        for g, scale in zip(optimizer.param_groups, scales):
            if scale is not None:
                g["lr_scale"] = scale


def damage(folder):
    """None if every file folder's .metadata names is there and long enough for the pieces it holds;
    else a sentence naming the first file that is missing or cut short (a copy that failed, a disk error)."""
    from torch.distributed.checkpoint import FileSystemReader
    try:
        metadata = FileSystemReader(folder).read_metadata()
    except Exception as e:  # noqa: BLE001 -- a missing or torn .metadata surfaces as several error types
        return f"{os.path.join(folder, METADATA)} is missing or cannot be read ({fileio.reason(e)})"
    needed = {}  # file -> bytes its pieces reach
    for piece in (metadata.storage_data or {}).values():
        needed[piece.relative_path] = max(needed.get(piece.relative_path, 0), piece.offset + piece.length)
    for name, size in sorted(needed.items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"{path} is missing"
        have = os.path.getsize(path)
        if have < size:
            return f"{path} is truncated ({have:,} of {size:,} bytes)"
    return None


def replace(tmp, folder):
    """Rename the complete checkpoint tmp to folder. A folder cannot be renamed over another, so the
    previous checkpoint is first moved aside to folder.previous and deleted once the new one is in
    place: a crash at any moment leaves a complete checkpoint (runs.complete_sharded finds it)."""
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


def copy(folder, other):
    """Make `other` a second checkpoint with folder's files (hard links where the filesystem has them,
    else copies; a save never writes into a checkpoint in place, so the links keep this version),
    replacing an earlier `other`."""
    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    tmp = fileio.temp_name(other)
    try:
        fileio.remove_any(tmp)
        shutil.copytree(folder, tmp, copy_function=link_or_copy)
        fileio.remove_any(other)  # the same iteration saved again (stopped during its evaluation, resumed)
        os.rename(tmp, other)
    except OSError as e:
        fileio.remove_any(tmp)
        raise UserError(f"could not keep {other} ({fileio.reason(e)}); {folder} is intact") from None

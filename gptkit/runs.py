"""
Run folders: what makes a folder hold a run, one writer per run (a lock), and starting over in one.

A folder holds a run when it has any of the files a training run leaves: checkpoints (ckpt.pt,
best.pt, ckpt_<iter>.pt) or its history (metrics.jsonl). Training refuses to start from scratch in
such a folder unless told to overwrite it, and only one process at a time may write to a run: the
lock is an flock on <out_dir>/train.lock, which the operating system releases whatever way the
holder ends (exit, crash, SIGKILL, power loss), so a stale lock is never mistaken for a live one.
"""

import fcntl
import json
import os
import re
import shutil

from gptkit import fileio
from gptkit.errors import USAGE, UserError

LOCK = "train.lock"
NUMBERED = re.compile(r"ckpt_\d+\.pt$")
# what a run writes, all of which overwrite=True deletes (and nothing else in the folder)
RUN_FILES = ("ckpt.pt", "best.pt", "metrics.jsonl", "config.json", "meta.pkl", "loss.png")
RUN_FOLDERS = ("tb",)


def run_files(folder):
    """The files in folder that show it holds a run (empty when it holds none)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n in ("ckpt.pt", "best.pt", "metrics.jsonl") or NUMBERED.match(n))


def check_out_dir(out_dir):
    """A sentence for an out_dir that can never hold a run (empty, or a file)."""
    if not out_dir.strip():
        raise UserError("out_dir is empty; give the run folder, e.g. --out_dir=out-mine", status=2)
    path = os.path.abspath(out_dir)
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if probe and not os.path.isdir(probe):
        raise UserError(f"out_dir={out_dir} cannot be a folder: {probe} is a file; choose another out_dir", status=2)


class RunLock:
    """The one-writer lock of a run folder, held until release() or the end of the process."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, LOCK)
        self.fd = None

    def acquire(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"could not create {self.path} ({fileio.reason(e)}); set out_dir to a writable "
                            f"folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{os.path.dirname(self.path)} is in use by another training process (PID {holder}); "
                            f"wait for it to end or stop it, or choose another out_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def refuse_to_clobber(out_dir, overwrite=False):
    """Starting a new run where one already is: refused unless overwrite=True asks for exactly that."""
    found = run_files(out_dir)
    if found and not overwrite:
        raise UserError(f"{out_dir} already holds a run ({', '.join(found[:3])}); continue it with "
                        f"--init_from=resume, or start over with --overwrite=True (which deletes it), or choose "
                        f"another out_dir", status=USAGE)


def commit(out_dir, config, meta, new_run, overwrite=False):
    """Make out_dir the run's, under the one-writer lock (returned, held until the process ends): refused
    again if a run started there meanwhile, the earlier run deleted if overwrite asks, config.json
    written, and the run's vocabulary (meta.pkl) beside it, so sampling, chat and export find it."""
    from gptkit import dataset
    lock = RunLock(out_dir).acquire()
    fileio.remove_stale_temps(out_dir)  # left by a process killed mid-write
    if new_run:
        refuse_to_clobber(out_dir, overwrite)
        if overwrite:
            clear_run(out_dir)
    with fileio.atomic_open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)
    if meta is not None:
        dataset.write_meta(meta, out_dir)
    else:
        fileio.remove(os.path.join(out_dir, "meta.pkl"))  # a stale vocabulary must not outlive its run
    return lock


def clear_run(out_dir):
    """Delete what an earlier run wrote in out_dir (overwrite=True); other files are left alone."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if name in RUN_FILES or NUMBERED.match(name):
            fileio.remove(path)
        elif name in RUN_FOLDERS and os.path.isdir(path):
            shutil.rmtree(path)

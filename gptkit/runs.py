"""
Run folders: what a folder holds (a run, the remains of one, or things that are not a run's), one writer
per run (a lock), and starting over in one.

A folder holds a run when it has a checkpoint: ckpt.pt, best.pt, numbered copies, and a parallel=fsdp
run's sharded folders, whose names are declared here, for every script (checkpoint.Store saves, finds
and reads them; this module imports no torch, so plot.py can list runs at once). A new run starts in an empty folder, in
one holding only the remains of a run that never saved (its config.json, meta.pkl, metrics.jsonl: a
start-up that failed), which it replaces, or, when told to overwrite, in one holding a run, whose files
it deletes and nothing else. A folder holding files a run does not write (a Hugging Face model, a
dataset, the project itself) never becomes a run folder. Only one process at a time may write to a run:
the lock is an flock on <out_dir>/train.lock, which the operating system releases whatever way the
holder ends (exit, crash, SIGKILL, power loss), so a stale lock is never mistaken for a live one.
"""

import fcntl
import json
import os
import re
import shutil

from gptkit import fileio
from gptkit.errors import USAGE, UserError

# a run's checkpoints, named here and nowhere else
LATEST = "ckpt.pt"  # the run after its last save: what init_from=resume continues and the scripts read
BEST = "best.pt"  # the run at its best val loss so far
SHARDED = ".dcp"  # a parallel=fsdp run's form of each checkpoint: a folder (ckpt.dcp, best.dcp; dcp.py)
RUN_STATE = "run.pt"  # in each sharded checkpoint: everything but the weights and the optimizer state, written last
NUMBERED = re.compile(r"ckpt_(\d+)\.(pt|dcp)$")  # keep_last's copies of the latest, by iteration


def sharded_name(name):
    """The sharded form of the checkpoint file `name`: ckpt.pt -> ckpt.dcp."""
    return os.path.splitext(name)[0] + SHARDED


def numbered(iter_num, sharded=False):
    """The name of keep_last's copy of the latest checkpoint at iter_num (zero-padded: names sort by iteration)."""
    return f"ckpt_{iter_num:07d}" + (SHARDED if sharded else ".pt")


# checkpoint files and sharded folders (and a sharded folder moved aside while its successor is renamed into place)
RUN_CHECKPOINTS = (LATEST, BEST, *(sharded_name(name) + moved for name in (LATEST, BEST) for moved in ("", ".previous")))
LOCK = "train.lock"
TEMPORARY = re.compile(r".*\.tmp\d+$")
# what a run writes, all of which overwrite=True deletes (and nothing else in the folder)
RUN_FILES = (*RUN_CHECKPOINTS, "metrics.jsonl", "config.json", "meta.pkl", "tokenizer.json", "loss.png",
             LOCK)
RUN_FOLDERS = ("tb",)
# written beside a run by the other scripts (export.py's default folder): not a run's, but not foreign
BESIDE_A_RUN = ("hf",)


def checkpoints(folder):
    """The checkpoints in folder: ckpt.pt, best.pt, numbered copies, sharded ones (empty when it holds none)."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n in RUN_CHECKPOINTS or NUMBERED.match(n))


def complete_sharded(folder):
    """folder if it is a complete sharded checkpoint (its run state is written last); else the previous one,
    where a crash fell between the two renames that replace it; None if neither is there."""
    for path in (folder, folder + ".previous"):
        if os.path.isfile(os.path.join(path, RUN_STATE)):
            return path
    return None


def _our_config(path):
    """Whether path is the config.json a run writes (not, say, a Hugging Face model's)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"out_dir", "init_from", "n_layer", "max_iters"} <= set(config)


def foreign_files(folder):
    """The entries of folder that a run does not write: what makes it no place for a new run."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    ours = set(RUN_FILES) | set(RUN_FOLDERS) | set(BESIDE_A_RUN)
    return sorted(n for n in names if not (n in ours or NUMBERED.match(n) or TEMPORARY.match(n))
                  or (n == "config.json" and not _our_config(os.path.join(folder, n))))


def what_is_there(folder):
    """Its checkpoints, said with the command that uses them."""
    found = checkpoints(folder)
    if complete_sharded(os.path.join(folder, sharded_name(LATEST))):
        return (f"{folder} holds a sharded run ({sharded_name(LATEST)}): continue it with "
                f"--init_from=resume --out_dir={folder}")
    if LATEST in found:
        return f"{folder} holds a run ({LATEST}): continue it with --init_from=resume --out_dir={folder}"
    numbered = sorted((n for n in found if NUMBERED.match(n)), key=lambda n: int(NUMBERED.match(n).group(1)))
    newest = numbered[-1] if numbered else BEST if BEST in found else sharded_name(BEST)
    return (f"{folder} holds {', '.join(found)} but no {LATEST}, the state a run resumes from: start a new run from "
            f"those weights with --init_from={os.path.join(folder, newest)} --out_dir=NEW_FOLDER, or copy "
            f"{newest} to {LATEST if newest.endswith('.pt') else sharded_name(LATEST)} to resume it")


def refuse_to_clobber(out_dir, overwrite=False):
    """A new run where a run already is, or where things that are not a run's are: refused, unless
    overwrite=True asks to replace a run (and only a run). Returns the remains of a run that never saved,
    which the new run replaces (empty when there are none)."""
    foreign = foreign_files(out_dir)
    found = checkpoints(out_dir)
    if found and not overwrite:
        raise UserError(f"{what_is_there(out_dir)}; or start over with --overwrite=True (which deletes it), or "
                        f"choose another out_dir", status=USAGE)
    if foreign and not found:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise UserError(f"out_dir={out_dir} holds files a training run does not write ({shown}): it is not a run "
                        f"folder, and a run would write its config.json and checkpoints among them; choose a new "
                        f"or empty out_dir", status=USAGE)
    if found:
        return []
    try:
        return sorted(n for n in os.listdir(out_dir) if n in RUN_FILES or n in RUN_FOLDERS)
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_output(path, suffix, magic=None, what="file"):
    """One sentence unless path may receive a new `what` written by a command: its name ends in `suffix`,
    and it is either new or a file of the same kind (its first bytes are `magic`) that is not one of a
    run's own files. A command replaces nothing else: a checkpoint, a user's file, a folder."""
    if not path.endswith(suffix):
        raise UserError(f"{path} does not end in {suffix}: give the {what} a name ending in {suffix}", status=USAGE)
    if not os.path.lexists(path):
        return
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isfile(path):
        raise UserError(f"{path} exists and is not a file; choose another name for the {what}", status=USAGE)
    if (name in RUN_FILES or NUMBERED.match(name)) and checkpoints(folder):
        raise UserError(f"{path} is a file of the run in {folder}; write the {what} elsewhere", status=USAGE)
    if magic is not None:
        with open(path, "rb") as f:
            if f.read(len(magic)) != magic:
                raise UserError(f"{path} exists and is not a {what} (it would be replaced); choose another name",
                                status=USAGE)


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
    """The one-writer lock of a folder, held until release() or the end of the process: a run's (train.lock),
    or a dataset's (a prepare script's, gptkit/dataprep.py). `who` and `instead` finish the sentence that
    refuses a second writer: who holds it, and what to do."""

    def __init__(self, out_dir, name=LOCK, who="another training process", instead="choose another out_dir"):
        self.path = os.path.join(out_dir, name)
        self.who, self.instead = who, instead
        self.fd = None

    def acquire(self):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise UserError(f"could not create {self.path} ({fileio.reason(e)}); {self.instead} (a writable "
                            f"folder)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{os.path.dirname(self.path)} is in use by {self.who} (PID {holder}); wait for it to "
                            f"end or stop it, or {self.instead}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # no holder: the file is the same after every finished writer
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


def commit(out_dir, config, meta, new_run, overwrite=False, data_dir=None):
    """Make out_dir the run's, under the one-writer lock (returned, held until the process ends): refused
    again if a run started there meanwhile, the earlier run deleted if overwrite asks, config.json
    written, and the run's vocabulary (meta.pkl, and a trained tokenizer's tokenizer.json from data_dir)
    beside it, so sampling, chat and export find it."""
    from gptkit import dataset
    lock = RunLock(out_dir).acquire()
    fileio.remove_stale_temps(out_dir)  # left by a process killed mid-write
    if new_run:
        remains = refuse_to_clobber(out_dir, overwrite)
        if overwrite or remains:
            clear_run(out_dir)
    with fileio.atomic_open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1, default=str)
    dataset.copy_vocabulary(meta, data_dir, out_dir)  # a stale vocabulary must not outlive its run
    return lock


def clear_run(out_dir):
    """Delete what an earlier run wrote in out_dir (overwrite=True); other files are left alone."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if (name in RUN_FILES and name != LOCK) or NUMBERED.match(name):
            fileio.remove_any(path)  # a file, or a sharded checkpoint (a folder)
        elif name in RUN_FOLDERS and os.path.isdir(path):
            shutil.rmtree(path)


def next_commands(out_dir, prompt_format=None, chat_template=None):
    """What can be run on a finished run, for train.py's last line: a model of generated problems
    (prompt_format, an arithmetic.ProblemFormat) is asked one in their format and never chatted with;
    a chat fine-tune (chat_template) is chatted with first."""
    if prompt_format is not None:
        use = [prompt_format.sample_command(out_dir)]
    else:
        use = [f"python sample.py --out_dir={out_dir}", f"python chat.py --out_dir={out_dir}"]
        if chat_template is not None:
            use.reverse()
    return use + [f"python plot.py {out_dir}", f"python export.py --out_dir={out_dir}",
                  f"more steps: python train.py --init_from=resume --out_dir={out_dir} --max_iters=N"]

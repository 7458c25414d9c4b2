"""
Files written so that a crash never leaves a torn one: every file the tools write goes through atomic_open.

The one durability rule: write a temporary file in the same folder (`<name>.tmp<pid>`), flush it and
fsync it, rename it over the destination, then fsync the folder so the rename itself survives a power
cut. A reader sees the old complete file or the new complete one, never a part. Temporaries left by a
process that died mid-write are never read; remove_stale_temps deletes them.
"""

import os
import shutil
from contextlib import contextmanager

from gptkit.errors import UserError


def reason(e):
    """The first line of an exception's message, for a sentence (an OS error's text without its number)."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def temp_name(path):
    return f"{path}.tmp{os.getpid()}"


@contextmanager
def atomic_open(path, mode="wb", advice="free some disk space or choose a writable folder"):
    """Open a temporary file for writing in path's folder; on leaving the block without an error it
    replaces path. Any OSError (a full disk, a read-only folder) becomes a UserError naming path and
    ending with `advice` (a text, or a function returning one); the temporary is removed whatever happens."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temp_name(path)
    f = None
    try:
        # open() creates the file with the usual permissions (0666 less the umask), unlike mkstemp's 0600
        f = open(tmp, mode)
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except OSError as e:
        _close_and_remove(f, tmp)
        advice = advice() if callable(advice) else advice  # said once the temporary's space is free again
        raise UserError(f"could not write {path} ({reason(e)}); {advice}") from None
    except BaseException:  # Ctrl-C, a UserError from the block: never leave a temporary behind
        _close_and_remove(f, tmp)
        raise
    fsync_folder(folder)


@contextmanager
def atomic_path(path, advice="free some disk space or choose a writable folder"):
    """atomic_open for writers that open the file themselves (gguf's GGUFWriter): yields the
    temporary's name; on leaving the block without an error the file there is fsynced and replaces path."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = temp_name(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        remove(tmp)
        raise UserError(f"could not write {path} ({reason(e)}); {advice}") from None
    except BaseException:
        remove(tmp)
        raise
    fsync_folder(folder)


def _close_and_remove(f, tmp):
    if f is not None:
        try:
            f.close()
        except OSError:
            pass
    remove(tmp)


def publish_folder(tmp, dest, owned=()):
    """Move the finished folder tmp into place as dest, so that readers see the old folder or the new one.
    An earlier dest is replaced, except its entries whose names are not in `owned` (files a user added
    beside what the earlier writer wrote, such as a model card): those are carried into the new folder
    first, as hard links (a copy where links are impossible), so a crash at any moment loses none."""
    if os.path.isdir(dest):
        for name in os.listdir(dest):
            if name in owned or os.path.exists(os.path.join(tmp, name)):
                continue
            source, target = os.path.join(dest, name), os.path.join(tmp, name)
            if os.path.isdir(source) and not os.path.islink(source):
                shutil.copytree(source, target, copy_function=_link_or_copy, symlinks=True)
            else:
                _link_or_copy(source, target)
    old = None
    if os.path.isdir(dest):
        old = f"{dest}.old{os.getpid()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    fsync_folder(os.path.dirname(os.path.abspath(dest)))
    if old is not None:
        shutil.rmtree(old)


def _link_or_copy(source, target):
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def normal_permissions(folder):
    """Give folder and everything in it the permissions a file the user makes gets (0666/0777 less the
    umask): some writers create their files private to the owner (safetensors: -rw-------)."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


def fsync_folder(folder):
    """Make renames in folder durable (some filesystems cannot fsync a folder: then best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def remove(path):
    try:
        os.remove(path)
    except (FileNotFoundError, NotADirectoryError):  # nothing there (a path through a file names nothing)
        pass


def remove_any(path):
    """Delete a file, or a folder (a sharded checkpoint, gptkit/dcp.py), if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        remove(path)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def remove_stale_temps(folder):
    """Delete the temporaries (`<name>.tmp<pid>`) in folder whose writer is gone (SIGKILL, power
    loss): they are never read, and a checkpoint's costs a checkpoint's worth of disk."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        base, _, pid = entry.rpartition(".tmp")
        if base and pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            remove_any(os.path.join(folder, entry))

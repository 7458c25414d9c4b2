"""
The one exception for mistakes a user can fix, and the one place where it becomes a sentence and an exit.

Library code raises UserError and never exits: a caller that can go on (chat.py after a prompt the
vocabulary cannot spell, a test running a script in-process) catches it. Every script calls install()
first; an uncaught UserError then prints `error: <sentence>` on stderr and ends the process with its
status (an ordinary exit: finally blocks and atexit run) instead of a traceback. Nothing here imports torch, so prepare scripts and config errors answer at once.
"""

import os
import signal
import sys

USAGE = 2  # the conventional exit status for bad command-line usage (a wrong key or value)


class UserError(Exception):
    """Something the user can fix, said in one sentence: what was wrong and what to do."""

    def __init__(self, sentence, status=1):
        super().__init__(sentence)
        self.status = status


def first_on_node():
    """True in a single process and in each node's first torchrun process: a node-local problem (a
    missing file on node 2) shows in that node's output, while a one-node run prints it once."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0


def say(text, stream):
    """Print a line on stream, if there is one: a script started with a stream closed (`>&-`, `2>&-`) has
    None in its place, and one whose reader left (`| head`) has a pipe that refuses writes."""
    if stream is None:
        return
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):
        pass


def flush_stdout():
    """Flush what is printed so far, if stdout is there and its reader has not left."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):
        pass


def report(e, stream=None):
    if first_on_node():
        say(f"error: {e}", stream or sys.stderr)


def _hook(kind, value, tb, interrupted="interrupted"):
    # SystemExit raised here ends the process with that status, as if the script had raised it: the
    # interpreter exits normally (atexit functions, non-daemon threads joined, buffers flushed); finally
    # blocks have run already, on the exception's way up to here
    if issubclass(kind, UserError):
        # the real stderr: torch.distributed wraps the excepthook and buffers what it prints, to
        # prefix each line with the rank
        report(value, sys.__stderr__)
        flush_stdout()
        raise ending(value.status)
    if issubclass(kind, BrokenPipeError):  # `python sample.py | head`: the reader left, so stop quietly
        _silence_stdout()
        raise SystemExit(0)
    if issubclass(kind, KeyboardInterrupt):  # Ctrl-C in a script without its own handler
        flush_stdout()
        say(f"\n{interrupted}", sys.__stderr__)
        raise ending(130)
    sys.__excepthook__(kind, value, tb)


def ending(status):
    """SystemExit(status), for a process that is ending. A torchrun worker ignores SIGTERM from here on:
    torchrun sends it to every other worker within 0.1 s of the first one's exit, and a worker ending
    with its own status still has the interpreter's teardown to finish (about half a second with torch
    loaded), which that signal would cut short into a kill."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return SystemExit(status)


def _silence_stdout():
    """Point stdout's file descriptor at /dev/null: what is still buffered for a reader that left would
    fail again as the interpreter flushes it on exit (and turn status 0 into 120)."""
    try:
        fd = sys.stdout.fileno() if sys.stdout is not None else 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def install(interrupted="interrupted"):
    """Set sys.excepthook so that an uncaught UserError ends the script with `error: <sentence>` and its
    status, Ctrl-C with one line (`interrupted`) and status 130, and a reader that left (`| head`) quietly
    with status 0. The exit is an ordinary one (SystemExit), so atexit functions run and non-daemon
    threads finish. Every script calls this on its first lines: a process-wide change, made by the script."""
    sys.excepthook = lambda kind, value, tb: _hook(kind, value, tb, interrupted)

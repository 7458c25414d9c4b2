"""
The one exception for mistakes a user can fix, and the one place where it becomes a sentence and an exit.

Library code raises UserError and never exits: a caller that can go on (chat.py after a prompt the
vocabulary cannot spell, a test running a script in-process) catches it. Every script calls install()
first; an uncaught UserError then prints `error: <sentence>` on stderr and exits with its status
instead of a traceback. Nothing here imports torch, so prepare scripts and config errors answer at once.
"""

import os
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


_before_exit = []


def before_exit(fn):
    """Have fn run just before an immediate exit (an uncaught UserError, Ctrl-C): that exit skips
    finally blocks and atexit, so a script whose background thread writes files registers here what
    must not be left behind (its unfinished temporaries)."""
    _before_exit.append(fn)


def exit_now(status):
    """Leave at once with status, after the before_exit functions (a failing one is skipped)."""
    for fn in _before_exit:
        try:
            fn()
        except Exception:
            pass
    os._exit(status)


_interrupted = "interrupted"


def _hook(kind, value, tb):
    if issubclass(kind, UserError):
        # the real stderr: torch.distributed wraps the excepthook and buffers what it prints, to
        # prefix each line with the rank, and an os._exit below would lose that buffer
        report(value, sys.__stderr__)
        flush_stdout()
        # os._exit (in exit_now) because an excepthook cannot choose the exit status; stdio is flushed
        # above, and what must run after a refused start or a failed save is in before_exit
        exit_now(value.status)
    if issubclass(kind, BrokenPipeError):  # `python sample.py | head`: the reader left, so stop quietly
        os._exit(0)
    if issubclass(kind, KeyboardInterrupt):  # Ctrl-C in a script without its own handler
        flush_stdout()
        say(f"\n{_interrupted}", sys.__stderr__)
        exit_now(130)
    sys.__excepthook__(kind, value, tb)


def install(interrupted="interrupted"):
    """Turn an uncaught UserError into `error: <sentence>` and its exit status, and Ctrl-C into one line
    (`interrupted`) and status 130. Every script calls this first."""
    global _interrupted
    _interrupted = interrupted
    sys.excepthook = _hook

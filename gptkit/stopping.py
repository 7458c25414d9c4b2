"""
Stop requests: SIGTERM (schedulers, preemption), Ctrl-C and a closed output (`python train.py | head`)
become a flag that training checks after each step, so it finishes the step, saves and exits; a second
Ctrl-C quits at once without saving.
"""

import errno
import os
import signal
import sys
import time

from gptkit import errors
from gptkit.errors import UserError

CLOSED_STATUS = 141  # what a shell reports for a program ended by SIGPIPE: the reader of its output left


class OutputGuard:
    """Watches stdout for its reader leaving (`| head -n 25`, EPIPE): from then on what is printed goes to
    stderr, and `closed` is a stop request, so training finishes its step and saves instead of dying in a
    print(). Installed first thing (close() puts stdout back); stdout is flushed at every line, so a
    closed pipe shows at the next line and not 8 KB later."""

    def __init__(self):
        if sys.stdout is None:
            raise UserError("standard output is closed (>&-), so there is nowhere to print the run's progress; "
                            "redirect it to a file or to /dev/null instead")
        self.stdout, self.closed = sys.stdout, False
        sys.stdout = self
        self._guard(getattr(self.stdout, "reconfigure", lambda **kw: None), line_buffering=True)

    def _guard(self, fn, *args, **kwargs):
        if self.closed:
            return None
        try:
            return fn(*args, **kwargs)
        except OSError as e:
            if not isinstance(e, BrokenPipeError) and e.errno != errno.EPIPE:
                raise
            self.closed = True
            # what is still buffered would fail again when the interpreter flushes it on exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stdout.fileno())
            os.close(devnull)
            print("standard output was closed (its reader left): the rest goes here; training stops after this step "
                  "and saves", file=sys.stderr, flush=True)
            return None

    def write(self, text):
        if self.closed:
            return sys.stderr.write(text)
        self._guard(self.stdout.write, text)
        return len(text)

    def flush(self):
        if self.closed:
            sys.stderr.flush()
        self._guard(self.stdout.flush)

    def __getattr__(self, name):
        return getattr(self.stdout, name)

    def close(self):
        if sys.stdout is self:
            sys.stdout = self.stdout


class StopRequests:
    """Installs the SIGTERM and SIGINT handlers of a training run (restored by close()). True once a
    signal came or the output closed; the training loop reads it and every process agrees on it in the
    step's all-reduce. `last_save` is the checkpoint a second Ctrl-C names as what survives."""

    def __init__(self, dist, last_save, output=None):
        self.dist, self.last_save, self.output = dist, last_save, output
        self.requested, self.at = None, 0.0
        self.previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def __bool__(self):
        return self.requested is not None or bool(self.output and self.output.closed)

    def _on_signal(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            # under torchrun one Ctrl-C arrives twice, from the terminal and moments later forwarded by
            # the launcher; only a later press means quit
            if self.dist.enabled and time.monotonic() - self.at < 3.0:
                return
            # raised where the main thread is: a save under way removes its temporary on the way out
            # (fileio.atomic_open), and the process ends as any exit does, finally blocks and atexit included
            if self.dist.master:
                last = (f"{self.last_save} holds the last save" if os.path.exists(self.last_save)
                        else "nothing was saved")
                print(f"\nsecond SIGINT: quitting without saving; {last}", file=sys.stderr, flush=True)
                errors.flush_stdout()
            raise errors.ending(130)
        self.requested, self.at = signum, time.monotonic()
        if self.dist.master:
            print(f"\n{signal.Signals(signum).name} received: finishing this step (or stopping the evaluation) and "
                  f"saving (Ctrl-C again to quit without saving)", flush=True)

    def close(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def require_stdout(what):
    """One sentence when a script was started with its output closed (>&-): nowhere to print."""
    if sys.stdout is None:
        raise UserError(f"standard output is closed (>&-), so there is nowhere to print {what}; redirect it to a "
                        f"file or to /dev/null instead")

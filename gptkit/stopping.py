"""
Stop requests: SIGTERM (schedulers, preemption) and Ctrl-C become a flag that training checks after
each step, so it finishes the step, saves and exits; a second Ctrl-C quits at once without saving.
"""

import os
import signal
import sys
import time

from gptkit import errors


class StopRequests:
    """Installs the SIGTERM and SIGINT handlers of a training run (restored by close()). `requested`
    is set by the first signal; the training loop reads it and every process agrees on it in the
    step's all-reduce. `last_save` is the checkpoint a second Ctrl-C names as what survives."""

    def __init__(self, dist, last_save):
        self.dist, self.last_save = dist, last_save
        self.requested, self.at = None, 0.0
        self.previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def __bool__(self):
        return self.requested is not None

    def _on_signal(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            # under torchrun one Ctrl-C arrives twice, from the terminal and moments later forwarded by
            # the launcher; only a later press means quit
            if self.dist.enabled and time.monotonic() - self.at < 3.0:
                return
            # at once: no atexit hooks (wandb, process groups) that could hang; a save cut short here
            # leaves only a temporary file, removed by the next save
            if self.dist.master:
                last = (f"{self.last_save} holds the last save" if os.path.exists(self.last_save)
                        else "nothing was saved")
                print(f"\nsecond SIGINT: quitting without saving; {last}", file=sys.stderr, flush=True)
                sys.stdout.flush()
            errors.exit_now(130)
        self.requested, self.at = signum, time.monotonic()
        if self.dist.master:
            print(f"\n{signal.Signals(signum).name} received: finishing this step (or stopping the evaluation) and "
                  f"saving (Ctrl-C again to quit without saving)", flush=True)

    def close(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

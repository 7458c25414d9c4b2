"""
Optional training loggers, each with a stand-in that does nothing, so the loop never branches on them:
tqdm's progress bar for an interactive terminal and TensorBoard's event files.

    bar = loggers.progress_bar(total=max_iters, initial=iter_num, enabled=master)
    tb = loggers.tensorboard_logger(cfg.tensorboard_log and master, out_dir, start_iter=iter_num)
    ... each step: bar.update(iter_num, loss); each metrics row: tb.log(row) ...
    bar.close(); tb.close()

tqdm and TensorBoard are imported only when they are used.
"""

import os
import sys

from gptkit.errors import UserError

# -----------------------------------------------------------------------------
# progress bar


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(total, initial=0, enabled=True):
    """tqdm's bar when stdout is an interactive terminal (and enabled, i.e. rank 0); otherwise a
    stand-in, so piped or redirected output keeps its plain log lines only."""
    return ProgressBar(total, initial) if enabled and _isatty(sys.stdout) else NoProgressBar()


class ProgressBar:
    """The bar sits under the log lines: while it is open, sys.stdout goes through tqdm
    (tqdm.contrib.DummyTqdmFile, tqdm's documented recipe), which lifts the bar off the terminal
    for each printed line and puts it back below, so train.py keeps plain print()."""

    def __init__(self, total, initial=0):
        from tqdm import tqdm
        from tqdm.contrib import DummyTqdmFile
        self._stdout = sys.stdout
        self._bar = tqdm(total=total, initial=initial, file=self._stdout, unit="it", dynamic_ncols=True)
        self._redirect = DummyTqdmFile(self._stdout)
        sys.stdout = self._redirect

    def update(self, iter_num, loss=None):
        """Iterations done so far (absolute, as train.py counts them) and the last step's loss."""
        if loss is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)  # shown at the next redraw
        self._bar.update(iter_num - self._bar.n)

    def warn(self, line):
        """A line on stderr, written with the bar lifted off the terminal (stderr bypasses the
        redirection of stdout, and on a terminal both streams share the screen)."""
        with self._bar.external_write_mode(file=self._stdout):
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if sys.stdout is self._redirect:  # unless someone redirected it again since
            sys.stdout = self._stdout
        self._bar.close()


class NoProgressBar:
    def update(self, iter_num, loss=None):
        pass

    def warn(self, line):
        print(line, file=sys.stderr, flush=True)

    def close(self):
        pass


# -----------------------------------------------------------------------------
# TensorBoard


def tensorboard_logger(enabled, out_dir, start_iter=0):
    """TensorBoard writing to out_dir/tb when enabled, else a stand-in. A resumed run passes the
    iteration it resumes from: TensorBoard then hides what the interrupted run logged from there
    on, as train.py rewinds metrics.jsonl."""
    if not enabled:
        return NoTensorBoard()
    return TensorBoard(os.path.join(out_dir, "tb"), purge_step=start_iter if start_iter > 0 else None)


class TensorBoard:
    def __init__(self, log_dir, purge_step=None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("tensorboard_log=True but tensorboard is not installed; pip install tensorboard, "
                              "or leave tensorboard_log off") from None
        # TensorBoard re-reads event files every few seconds; flushing every 10 s (not the writer's
        # default of 120) keeps a live view current, and the writing happens in the writer's own thread
        self.writer = SummaryWriter(log_dir, purge_step=purge_step, flush_secs=10)

    def log(self, row):
        """Every number in a metrics row (None, text and booleans are not scalars) at step row['iter']."""
        for name, value in row.items():
            if name != "iter" and type(value) in (int, float):
                self.writer.add_scalar(name, value, global_step=row["iter"])

    def close(self):
        self.writer.close()


class NoTensorBoard:
    def log(self, row):
        pass

    def close(self):
        pass

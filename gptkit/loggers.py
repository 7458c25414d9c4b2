"""
Where a run's figures go: out_dir/metrics.jsonl, with TensorBoard and Weights & Biases behind the same
call, the printed lines of a step and an evaluation with the run's forecast, and tqdm's progress bar on an
interactive terminal. The optional ones have stand-ins that do nothing, so the loop never branches on them.

    metrics = loggers.MetricsLog(out_dir, start_iter, ...); metrics.log(row); metrics.close()
    log = loggers.StepLog(metrics, progress, ...); each step: log.step(iter_num, result, lr)
    bar = loggers.progress_bar(total=max_iters, initial=iter_num, enabled=master)
    ... each step: bar.update(iter_num, loss) ...; bar.close()

tqdm, TensorBoard and wandb are imported only when they are used.
"""

import contextlib
import json
import os
import statistics
import sys
import time

from gptkit import fileio
from gptkit.errors import UserError

# -----------------------------------------------------------------------------
# metrics.jsonl (+ TensorBoard, wandb)


class MetricsLog:
    """out_dir/metrics.jsonl (one JSON object per line), and TensorBoard and wandb when asked, on the one
    process that writes (`files`; an evaluation alone writes no file). A resumed run first cuts the file
    back to what its checkpoint holds. A failure to write (a full disk) is kept in `failure`, for the
    training loop to raise on every process at the next step's sync, so none is left waiting."""

    def __init__(self, out_dir, start_iter, resumed, last_eval_iter=-1, files=True, tensorboard=False, wandb=None):
        """wandb: None, or dict(project=, name=, config=) to log there too (from any process that asks)."""
        self.out_dir, self.path = out_dir, os.path.join(out_dir, "metrics.jsonl")
        self.files, self.wandb, self.failure = files, None, None
        self.tb = NoTensorBoard()
        if files:
            kept = self._rewind(start_iter, last_eval_iter) if resumed else []
            with fileio.atomic_open(self.path, "w") as f:
                f.writelines(kept)
            # TensorBoard hides what the interrupted run logged from start_iter on, as the rewind does;
            # the evaluation kept at start_iter is written again
            self.tb = tensorboard_logger(tensorboard, out_dir, start_iter=start_iter)
            for line in kept:
                row = json.loads(line)
                if row["iter"] >= start_iter:
                    self.tb.log(row)
        if wandb is not None:
            import wandb as wandb_module
            self.wandb = wandb_module
            wandb_module.init(**wandb)

    def _rewind(self, start_iter, last_eval_iter):
        """The lines of metrics.jsonl the checkpoint accounts for: those iterations after it are about to be
        redone. The evaluation at the resume point stays only if the checkpoint says it was done."""
        kept = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a crash
                    if not isinstance(row, dict) or not isinstance(row.get("iter"), int):
                        continue
                    evaluation = any(k.startswith(("val_", "train_")) for k in row)  # val_loss, val_pass1 ...
                    if row["iter"] < start_iter or (evaluation and row["iter"] == start_iter == last_eval_iter):
                        kept.append(line if line.endswith("\n") else line + "\n")
        return kept

    def log(self, row):
        if self.files and self.failure is None:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            except OSError as e:
                self.failure = UserError(f"could not append to {self.path} ({fileio.reason(e)}); the last checkpoint "
                                         f"in {self.out_dir} is intact: free some disk space, then resume")
            self.tb.log(row)
        if self.wandb is not None:
            self.wandb.log(row, step=row["iter"])

    def close(self):
        self.tb.close()


# -----------------------------------------------------------------------------
# the log line of a step


def eval_line(iter_num, losses, over, improved, summary):
    """train.py's line at an evaluation. losses: evaluate()'s figures (with eval_tasks' scores); summary:
    what the data source adds about its own figures (generated problems: exact match)."""
    return (f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{over}"
            + (" (best)" if improved else "")
            + (f", val {losses['val_bpb']:.4f} bits/byte" if "val_bpb" in losses else "")
            + summary
            + "".join(f"; {k} {v:.4f}" for k, v in losses.items() if k.endswith("_acc_norm")))


class StepLog:
    """After each step: the forecast once the first steps are timed, and every log_interval steps the line
    (iter, loss, lr, ms, tok/s, MFU, ETA) and its metrics row. Time spent in evaluations and saves (inside
    `with log.evaluation():`) is kept out of ms/iter and feeds the forecast. say: print on the first
    process, None on the others (which only time)."""

    def __init__(self, metrics, progress, max_iters, eval_interval, log_interval, tokens_per_iter, flops, peak,
                 world_size, over, scaler, say):
        self.metrics, self.progress, self.say, self.over, self.scaler = metrics, progress, say, over, scaler
        self.max_iters, self.eval_interval, self.log_interval = max_iters, eval_interval, log_interval
        self.tokens_per_iter, self.flops, self.peak, self.world_size = tokens_per_iter, flops, peak, world_size
        self.forecast, self.forecast_said = Forecast(), False
        self.t_log, self.steps, self.overflows = time.perf_counter(), 0, 0

    @contextlib.contextmanager
    def evaluation(self):
        t = time.perf_counter()
        yield
        took = time.perf_counter() - t
        self.t_log += took
        self.forecast.evaluation(took)

    @contextlib.contextmanager
    def timing(self):
        t = time.perf_counter()
        yield
        self.forecast.step(time.perf_counter() - t)

    def step(self, iter_num, result, lr):
        """iter_num: the step just taken (progress has moved past it); result: its training.StepResult."""
        self.steps += 1
        self.overflows += result.overflow  # fp16: updates the loss scaler skipped since the last line
        steps_left = self.max_iters - self.progress.iter_num
        evals_left = evaluations_left(iter_num, self.max_iters, self.eval_interval)
        if self.say is None:
            return
        if not self.forecast_said and len(self.forecast.steps) >= 10 and steps_left >= 10:
            self.say(self.forecast.line(time.perf_counter() - self.progress.started, steps_left, evals_left))
            self.forecast_said = True
        if iter_num % self.log_interval:
            return
        now = time.perf_counter()
        dt = (now - self.t_log) / self.steps
        self.t_log, self.steps = now, 0
        # per device: each process computes its share of the step against one device's peak
        mfu = mfu_of(self.flops, self.tokens_per_iter // self.world_size, dt, self.peak)
        eta = self.forecast.remaining(steps_left, evals_left)
        self.say(step_line(iter_num, result.loss, self.over, lr, dt, self.tokens_per_iter, mfu,
                           dt * steps_left if eta is None else eta, self.overflows, self.scaler))
        self.overflows = 0
        self.metrics.log(dict(iter=iter_num, loss=result.loss, lr=lr, grad_norm=result.grad_norm, ms=dt * 1000,
                              tok_s=self.tokens_per_iter / dt, mfu=mfu, tokens=self.progress.tokens_seen,
                              elapsed_s=self.progress.elapsed()))


def mfu_of(flops_per_token, tokens, dt, peak):
    """Model FLOPs utilisation: the training FLOP/s achieved over the device's peak. None if the peak
    is unknown, or if the figure would exceed 100%, which cannot be true: then the peak is wrong."""
    if not peak or dt <= 0:
        return None
    utilisation = flops_per_token * tokens / dt / peak
    return utilisation if utilisation <= 1.0 else None


def step_line(iter_num, loss, over, lr, dt, tokens_per_iter, mfu, eta, overflows=0, scaler=None):
    """train.py's line every log_interval steps. dt: seconds a step over the interval; eta: seconds left
    (a forecast over recent steps, not this interval's); overflows: fp16 updates the scaler skipped."""
    skipped = (f"; {overflows} step{'s' * (overflows > 1)} skipped by the fp16 loss scaler (inf/NaN gradients), "
               f"scale now {scaler.get_scale():g}" if overflows else "")
    return (f"iter {iter_num}: loss {loss:.4f}{over}, lr {lr:.2e}, {dt * 1000:.1f} ms, "
            f"{tokens_per_iter / dt:,.0f} tok/s, mfu {f'{mfu * 100:.1f}%' if mfu is not None else '-'}, "
            f"eta {eta / 60:.1f} min{skipped}")


def duration(seconds):
    return (f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def evaluations_left(iter_num, max_iters, eval_interval):
    """The evaluations a run does after iteration iter_num's: every eval_interval, and at max_iters."""
    every = len(range(iter_num // eval_interval * eval_interval + eval_interval, max_iters + 1, eval_interval))
    return every + (max_iters > iter_num and max_iters % eval_interval != 0)


class Forecast:
    """What the rest of a run will take, from its own steps and evaluations as they are timed: the median
    of the last `window` steps (a step slowed by a passing hiccup moves it little; a lasting change in
    pace within window/2 steps) and the last evaluation. The first step, which allocates, is not counted."""

    def __init__(self, window=20):
        self.window, self.steps, self.eval_time, self.first = window, [], 0.0, True

    def step(self, seconds):
        if self.first:
            self.first = False
            return
        self.steps = (self.steps + [seconds])[-self.window:]

    def evaluation(self, seconds):
        self.eval_time = seconds

    def step_time(self):
        return statistics.median(self.steps) if self.steps else None

    def remaining(self, steps_left, evals_left):
        """Seconds; None before a step was timed."""
        t = self.step_time()
        return None if t is None else steps_left * t + evals_left * self.eval_time

    def line(self, elapsed, steps_left, evals_left):
        """The forecast, once enough steps were timed."""
        total = elapsed + self.remaining(steps_left, evals_left)
        evals = f", each evaluation ~{duration(self.eval_time)}" if evals_left and self.eval_time else ""
        return (f"expect (from the first {len(self.steps)} steps): each step ~{self.step_time() * 1000:,.1f} ms"
                f"{evals}, the whole run ~{duration(total)}")


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

"""
Loss curves of training runs (read by run_metrics.py) drawn to PNG files with matplotlib, and train.py's
loss.png kept up to date in a background thread.

    run = run_metrics.read_run("out-shakespeare-char-cpu")
    curves.save_png(curves.draw_run(run), "loss.png")          # the standard picture of one run
    curves.save_png(curves.draw_runs([a, b], x="tokens", y="val_loss"), "plot.png")
    picture = curves.LossPicture(out_dir)                       # train.py: out_dir/loss.png, drawn
    picture.refresh(); ...; picture.close()                     # in a background thread

HellaSwag's figures are drawn beside the published GPT-2 and GPT-3 levels.

matplotlib is imported inside the drawing functions, never at import time: train.py pays for it only
in the drawing thread, and plot.py only after its arguments are checked. Figures are built with the
object API on an Agg canvas, so no GUI backend is ever loaded and pyplot's global state is untouched.
"""

import io
import math
import os
import sys
import threading
import time

import numpy as np

from gptkit import fileio
from gptkit.benchmarks import REFERENCE_LEVELS
from gptkit.errors import UserError
from gptkit.run_metrics import EVAL, STEP, MetricsReader, PlotError, summarize

AXES = ("iter", "tokens", "time")
FIGSIZE, DPI = (8, 6), 100  # an 800x600 PNG of about 50 KB: readable on a screen, cheap to redraw


# -----------------------------------------------------------------------------
# smoothing


def ema(values, weight):
    """Exponential moving average with TensorBoard's weight (0: none, 0.99: heavy), debiased so the
    start is not pulled towards zero; a non-finite value leaves the average where it was."""
    out = np.empty(len(values))
    avg = norm = 0.0
    for i, v in enumerate(values.tolist()):  # plain floats: ~10x faster than numpy scalars here
        if math.isfinite(v):
            avg = weight * avg + (1 - weight) * v
            norm = weight * norm + (1 - weight)
        out[i] = avg / norm if norm > 0 else math.nan
    return out


def auto_weight(n_rows):
    # an average over about 2% of the run's rows: a short run and a 600,000-row one look alike, which no
    # fixed weight achieves. None up to 50 rows: an average over even 3 of them visibly lags the raw line
    # where the loss falls fast (the CPU recipe's 30 rows, drawn both ways), and 50 points read as a line.
    span = max(1.0, n_rows / 50)
    return 1.0 - 1.0 / span


# Evaluations are points: joined by a line only when there are this many or more, so that two
# evaluations (at the start and the end of a short run) are not drawn as a trajectory never measured.
DENSE_EVALS = 10


def eval_style(n_points):
    return "o-" if n_points >= DENSE_EVALS else "o"


def plain_log_ticks(axis, text=None):
    """Label a log axis's ticks as plain numbers (2, 3, 0.5; or text(value) such as 200 k), never 4x10^0:
    matplotlib's default writes a range within one decade, a loss's usual range, in scientific notation.
    Minor ticks are labelled where the axis has room: 2 to 6 and 8 within a decade, 2 and 5 within two."""
    from matplotlib.ticker import FuncFormatter
    text = text or (lambda v, pos=None: f"{v:g}")

    def minor(v, pos):
        lo, hi = sorted(axis.get_view_interval())
        decades = math.log10(hi / lo) if lo > 0 else math.inf
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 3) if v > 0 else 0
        shown = (2, 3, 4, 5, 6, 8) if decades <= 1 else (2, 5) if decades <= 2 else ()
        return text(v, pos) if mantissa in shown else ""

    axis.set_major_formatter(FuncFormatter(text))
    axis.set_minor_formatter(FuncFormatter(minor))


# -----------------------------------------------------------------------------
# drawing


def _figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, chosen here for this figure only: no display, no pyplot
    return fig


def draw_levels(ax, metric, values):
    """The published levels of `metric` (benchmarks.REFERENCE_LEVELS) as labelled dashed lines: those
    the values reach and the next one above, so the picture shows what was passed and what is next."""
    levels = sorted(REFERENCE_LEVELS.get(metric, []), key=lambda level: level[1])
    values = np.asarray(values, dtype=np.float64)
    best = np.nanmax(values) if np.isfinite(values).any() else -math.inf
    above = [i for i, (_, v) in enumerate(levels) if v > best]
    for label, value in levels[:above[0] + 1 if above else len(levels)]:
        ax.axhline(value, color="gray", ls="--", lw=0.8)
        ax.text(0.99, value, f"{label}: {value:.3f}", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize="x-small", color="dimgray")


def draw_lr(ax_lr, run):
    """The learning rate of each logged step, in the lower panel that ends a run's picture."""
    lr_its, lr, _ = run.series("lr")
    if len(lr):
        ax_lr.plot(lr_its, lr, color="C2", lw=1.2)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def task_metrics(evals):
    """The evaluation columns holding a multiple-choice set's headline figure, <set>_acc_norm."""
    return [k for k in evals if k.endswith("_acc_norm") and np.isfinite(evals[k]).any()]


def draw_rl_run(run, smooth=None):
    """rl.py's picture: the rollouts' mean reward per step (raw and smoothed) with the held-out pass@1
    (greedy), pass@k and mean reward of each evaluation, the completions' length below, then the
    learning rate."""
    fig = _figure(FIGSIZE)
    ax, ax_len, ax_lr = fig.subplots(3, 1, sharex=True, height_ratios=(3, 1, 1))
    steps, evals = run.steps, run.evals
    for a, name, label in ((ax, "reward", "reward (rollouts)"), (ax_len, "length", "completion tokens (rollouts)")):
        if name in steps:
            its, values = steps["iter"], steps[name]
            weight = auto_weight(len(values)) if smooth is None else smooth
            a.plot(its, values, color="C0", **(dict(alpha=0.35, lw=0.8) if weight > 0 else dict(lw=1.2)), label=label)
            if weight > 0:
                a.plot(its, ema(values, weight), color="C0", lw=1.6, label=f"{label}, EMA {weight:.2f}")
    for name, color, label in (("val_pass1", "C3", "held-out pass@1 (greedy)"), ("val_pass_k", "C1", "held-out pass@k"),
                               ("val_reward", "C2", "held-out mean reward")):
        if name in evals:
            ax.plot(evals["iter"], evals[name], eval_style(len(evals["iter"])), color=color, ms=4.5, lw=1.2,
                    label=label)
    if "val_length" in evals:
        ax_len.plot(evals["iter"], evals["val_length"], eval_style(len(evals["iter"])), color="C2", ms=4.5, lw=1.2,
                    label="held-out")
    draw_lr(ax_lr, run)
    ax.set_ylabel("reward, pass rate")
    ax_len.set_ylabel("tokens")
    for a in (ax, ax_len, ax_lr):
        a.grid(alpha=0.3)
    for a in (ax, ax_len):
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="lower right", fontsize="small")
    best = evals.get("val_pass1", np.zeros(0))
    title = f"{run.name}: {run.iterations()} iterations"
    if np.isfinite(best).any():
        title += f", held-out pass@1 {best[np.isfinite(best)][-1]:.2%} (best {np.nanmax(best):.2%})"
    ax.set_title(title, fontsize="medium")
    return fig


def draw_run(run, smooth=None):
    """The standard picture of one run against iteration: train loss per step (raw and smoothed)
    with the evaluations' train and val loss above, the learning rate below, and between them the
    acc_norm of the multiple-choice sets scored during training (eval_tasks), if any, beside the
    published levels. An RL run (rl.py) gets draw_rl_run's picture."""
    if "reward" in run.steps or "val_pass1" in run.evals:
        return draw_rl_run(run, smooth)
    fig = _figure(FIGSIZE)
    tasks = task_metrics(run.evals)
    if tasks:
        ax, ax_task, ax_lr = fig.subplots(3, 1, sharex=True, height_ratios=(3, 2, 1))
        for i, name in enumerate(tasks):
            ax_task.plot(run.evals["iter"], run.evals[name], "o-", color=f"C{4 + i}", ms=3.5, lw=1.2, label=name)
            draw_levels(ax_task, name, run.evals[name])
        ax_task.set_ylabel("accuracy")
        ax_task.grid(alpha=0.3)
        ax_task.legend(loc="upper left", fontsize="small")
    else:
        ax, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    steps, evals = run.steps, run.evals
    if "loss" in steps:
        its, loss = steps["iter"], steps["loss"]
        weight = auto_weight(len(loss)) if smooth is None else smooth
        faint = dict(alpha=0.35, lw=0.8) if weight > 0 else dict(lw=1.2)  # behind the smoothed line, if any
        ax.plot(its, loss, color="C0", label="train loss (step)", **faint)
        if weight > 0:
            ax.plot(its, ema(loss, weight), color="C0", lw=1.6, label=f"train loss (EMA {weight:.2f})")
        bad = ~np.isfinite(loss)
        if bad.any():  # skipped steps leave gaps in the line; mark where they are
            ax.plot(its[bad], np.zeros(bad.sum()), "x", color="C3", ms=5, clip_on=False,
                    transform=ax.get_xaxis_transform(), label=f"non-finite loss ({bad.sum()})")
    for name, color, label in (("train_loss", "C1", "train loss (eval)"), ("val_loss", "C3", "val loss (eval)")):
        if name in evals:
            ax.plot(evals["iter"], evals[name], eval_style(len(evals["iter"])), color=color, ms=4.5, lw=1.2,
                    label=label)
    draw_lr(ax_lr, run)
    ax.set_ylabel("loss")
    for a in (ax, ax_lr):
        a.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no metrics yet", transform=ax.transAxes, ha="center", va="center", color="gray")
    s = summarize(run)
    title = f"{run.name}: {s['iterations']} iterations"
    if s["best_iter"] is not None:
        title += f", best val loss {s['best_val']:.4f} at {s['best_iter']}"
    ax.set_title(title, fontsize="medium")
    return fig


AXIS_LABEL = {"iter": "iteration", "tokens": "tokens", "time": "wall time"}
# (from this many seconds, divide by, unit): seconds up to 3 minutes, minutes up to 3 hours, then hours
TIME_UNITS = ((3 * 3600, 3600, "h"), (180, 60, "min"), (0, 1, "s"))


def draw_runs(runs, x="iter", y="val_loss", logx=False, logy=False, smooth=None):
    """Several runs on shared axes, one colour each, labelled by run name: metric y against x."""
    if x not in AXES:
        raise PlotError(f"x must be one of {', '.join(AXES)}, not {x!r}")
    series = [(r, *r.series(y, x)) for r in runs]
    if not any(np.isfinite(ys).any() for _, _, ys, _ in series):
        names = sorted(set().union(*(r.metrics() for r in runs)))
        have = ", ".join(names) if names else "none yet"
        raise PlotError(f"no run has a value for y={y}; the metrics in these runs are: {have}")
    if x != "iter" and not any(np.isfinite(xs).any() for _, xs, _, _ in series):
        raise PlotError(f"no run records {'tokens' if x == 'tokens' else 'ms per iteration'} for x={x}; "
                        f"use x=iter")
    scale, unit = 1, ""
    if x == "time":
        longest = max((np.nanmax(xs) for _, xs, _, _ in series if np.isfinite(xs).any()), default=0)
        scale, unit = next((s, u) for limit, s, u in TIME_UNITS if longest >= limit)
    step_rows = [len(ys) for _, _, ys, kind in series if kind == STEP]
    weight = auto_weight(max(step_rows, default=0)) if smooth is None else smooth  # one for all runs
    fig = _figure((8, 5))
    ax = fig.add_subplot()
    for i, (run, xs, ys, kind) in enumerate(series):
        color = f"C{i % 10}"
        xs = xs / scale
        if kind == STEP and weight > 0:
            ax.plot(xs, ys, color=color, alpha=0.25, lw=0.8)  # raw, behind its smoothed line
            ax.plot(xs, ema(ys, weight), color=color, lw=1.6, label=run.name)
        elif kind == STEP:
            ax.plot(xs, ys, color=color, lw=1.2, label=run.name)
        elif kind == EVAL:
            ax.plot(xs, ys, eval_style(len(xs)), color=color, ms=4.5, lw=1.2, label=run.name)
        else:  # this run lacks the metric: keep it in the legend, marked
            ax.plot([], [], color=color, label=f"{run.name} (no {y})")
    if y in REFERENCE_LEVELS:
        draw_levels(ax, y, np.concatenate([ys for _, _, ys, _ in series]))
    x_text = None
    if x == "tokens":
        from matplotlib.ticker import EngFormatter
        x_text = EngFormatter()  # 1.2M, 3G instead of an offset exponent
        ax.xaxis.set_major_formatter(x_text)
    if logx:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis, x_text)
    if logy:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    ax.set_xlabel(AXIS_LABEL[x] + (f" ({unit})" if unit else ""))
    ax.set_ylabel(y + (f" (EMA {weight:.2f})" if weight > 0 and step_rows else ""))
    ax.grid(alpha=0.3, which="both" if logx or logy else "major")
    ax.legend(fontsize="small")
    return fig


def default_name(y, x="iter", logx=False, logy=False, smooth=None):
    """plot.py's file name for a picture: one name per picture the options draw (plot-loss.png,
    plot-loss-logy.png, plot-val_loss-by-tokens.png), so that one picture does not replace another."""
    parts = [y] + ([f"by-{x}"] if x != "iter" else []) + (["logx"] if logx else []) + (["logy"] if logy else [])
    if smooth is not None:
        parts.append(f"smooth{smooth:g}")
    return "plot-" + "-".join(parts) + ".png"


def png_bytes(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write_png(png, path):
    """Write a picture's bytes to path atomically: a reader sees the old picture or the new one, never half."""
    with fileio.atomic_open(path, "wb", advice="give a writable path (plot.py: --out=FILE.png)") as f:
        f.write(png)


def save_png(fig, path):
    """The figure rendered, then written by write_png: its temporary file exists only for the moment of writing."""
    write_png(png_bytes(fig), path)


# -----------------------------------------------------------------------------
# train.py's picture


class LossPicture:
    """out_dir/loss.png kept up to date during a run, off the training step's path.

    refresh() returns at once and has a background thread draw the run as metrics.jsonl holds it
    (requests made while a drawing is under way become one more drawing, not a queue); close() draws
    the final picture and waits for it, at most `timeout` seconds. Nothing raises: the first failure
    prints one warning line through `warn` and the run goes on. With enabled=False (ranks other
    than 0) every method does nothing.

    A run that ends without close() (an error, a second Ctrl-C) does not wait for the thread: it is a
    daemon, and dies with the process. A drawing is rendered in memory and written only if the run
    has not ended meanwhile, so the temporary file of loss.png exists only for the moment of writing."""

    def __init__(self, out_dir, enabled=True, warn=None, timeout=60.0):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "loss.png")
        self.reader = MetricsReader(os.path.join(out_dir, "metrics.jsonl"))
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.timeout = timeout
        self.draw_seconds = []  # each drawing's cost, for measuring it
        self._warned = False
        self._pending = self._closing = False
        self._requested_size = None  # metrics.jsonl's size at the last request
        self._wake = threading.Condition()
        self._thread = None

    def refresh(self):
        self._request(closing=False)

    def close(self):
        """Draw the final picture, unless the last request already covers every metrics row (the
        drawing it started reads the file after the request), and wait for it."""
        if not self.enabled or not self._request(closing=True, unless_current=True):
            return
        self._thread.join(self.timeout)
        if self._thread.is_alive():  # a hung filesystem: the thread is a daemon and dies with the process
            self._fail(f"still drawing after {self.timeout:.0f} s")

    def _metrics_size(self):
        try:
            return os.path.getsize(self.reader.path)
        except OSError:
            return None

    def _request(self, closing, unless_current=False):
        if not self.enabled:
            return False
        size = self._metrics_size()
        with self._wake:
            if self._closing:
                return False
            if not (unless_current and self._thread is not None and size == self._requested_size):
                self._pending = True
            self._requested_size = size
            self._closing = closing
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="loss.png", daemon=True)
                self._thread.start()
            self._wake.notify()
        return True

    def _work(self):
        while True:
            with self._wake:
                while not (self._pending or self._closing):
                    self._wake.wait()
                if not self._pending:
                    return
                self._pending = False
            self._draw()

    def _draw(self):
        try:
            t = time.perf_counter()
            if os.path.exists(self.reader.path):  # no metrics yet is nothing to draw, not a failure
                png = png_bytes(draw_run(self.reader.read()))
                if not threading.main_thread().is_alive():
                    return  # the run ended while this was drawn (an error, a second Ctrl-C): not written
                write_png(png, self.path)
                self.draw_seconds.append(time.perf_counter() - t)
        except Exception as e:  # drawing must never stop a run: say why once, then keep trying quietly
            if isinstance(e, ImportError) and (e.name or "").split(".")[0] == "matplotlib":
                reason = "matplotlib is not installed; pip install matplotlib"
            elif isinstance(e, UserError):  # the file could not be written: its sentence already says why
                reason = str(e)
            else:
                reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line, whatever the message
            self._fail(reason)

    def _fail(self, reason):
        if not self._warned:
            self._warned = True
            self.warn(f"warning: could not draw {self.path} ({reason}); training goes on")

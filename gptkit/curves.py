"""
Loss curves of training runs: metrics.jsonl read into arrays, and drawn to PNG files with matplotlib.

    run = curves.read_run("out-shakespeare-char-cpu")
    curves.save_png(curves.draw_run(run), "loss.png")          # the standard picture of one run
    curves.save_png(curves.draw_runs([a, b], x="tokens", y="val_loss"), "plot.png")
    picture = curves.LossPicture(out_dir)                       # train.py: out_dir/loss.png, drawn
    picture.refresh(); ...; picture.close()                     # in a background thread

metrics.jsonl holds one JSON object per line: step rows (iter, loss, lr, grad_norm, ms, tok_s, mfu,
tokens) and evaluation rows (iter, train_loss, val_loss, train_bpb, val_bpb, lr, elapsed_s, and the
figures of multiple-choice sets such as hellaswag_acc_norm); rl.py's step rows have reward, right and length,
its evaluation rows val_pass1, val_pass_k, val_reward and val_length. A file may be read while train.py appends
to it, after a crash, or after a resume; whatever cannot be read is skipped. HellaSwag's figures are
drawn beside the published GPT-2 and GPT-3 levels.

matplotlib is imported inside the drawing functions, never at import time: train.py pays for it only
in the drawing thread, and plot.py only after its arguments are checked. Figures are built with the
object API on an Agg canvas, so no GUI backend is ever loaded and pyplot's global state is untouched.
"""

import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from gptkit import fileio
from gptkit.benchmarks import REFERENCE_LEVELS
from gptkit.errors import USAGE, UserError

STEP, EVAL = "step", "eval"
AXES = ("iter", "tokens", "time")
FIGSIZE, DPI = (8, 6), 100  # an 800x600 PNG of about 50 KB: readable on a screen, cheap to redraw


class PlotError(UserError):
    """Something a user asked for that cannot be drawn (a usage error: exit status 2)."""

    def __init__(self, sentence):
        super().__init__(sentence, status=USAGE)


# -----------------------------------------------------------------------------
# reading


def _parse(line):
    """One metrics row as (kind, iter, {name: float}), or None for a line that is not a row."""
    try:
        row = json.loads(line)  # json writes NaN and Infinity bare, and reads them back the same way
    except ValueError:  # a line cut short by a crash or still being written; UnicodeDecodeError too
        return None
    it = row.get("iter") if isinstance(row, dict) else None
    if type(it) is not int or it < 0:  # type(), not isinstance(): True is not an iteration
        return None
    values = {}
    for k, v in row.items():
        if v is None:  # e.g. mfu when the device's peak is unknown
            values[k] = math.nan
        elif type(v) in (int, float):
            values[k] = float(v)
    # an evaluation's figures are named for their split: train_loss, val_loss, val_pass1 (rl.py) ...
    kind = EVAL if any(k.startswith(("val_", "train_")) for k in row) else STEP
    return kind, it, values


class _Columns:
    """One kind of row (steps or evaluations) as growing columns, in file order; a repeated
    iteration replaces its earlier row in place."""

    def __init__(self):
        self.iters, self.columns, self.where = [], {}, {}

    def add(self, it, values):
        i = self.where.get(it)
        if i is None:
            i = self.where[it] = len(self.iters)
            self.iters.append(it)
            for column in self.columns.values():
                column.append(math.nan)
        else:
            for column in self.columns.values():
                column[i] = math.nan
        for name, v in values.items():
            if name != "iter":
                if name not in self.columns:
                    self.columns[name] = [math.nan] * len(self.iters)
                self.columns[name][i] = v

    def table(self):
        # train.py writes iterations in order; a file pieced together by hand may not be
        order = np.argsort(np.array(self.iters, dtype=np.int64), kind="stable")
        table = {"iter": np.array(self.iters, dtype=np.int64)[order]}
        for name in sorted(self.columns):
            table[name] = np.array(self.columns[name], dtype=np.float64)[order]
        return table


class MetricsReader:
    """A metrics.jsonl followed as it grows: each read() parses only the lines added since the last
    and keeps the rows as columns, so redrawing a long run after every evaluation neither re-reads
    nor re-assembles its whole history (600,000 rows on a 2-core CPU: 0.25 s a read, against 6 s to
    parse the file again)."""

    def __init__(self, path, name=None):
        self.path = path
        self.name = name if name is not None else os.path.basename(os.path.dirname(os.path.abspath(path)))
        self._kinds = {STEP: _Columns(), EVAL: _Columns()}
        self._offset, self._inode = 0, None

    def read(self):
        """The run as it is on disk now."""
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_ino != self._inode or st.st_size < self._offset:
                # train.py rewrites the file (a new inode) when it resumes: start over
                self._kinds = {STEP: _Columns(), EVAL: _Columns()}
                self._offset, self._inode = 0, st.st_ino
            f.seek(self._offset)
            data = f.read()
        # whole lines only: the text after the last newline may still be being written. It counts if
        # it is a whole JSON object (a row closes only at its last brace): a file that lacks its final
        # newline, or a row whose newline is on its way (then an empty line, skipped).
        done = data.rfind(b"\n") + 1
        lines = data[:done].splitlines()
        if data[done:].strip() and _parse(data[done:]) is not None:
            lines.append(data[done:])
            done = len(data)
        for line in lines:
            parsed = _parse(line)
            if parsed is not None:
                kind, it, values = parsed
                self._kinds[kind].add(it, values)
        self._offset += done
        return Run(self.name, self._kinds[STEP].table(), self._kinds[EVAL].table())


def read_run(folder_or_file, name=None):
    """A run folder (or its metrics.jsonl) read once; the name is the folder as given."""
    path = folder_or_file if os.path.isfile(folder_or_file) else os.path.join(folder_or_file, "metrics.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{folder_or_file} is not a run folder: it has no metrics.jsonl")
    return MetricsReader(path, name if name is not None else os.path.normpath(folder_or_file)).read()


@dataclass
class Run:
    """A run's rows as columns: steps and evals map each metric name to an array over the rows,
    sorted by iteration, NaN where a row lacks the metric."""
    name: str
    steps: dict
    evals: dict

    def metrics(self):
        return sorted((set(self.steps) | set(self.evals)) - {"iter"})

    def iterations(self):
        """Iterations done: one past the last step row, or the last evaluation (which comes after it)."""
        last_step = self.steps["iter"][-1] + 1 if len(self.steps["iter"]) else 0
        last_eval = self.evals["iter"][-1] if len(self.evals["iter"]) else 0
        return int(max(last_step, last_eval))

    def series(self, y, x="iter"):
        """(xs, ys, kind) of metric y over x, from the step rows if they have it (lr is in both)."""
        for kind, table in ((STEP, self.steps), (EVAL, self.evals)):
            if y in table and np.isfinite(table[y]).any():
                break
        else:
            return np.zeros(0), np.zeros(0), None
        its = table["iter"]
        if x == "iter":
            return its.astype(np.float64), table[y], kind
        # a step row's figures are taken after its step; an evaluation at iteration N runs before step N
        done = its + 1 if kind == STEP else its
        return self.along(x, done), table[y], kind

    def along(self, axis, done):
        """Tokens seen, or seconds of training, after `done` iterations (an array)."""
        its = self.steps["iter"]
        if axis == "tokens":
            values = self.steps.get("tokens", np.full(len(its), math.nan))
        elif np.isfinite(self.steps.get("elapsed_s", np.full(len(its), math.nan))).any():
            # wall time since the run started, as train.py logs it on every row (continued across resumes)
            values = self.steps["elapsed_s"]
        else:
            # Runs written before step rows carried elapsed_s: the sum of ms over the iterations each
            # row covers, i.e. training time without evaluations, saves and start-up.
            ms = self.steps.get("ms", np.full(len(its), math.nan))
            covered = np.diff(its, prepend=-1)
            values = np.cumsum(np.nan_to_num(ms) * covered) / 1000.0
            if not np.isfinite(ms).any():
                values[:] = math.nan
        ok = np.isfinite(values)
        p = np.concatenate([[0.0], (its[ok] + 1).astype(np.float64)])
        v = np.concatenate([[0.0], values[ok]])
        done = np.asarray(done, dtype=np.float64)
        out = np.interp(done, p, v)
        beyond = done > p[-1]  # evaluations after the last logged step: continue the last rate
        if len(p) >= 2:
            out[beyond] = v[-1] + (done[beyond] - p[-1]) * (v[-1] - v[-2]) / (p[-1] - p[-2])
        else:
            out[beyond] = math.nan
        return out


def summarize(run):
    """Best and last val loss, iterations, tokens and training seconds of a run; None where unknown
    (a last val loss of NaN is known: the run diverged)."""
    val = run.evals.get("val_loss", np.zeros(0))
    finite = np.isfinite(val)
    n = run.iterations()
    tokens, seconds = (float(run.along(axis, [n])[0]) for axis in ("tokens", "time"))
    return dict(
        best_val=float(val[finite].min()) if finite.any() else None,
        best_iter=int(run.evals["iter"][finite][np.argmin(val[finite])]) if finite.any() else None,
        last_val=float(val[-1]) if len(val) else None,
        iterations=n,
        tokens=tokens if math.isfinite(tokens) else None,
        seconds=seconds if math.isfinite(seconds) else None,
    )


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
    lr_its, lr, _ = run.series("lr")
    if len(lr):
        ax_lr.plot(lr_its, lr, color="C2", lw=1.2)
    ax.set_ylabel("reward, pass rate")
    ax_len.set_ylabel("tokens")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
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
    lr_its, lr, _ = run.series("lr")
    if len(lr):
        ax_lr.plot(lr_its, lr, color="C2", lw=1.2)
    ax.set_ylabel("loss")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("iteration")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
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


def save_png(fig, path):
    """Write the figure to path atomically: a reader sees the old picture or the new one, never half."""
    with fileio.atomic_open(path, "wb", advice="give a writable path (plot.py: --out=FILE.png)") as f:
        fig.savefig(f, format="png", dpi=DPI)


# -----------------------------------------------------------------------------
# train.py's picture


class LossPicture:
    """out_dir/loss.png kept up to date during a run, off the training step's path.

    refresh() returns at once and has a background thread draw the run as metrics.jsonl holds it
    (requests made while a drawing is under way become one more drawing, not a queue); close() draws
    the final picture and waits for it, at most `timeout` seconds. Nothing raises: the first failure
    prints one warning line through `warn` and the run goes on. With enabled=False (ranks other
    than 0) every method does nothing.

    A run that ends without close() (an error, a second Ctrl-C) ends its thread too: the thread is not a
    daemon, so the exiting interpreter waits for the drawing under way, whose temporary file becomes
    loss.png or is removed, and the thread stops once it sees the main thread has ended."""

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
        if self._thread.is_alive():  # a hung filesystem (the one the checkpoints are written to)
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
                self._thread = threading.Thread(target=self._work, name="loss.png")
                self._thread.start()
            self._wake.notify()
        return True

    def _work(self):
        main = threading.main_thread()
        while True:
            with self._wake:
                while not (self._pending or self._closing):
                    # a look at the main thread every half second: once it has ended (the run stopped
                    # without close), nothing more will be asked, and the interpreter waits for this thread
                    if not self._wake.wait(0.5) and not main.is_alive():
                        return
                if not self._pending or not main.is_alive():  # no drawing for a run that has ended
                    return
                self._pending = False
            self._draw()

    def _draw(self):
        try:
            t = time.perf_counter()
            if os.path.exists(self.reader.path):  # no metrics yet is nothing to draw, not a failure
                save_png(draw_run(self.reader.read()), self.path)
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

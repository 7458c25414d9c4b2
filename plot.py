"""
Draw training runs on shared axes and print a table of each run's figures.

    python plot.py out-shakespeare-char-cpu                       # val loss against iteration
    python plot.py out-a out-b --x=tokens --y=loss --logy          # per-step train loss (smoothed past 50 rows)
    python plot.py out-a out-b --x=time --y=tok_s --out=speed.png
    python plot.py out-gpt2 --y=hellaswag_acc_norm                 # beside GPT-2's and GPT-3's levels

Each RUN is a run folder (or its metrics.jsonl); the legend names the runs as given. The picture goes
to --out, by default a name of its own for each picture the options draw (plot-val_loss.png,
plot-loss-by-tokens-logy.png) in the current folder, and its path is printed. Runs may differ in
length, hold NaN rows, still be training, or come from DDP. No display is needed.
"""

import sys

from gptkit import errors

errors.install()  # first: Ctrl-C while the rest loads ends in one line and status 130

from gptkit import configurator  # noqa: E402
from gptkit.configurator import Key  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("x", "iter", "x axis: iter, tokens (seen so far), or time (wall time since the run started)",
        choices=("iter", "tokens", "time")),
    Key("y", "val_loss", "any metric in metrics.jsonl: val_loss, val_bpb, train_loss, loss, lr, grad_norm, ms, tok_s, "
        "mfu, val_accuracy (generated tasks), hellaswag_acc_norm (with GPT-2's and GPT-3's levels), val_pass1, "
        "val_pass_k, val_reward, reward (rl.py), ..."),
    Key("logx", False, "logarithmic x axis"),
    Key("logy", False, "logarithmic y axis"),
    Key("smooth", None, "EMA weight for per-step metrics, 0 (raw) to 0.999 (default: an average over ~2% of "
        "the longest run)", type=float),
    Key("out", "", "the PNG to write (default: plot-<y>[-by-<x>][-logx][-logy][-smooth<w>].png in the current "
        "folder)"),
]
# run folders are positional arguments, which configurator does not take; the rest (--key=value,
# config/file.py) is its business


def is_run(arg):
    return not arg.startswith("-") and not arg.endswith(".py")


run_args = [a for a in sys.argv[1:] if is_run(a)]
cfg = configurator.configure(KEYS, argv=[a for a in sys.argv[1:] if not is_run(a)],
                             script="plot.py RUN [RUN ...]", announce=False)


if not run_args:
    raise UserError("give one or more run folders to draw, e.g. python plot.py out-shakespeare-char-cpu", USAGE)
if cfg.smooth is not None and not 0 <= cfg.smooth < 1:
    raise UserError(f"smooth must be from 0 (raw) up to but not including 1, not {cfg.smooth}", USAGE)

from gptkit import curves, run_metrics, runs  # noqa: E402  (numpy now; matplotlib with the first figure, never torch)

# -----------------------------------------------------------------------------
# read, draw, write
out = cfg.out or curves.default_name(cfg.y, cfg.x, cfg.logx, cfg.logy, cfg.smooth)
runs.check_output(out, ".png", magic=b"\x89PNG", what="PNG picture")  # replaces an earlier picture, nothing else
try:
    runs = [run_metrics.read_run(a) for a in run_args]
    fig = curves.draw_runs(runs, x=cfg.x, y=cfg.y, logx=cfg.logx, logy=cfg.logy, smooth=cfg.smooth)
    curves.save_png(fig, out)
except ImportError as e:
    if (e.name or "").split(".")[0] != "matplotlib":
        raise
    raise UserError("plot.py draws with matplotlib, which is not installed; pip install matplotlib", USAGE) from None
except UserError as e:
    raise UserError(str(e), USAGE) from None  # everything that fails here is about what was typed

# -----------------------------------------------------------------------------
# the table


def duration(seconds):
    if seconds is None:
        return "-"
    if seconds < 180:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


def number(value, fmt):
    return "-" if value is None else format(value, fmt)  # NaN stays visible as nan


table = [("run", "best val", "at iter", "last val", "iterations", "tokens", "train time")]
for run in runs:
    s = run_metrics.summarize(run)
    table.append((run.name, number(s["best_val"], ".4f"), str(s["best_iter"]) if s["best_iter"] is not None else "-",
                  number(s["last_val"], ".4f"), f"{s['iterations']:,}", number(s["tokens"], ",.0f"),
                  duration(s["seconds"])))
widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
for row in table:
    print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
print(f"wrote {out}")

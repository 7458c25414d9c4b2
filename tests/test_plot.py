"""Pictures of training runs: metrics.jsonl read robustly (curves.py), the standard picture and
loss.png's background drawing, plot.py's picture and table, the progress bar and TensorBoard (loggers.py).

The metrics files are written by hand in train.py's format, so every expected number is known. A DDP
run's file is the same format (rank 0 writes it), so the runs here stand for DDP runs too."""

import io
import json
import math
import os
import re
import runpy
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import ROOT, assert_clean_error, run
from gptkit import curves, loggers, run_metrics
from gptkit.errors import UserError

TOKENS_PER_ITER = 768  # the CPU recipe's 12 x 64


def step_row(it, loss, ms=100.0, lr=1e-3, tokens_per_iter=TOKENS_PER_ITER):
    return dict(iter=it, loss=loss, lr=lr, grad_norm=0.5, ms=ms, tok_s=tokens_per_iter / ms * 1000, mfu=None,
                tokens=(it + 1) * tokens_per_iter)


def eval_row(it, val, train=None, elapsed=0.0):
    return dict(iter=it, train_loss=val - 0.05 if train is None else train, val_loss=val, lr=1e-3, elapsed_s=elapsed)


def write_metrics(folder, rows, tail=""):
    """rows as train.py writes them (json.dumps: NaN and Infinity bare), then `tail` unterminated."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write(tail)
    return folder


def a_run(folder, iters, log_interval=1, eval_interval=None, loss=lambda it: 4.0 - it / 100, ms=100.0):
    """train.py's order: the evaluation at N, then step N's row; the final evaluation after the last step."""
    rows = []
    for it in range(iters + 1):
        if eval_interval and (it % eval_interval == 0 or it == iters):
            rows.append(eval_row(it, loss(it) + 0.1, elapsed=it * ms / 1000))
        if it < iters and it % log_interval == 0:
            rows.append(step_row(it, loss(it), ms=ms))
    return write_metrics(folder, rows)


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def assert_png(path, width, height):
    """A whole PNG of the expected pixel size, small, with something drawn on it."""
    image = pytest.importorskip("matplotlib.image")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 200_000, len(data)
    pixels = image.imread(path)
    assert pixels.shape[:2] == (height, width)
    ink = (pixels[..., :3] < 0.9).any(axis=-1).mean()  # share of pixels that are not near-white
    assert 0.01 < ink < 0.5, ink
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]  # no temporary left behind


# -----------------------------------------------------------------------------
# reading


def test_reader_keeps_every_row_it_can_read_and_the_last_of_a_repeated_iteration(tmp_path):
    rows = [step_row(0, 4.0), "[1, 2]", "not json", {"loss": 3.0}, {"iter": "1", "loss": 3.0},
            {"iter": True, "loss": 3.0}, {"iter": -1, "loss": 3.0},
            step_row(1, float("nan")) | {"grad_norm": float("inf")},
            step_row(2, 3.5), step_row(2, 3.25),  # the same iteration twice: the later row counts
            eval_row(2, 3.4)]  # an evaluation shares its iteration with a step row
    folder = tmp_path / "run"
    folder.mkdir()
    with open(folder / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
        f.write('{"iter": 3, "loss": 3.')  # cut short by a crash
    r = run_metrics.read_run(folder)
    assert r.name == str(folder)
    assert r.steps["iter"].tolist() == [0, 1, 2]
    np.testing.assert_array_equal(r.steps["loss"], [4.0, np.nan, 3.25])
    assert r.steps["grad_norm"][1] == np.inf and np.isnan(r.steps["mfu"]).all()
    assert r.evals["iter"].tolist() == [2] and r.evals["val_loss"].tolist() == [3.4]
    assert r.iterations() == 3


def test_reader_follows_a_growing_file_and_starts_over_when_it_is_rewritten(tmp_path):
    path = write_metrics(tmp_path, [step_row(0, 4.0)], tail='{"iter": 1, "lo') / "metrics.jsonl"
    reader = run_metrics.MetricsReader(str(path))
    assert reader.read().steps["iter"].tolist() == [0]
    with open(path, "a") as f:  # the writer finishes its line and adds one
        f.write('ss": 3.9}\n' + json.dumps(step_row(2, 3.8)))  # the last one without its newline yet
    assert reader.read().steps["loss"].tolist() == [4.0, 3.9, 3.8]
    # a resume rewrites the file (train.py rewinds it through a temporary and os.replace)
    write_metrics(tmp_path / "new", [step_row(0, 5.0)])
    os.replace(tmp_path / "new" / "metrics.jsonl", path)
    assert reader.read().steps["loss"].tolist() == [5.0]


def test_a_folder_without_metrics_is_a_sentence(tmp_path):
    with pytest.raises(run_metrics.PlotError, match=r"nope is not a run folder: it has no metrics.jsonl"):
        run_metrics.read_run(str(tmp_path / "nope"))


def test_tokens_and_time_reach_evaluations_after_the_last_logged_step(tmp_path):
    # logged every 10 iterations, the last step row is 50 and the final evaluation is at 60
    r = run_metrics.read_run(a_run(tmp_path, 60, log_interval=10, eval_interval=30, ms=100.0))
    s = run_metrics.summarize(r)
    assert s["iterations"] == 60
    assert s["tokens"] == pytest.approx(60 * TOKENS_PER_ITER)
    assert s["seconds"] == pytest.approx(60 * 0.1)  # 100 ms per iteration
    xs, _, kind = r.series("val_loss", "tokens")
    assert kind == run_metrics.EVAL and xs.tolist() == pytest.approx([0, 30 * TOKENS_PER_ITER, 60 * TOKENS_PER_ITER])
    xs, _, kind = r.series("loss", "time")  # a step row's time is after its step
    assert kind == run_metrics.STEP and xs.tolist() == pytest.approx([0.1 * (it + 1) for it in range(0, 60, 10)])


def test_ema_matches_a_hand_computation():
    # weight 0.5: averages 0.5, 1.25, (NaN leaves it), 2.625 over weights 0.5, 0.75, 0.875
    got = curves.ema(np.array([1.0, 2.0, np.nan, 4.0]), 0.5)
    np.testing.assert_allclose(got, [1.0, 1.25 / 0.75, 1.25 / 0.75, 2.625 / 0.875])
    np.testing.assert_array_equal(curves.ema(np.array([3.0, 1.0]), 0.0), [3.0, 1.0])
    assert np.isnan(curves.ema(np.array([np.nan, 2.0]), 0.9)[0])


# -----------------------------------------------------------------------------
# the standard picture of one run


def test_a_resumed_run_is_drawn_once_per_iteration(tmp_path):
    pytest.importorskip("matplotlib")
    # stopped after iteration 39 and resumed from the checkpoint at 30: train.py rewound the file to
    # before 30 and kept the evaluation at 30; the second process's elapsed_s starts again near 0
    rows = ([step_row(it, 4.0 - it / 100) for it in range(30)] + [eval_row(30, 3.8, elapsed=3.0)]
            + [step_row(it, 3.7 - it / 1000) for it in range(30, 60)] + [eval_row(60, 3.6, elapsed=3.0)])
    rows.insert(45, step_row(40, 9.9))  # an iteration logged twice: the later row is the one drawn
    rows.insert(46, step_row(40, 3.7 - 40 / 1000))
    r = run_metrics.read_run(write_metrics(tmp_path, rows))
    fig = curves.draw_run(r, smooth=0.5)
    ax, ax_lr = fig.axes
    lines = lines_by_label(ax)
    raw = lines["train loss (step)"]
    assert raw.get_xdata().tolist() == list(range(60))
    expected = [4.0 - it / 100 for it in range(30)] + [3.7 - it / 1000 for it in range(30, 60)]
    np.testing.assert_allclose(raw.get_ydata(), expected)
    np.testing.assert_allclose(lines["train loss (EMA 0.50)"].get_ydata(), curves.ema(np.array(expected), 0.5))
    assert lines["val loss (eval)"].get_xdata().tolist() == [30, 60]
    assert lines["val loss (eval)"].get_ydata().tolist() == [3.8, 3.6]
    assert ax_lr.get_lines()[0].get_xdata().tolist() == list(range(60))
    assert run_metrics.summarize(r)["seconds"] == pytest.approx(6.0)  # 60 steps of 100 ms, across the resume
    curves.save_png(fig, tmp_path / "loss.png")
    assert_png(tmp_path / "loss.png", 800, 600)


def test_a_run_with_skipped_steps_and_a_nan_evaluation(tmp_path):
    pytest.importorskip("matplotlib")
    loss = [3.0, 2.9, math.nan, math.inf, 2.7, 2.6, math.nan, 2.5]
    rows = [eval_row(0, 3.1)] + [step_row(i, v) for i, v in enumerate(loss)] + [eval_row(8, math.nan)]
    r = run_metrics.read_run(write_metrics(tmp_path, rows))
    lines = lines_by_label(curves.draw_run(r, smooth=0.6).axes[0])
    np.testing.assert_array_equal(lines["train loss (step)"].get_ydata(), loss)
    assert lines["non-finite loss (3)"].get_xdata().tolist() == [2, 3, 6]
    smoothed = lines["train loss (EMA 0.60)"].get_ydata()
    assert np.isfinite(smoothed).all()  # the skipped steps do not break the smoothed line
    np.testing.assert_allclose(smoothed, curves.ema(np.array(loss), 0.6))
    s = run_metrics.summarize(r)
    assert s["best_val"] == 3.1 and s["best_iter"] == 0 and math.isnan(s["last_val"])
    curves.save_png(curves.draw_run(r), tmp_path / "loss.png")
    assert_png(tmp_path / "loss.png", 800, 600)


@pytest.mark.parametrize("content", ["", '{"iter": 0, "train_loss": 4.2, "val_lo', json.dumps(eval_row(0, 4.2)) + "\n"])
def test_an_empty_or_just_started_run_still_gets_a_picture(tmp_path, content):
    pytest.importorskip("matplotlib")
    (tmp_path / "metrics.jsonl").write_text(content)
    r = run_metrics.read_run(tmp_path)
    fig = curves.draw_run(r)
    texts = [t.get_text() for t in fig.axes[0].texts]
    if content.endswith("\n"):
        assert lines_by_label(fig.axes[0])["val loss (eval)"].get_ydata().tolist() == [4.2]
    else:
        assert texts == ["no metrics yet"] and r.iterations() == 0
    curves.save_png(fig, tmp_path / "loss.png")
    assert_png(tmp_path / "loss.png", 800, 600)


# -----------------------------------------------------------------------------
# several runs


def test_runs_of_different_lengths_share_the_axes(tmp_path):
    pytest.importorskip("matplotlib")
    short = run_metrics.read_run(a_run(tmp_path / "short", 40, eval_interval=20))
    long = run_metrics.read_run(a_run(tmp_path / "long", 100, eval_interval=20, loss=lambda it: 4.2 - it / 80))
    ax = curves.draw_runs([short, long], x="tokens", y="val_loss", logy=True).axes[0]
    lines = lines_by_label(ax)
    assert lines[short.name].get_xdata().tolist() == [it * TOKENS_PER_ITER for it in (0, 20, 40)]
    assert lines[long.name].get_ydata().tolist() == pytest.approx([4.2 - it / 80 + 0.1 for it in range(0, 101, 20)])
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    # a per-step metric: raw behind, the smoothed line carries the run's name
    ax = curves.draw_runs([short, long], x="iter", y="loss", smooth=0.8).axes[0]
    smoothed = lines_by_label(ax)[long.name]
    np.testing.assert_allclose(smoothed.get_ydata(), curves.ema(long.steps["loss"], 0.8))
    assert smoothed.get_xdata().tolist() == list(range(100))
    listed = "elapsed_s, grad_norm, loss, lr, mfu, ms, tok_s, tokens, train_loss, val_loss"
    with pytest.raises(run_metrics.PlotError,
                       match=f"^no run has a value for y=vall_loss; the metrics in these runs are: {listed}$"):
        curves.draw_runs([short, long], y="vall_loss")


def test_plot_py_draws_two_runs_and_prints_their_table_without_importing_torch(tmp_path):
    a_run(tmp_path / "out-a", 40, eval_interval=20)
    rows = [eval_row(0, 4.3), *[step_row(it, 4.0) for it in range(10)], eval_row(10, 3.5), *[
        step_row(it, 3.0) for it in range(10, 20)], eval_row(20, 3.9)]  # best at 10, worse after
    write_metrics(tmp_path / "out-b", rows, tail='{"iter": 20, "loss": 3.')  # still being written
    # import time per module on stderr: the whole list of what plot.py imported
    p = run("plot.py", "out-a", "out-b", "--x=time", "--out=both.png", cwd=tmp_path,
            env={"PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "matplotlib.figure" in imported and not {m for m in imported if m.split(".")[0] == "torch"}
    table = [line.split() for line in p.stdout.splitlines()]
    assert table[0] == ["run", "best", "val", "at", "iter", "last", "val", "iterations", "tokens", "train", "time"]
    assert table[1] == ["out-a", "3.7000", "40", "3.7000", "40", f"{40 * TOKENS_PER_ITER:,}", "4.0", "s"]
    assert table[2] == ["out-b", "3.5000", "10", "3.9000", "20", f"{20 * TOKENS_PER_ITER:,}", "2.0", "s"]
    assert p.stdout.splitlines()[-1] == "wrote both.png"
    assert_png(tmp_path / "both.png", 800, 500)


def test_plot_py_names_what_it_cannot_draw(tmp_path, monkeypatch, capsys):
    a_run(tmp_path / "out-a", 10, eval_interval=5)
    p = run("plot.py", str(tmp_path / "out-a"), str(tmp_path / "typo"), check=False)
    assert_clean_error(p, status=2, words=("typo is not a run folder", "metrics.jsonl"))
    # the rest in-process: plot.py is a script, run as one
    monkeypatch.chdir(tmp_path)

    def plot(*args):  # the UserError plot.py ends with (its excepthook prints it as the sentence)
        monkeypatch.setattr(sys, "argv", ["plot.py", *args])
        with pytest.raises(UserError) as e:
            runpy.run_path(str(ROOT / "plot.py"), run_name="__main__")
        return e.value.status, str(e.value)

    write_metrics(tmp_path / "empty", [])
    code, err = plot("empty")
    assert code == 2 and err == "no run has a value for y=val_loss; the metrics in these runs are: none yet"
    code, err = plot("out-a", "--smooth=1")
    assert code == 2 and err.startswith("smooth must be from 0")
    code, err = plot("--y=loss")
    assert code == 2 and err.startswith("give one or more run folders")
    # a successful run ends without SystemExit and writes the default name
    monkeypatch.setattr(sys, "argv", ["plot.py", "out-a", "--y=lr", "--logx"])
    runpy.run_path(str(ROOT / "plot.py"), run_name="__main__")
    assert capsys.readouterr().out.splitlines()[-1] == "wrote plot-lr-logx.png"
    assert_png(tmp_path / "plot-lr-logx.png", 800, 500)


def test_each_picture_the_options_draw_gets_its_own_default_name():
    names = [curves.default_name(y, x, logx, logy, smooth) for y in ("loss", "val_loss") for x in curves.AXES
             for logx in (False, True) for logy in (False, True) for smooth in (None, 0.0, 0.9)]
    assert len(set(names)) == len(names)
    assert curves.default_name("loss") == "plot-loss.png"
    assert curves.default_name("loss", logy=True) == "plot-loss-logy.png"
    assert curves.default_name("val_loss", "tokens", smooth=0.9) == "plot-val_loss-by-tokens-smooth0.9.png"


def test_evaluations_are_points_and_the_step_line_is_smoothed_past_50_rows(tmp_path):
    pytest.importorskip("matplotlib")
    # the CPU recipe's shape: 300 steps logged every 10 (30 rows), evaluated at the start and the end
    r = run_metrics.read_run(a_run(tmp_path / "short", 300, log_interval=10, eval_interval=300))
    lines = lines_by_label(curves.draw_run(r).axes[0])
    val = lines["val loss (eval)"]
    assert val.get_xdata().tolist() == [0, 300] and val.get_linestyle() == "None" and val.get_marker() == "o"
    assert set(lines) == {"train loss (step)", "train loss (eval)", "val loss (eval)"}  # 30 rows: drawn as they are
    assert lines["train loss (step)"].get_alpha() is None  # a full line, not the faint one behind a smoothed line
    ax = curves.draw_runs([r], y="val_loss").axes[0]
    assert lines_by_label(ax)[r.name].get_linestyle() == "None"
    # evaluations dense enough to be a curve are joined; 51 rows get the smoothed line, an average over ~2%
    r = run_metrics.read_run(a_run(tmp_path / "dense", 510, log_interval=10, eval_interval=50))
    lines = lines_by_label(curves.draw_run(r).axes[0])
    assert len(lines["val loss (eval)"].get_xdata()) == 12 and lines["val loss (eval)"].get_linestyle() == "-"
    np.testing.assert_allclose(lines["train loss (EMA 0.02)"].get_ydata(), curves.ema(r.steps["loss"], 1 - 50 / 51))


def test_log_axes_label_their_ticks_as_plain_numbers(tmp_path):
    pytest.importorskip("matplotlib")
    # a loss from 4.3 to 1.9: within one decade, where matplotlib's default labels read 2x10^0, 3x10^0
    r = run_metrics.read_run(a_run(tmp_path / "run", 240, eval_interval=20, loss=lambda it: 4.2 - it / 100))
    fig = curves.draw_runs([r], x="tokens", y="loss", logx=True, logy=True)
    fig.canvas.draw()
    ax = fig.axes[0]
    ys = [t.get_text() for t in ax.yaxis.get_ticklabels(which="both") if t.get_text()]
    xs = [t.get_text() for t in ax.xaxis.get_ticklabels(which="both") if t.get_text()]
    assert {"2", "3", "4"} <= set(ys), ys
    assert {"1 k", "10 k", "100 k"} <= set(xs) and "200 k" not in xs, xs  # 2.4 decades: the decades only
    assert not [t for t in ys + xs if "times" in t or "^" in t or "e+" in t], (ys, xs)


# -----------------------------------------------------------------------------
# loss.png during a run


def test_refresh_returns_at_once_and_requests_during_a_drawing_become_one(tmp_path, monkeypatch):
    a_run(tmp_path, 10, eval_interval=5)
    started, release, calls = threading.Event(), threading.Event(), []

    def slow_draw(run, smooth=None):
        calls.append(run.iterations())
        started.set()
        release.wait(10)
        raise RuntimeError("not drawn in this test")

    monkeypatch.setattr(curves, "draw_run", slow_draw)
    warnings = []
    picture = curves.LossPicture(str(tmp_path), warn=warnings.append)
    t = time.perf_counter()
    picture.refresh()
    assert started.wait(10)
    for _ in range(3):
        picture.refresh()
    assert time.perf_counter() - t < 0.5 and not release.is_set()
    release.set()
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert calls == [10, 10]  # the drawing under way, then one for the three requests made meanwhile
    picture.close()
    assert calls == [10, 10] and len(warnings) == 1  # no row came since: the last drawing is the final one
    picture.refresh()  # after close: nothing more
    assert calls == [10, 10]


def test_loss_png_is_written_and_closing_waits_for_it(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    a_run(tmp_path, 30, eval_interval=10)
    drawn, draw_run = [], curves.draw_run
    monkeypatch.setattr(curves, "draw_run", lambda run, smooth=None: drawn.append(run.iterations()) or draw_run(run))
    picture = curves.LossPicture(str(tmp_path))
    picture.refresh()
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a row after the last request: the final picture has it
        f.write(json.dumps(step_row(30, 3.5)) + "\n")
    picture.close()
    assert_png(tmp_path / "loss.png", 800, 600)
    assert drawn[-1] == 31 and len(drawn) in (1, 2)  # one drawing if the refresh's had not read the file yet
    drawn.clear()
    current = curves.LossPicture(str(tmp_path))
    current.refresh()
    current.close()  # nothing was added after the refresh: its drawing is the final one, and close waits for it
    assert drawn == [31] and len(current.draw_seconds) == 1
    other_rank = curves.LossPicture(str(a_run(tmp_path / "rank1", 30, eval_interval=10)), enabled=False)
    other_rank.refresh()
    other_rank.close()
    assert other_rank._thread is None and not (tmp_path / "rank1" / "loss.png").exists()


@pytest.mark.parametrize("failure", ["unwritable", "draw raises", "no matplotlib"])
def test_a_failed_drawing_warns_once_and_never_raises(tmp_path, monkeypatch, capsys, failure):
    a_run(tmp_path, 10, eval_interval=5)
    if failure == "unwritable":
        (tmp_path / "loss.png").mkdir()  # os.replace cannot put a file where a folder is
        reason = "Is a directory"
    elif failure == "draw raises":
        monkeypatch.setattr(curves, "draw_run", lambda run, smooth=None: 1 / 0)
        reason = "(ZeroDivisionError: division by zero)"
    else:
        for name in ["matplotlib", *[m for m in sys.modules if m.startswith("matplotlib.")]]:
            monkeypatch.setitem(sys.modules, name, None)  # importing it fails as if it were not installed
        reason = "(matplotlib is not installed; pip install matplotlib)"
    picture = curves.LossPicture(str(tmp_path))
    picture.refresh()
    picture.refresh()
    picture.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"warning: could not draw {tmp_path / 'loss.png'} (") and reason in err[0]
    assert err[0].endswith("); training goes on")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# -----------------------------------------------------------------------------
# progress bar and TensorBoard


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_shows_on_a_terminal_and_lets_log_lines_through_whole(monkeypatch):
    pytest.importorskip("tqdm")
    screen = Terminal()
    monkeypatch.setattr(sys, "stdout", screen)
    bar = loggers.progress_bar(total=50, initial=10)
    assert isinstance(bar, loggers.ProgressBar) and sys.stdout is not screen
    for it in range(11, 51):
        bar.update(it, loss=3.0 - it / 100)
        if it % 20 == 0:
            print(f"iter {it - 1}: loss {3.0 - it / 100:.4f}")
    bar.close()
    assert sys.stdout is screen
    # each line arrives after the bar is wiped with a carriage return: it reads whole on the terminal
    shown = [line.rsplit("\r", 1)[-1] for line in screen.getvalue().split("\n")]
    assert "iter 19: loss 2.8000" in shown and "iter 39: loss 2.6000" in shown
    assert re.search(r"50/50 .*loss 2\.5000\]$", shown[-2]), shown[-2]


def test_without_a_terminal_the_bar_is_a_stand_in_with_the_same_methods(capsys):
    bar = loggers.progress_bar(total=50, enabled=True)  # pytest's captured stdout is no terminal
    assert isinstance(bar, loggers.NoProgressBar)
    assert isinstance(loggers.progress_bar(total=50, enabled=False), loggers.NoProgressBar)
    public = lambda cls: {n for n in vars(cls) if not n.startswith("_")}  # noqa: E731
    assert public(loggers.NoProgressBar) == public(loggers.ProgressBar)
    assert public(loggers.NoTensorBoard) == public(loggers.TensorBoard)
    bar.update(3, loss=1.0)
    bar.warn("warning: something")
    bar.close()
    assert capsys.readouterr() == ("", "warning: something\n")


def test_tensorboard_event_files_hold_the_logged_scalars_and_a_resume_replaces_the_redone_steps(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = loggers.tensorboard_logger(True, str(tmp_path))
    for it in range(6):
        tb.log(step_row(it, 4.0 - it / 10) | {"mfu": None, "note": "text", "flag": True})
    tb.log(eval_row(6, 3.5))
    tb.close()
    tb = loggers.tensorboard_logger(True, str(tmp_path), start_iter=4)  # resumed from iteration 4
    for it in range(4, 6):
        tb.log(step_row(it, 2.0))
    tb.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert tags == {"loss", "lr", "grad_norm", "ms", "tok_s", "tokens", "train_loss", "val_loss", "elapsed_s"}
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [0, 1, 2, 3, 4, 5]  # each step once: 4 and 5 from the resumed run
    assert [e.value for e in loss] == pytest.approx([4.0, 3.9, 3.8, 3.7, 2.0, 2.0])  # stored as float32
    assert [(e.step, e.value) for e in events.Scalars("tokens")][:2] == [(0, TOKENS_PER_ITER), (1, 2 * TOKENS_PER_ITER)]
    assert events.Scalars("val_loss") == []  # the interrupted run's evaluation at 6 is to be redone


def test_tensorboard_missing_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"^tensorboard_log=True but tensorboard is not installed; "
                                                  r"pip install tensorboard, or leave tensorboard_log off$"):
        loggers.tensorboard_logger(True, "out")


def test_the_optional_libraries_are_imported_only_when_used(tmp_path):
    # a fresh interpreter: this one has imported them all by now
    code = (f"import sys\nfrom gptkit import curves, loggers\n"
            f"tb = loggers.tensorboard_logger(False, {str(tmp_path)!r})\n"
            f"tb.log({{'iter': 0, 'loss': 1.0}}); tb.close()\n"
            f"bar = loggers.progress_bar(total=10); bar.update(1, 1.0); bar.close()\n"
            f"picture = curves.LossPicture({str(tmp_path)!r})\n"
            f"heavy = ('torch', 'tensorboard', 'tqdm', 'matplotlib')\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"

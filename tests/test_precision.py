"""The precision and compile paths of train.py on a CPU, each against an eager fp32 run or an
uninterrupted run: torch.compile on and off agree and a run resumes across them (so a compiled model's
checkpoint loads uncompiled and the other way round), torchrun with compile trains like one process,
bf16 autocast trains and resumes exactly, and fp16 skips an overflowing step, says so, and keeps its
loss scale across a resume.

Compiling costs tens of seconds on a CPU the first time (inductor writes and builds C++ kernels) and
seconds afterwards (its on-disk cache), so every compiled run here trains the same model on the same
shapes, and those tests run one after another (serial)."""

import math
import os
import shutil

import pytest
import torch

from conftest import TINY, read_metrics, run
from launcher import run_ranks

ITERS = 8
ENV = {"OMP_NUM_THREADS": "1"}  # the same intra-op thread count in every run compared
# two micro-steps, so the torchrun run's two processes take one each; lr_decay_iters fixed so that a
# run stopped at ITERS // 2 has the schedule of the whole one
COMMON = ["--dataset=play_char", *TINY, "--gradient_accumulation_steps=2", "--eval_iters=2",
          f"--eval_interval={ITERS // 2}", "--warmup_iters=2", f"--lr_decay_iters={ITERS}", "--log_interval=1",
          "--learning_rate=1e-3"]
# compiled kernels sum in another order than eager ones: fp32 rounding, nothing more
TOL = 1e-4
TIMING = {"ms", "tok_s", "mfu", "elapsed_s"}
# inductor builds its CPU kernels with a C++ compiler: without one, compile cannot be tried here
NEEDS_CXX = pytest.mark.skipif(not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")),
                               reason="torch.compile on a CPU needs a C++ compiler (g++ or clang++, or CXX)")


def train(out, *extra, iters=ITERS):
    return run("train.py", *COMMON, f"--out_dir={out}", f"--max_iters={iters}", *extra, env=ENV)


def resume(out, *extra):
    return run("train.py", "--init_from=resume", f"--out_dir={out}", f"--max_iters={ITERS}", *extra, env=ENV)


def steps(out):
    return {r["iter"]: r for r in read_metrics(out) if "loss" in r}


def evals(out):
    return {r["iter"]: r["val_loss"] for r in read_metrics(out) if "val_loss" in r}


def assert_close_runs(ref, out):
    """Every step's loss and gradient norm, every val loss and every final weight within TOL."""
    a, b = steps(ref), steps(out)
    assert sorted(a) == sorted(b) == list(range(ITERS))
    for i in a:
        for k in ("loss", "grad_norm"):
            assert abs(a[i][k] - b[i][k]) <= TOL, f"{k} at iteration {i}: {a[i][k]} vs {b[i][k]}"
    ea, eb = evals(ref), evals(out)
    assert sorted(ea) == sorted(eb) == [0, ITERS // 2, ITERS]
    for i in ea:
        assert abs(ea[i] - eb[i]) <= TOL, f"val loss at {i}: {ea[i]} vs {eb[i]}"
    wa = torch.load(ref / "ckpt.pt", weights_only=True)["model"]
    wb = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys()  # no '_orig_mod.' prefix from the compiled model
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= TOL, k


@pytest.fixture(scope="module")
def eager_run(char_data, tmp_path_factory):
    """The reference: ITERS steps in fp32, eager, one process."""
    out = tmp_path_factory.mktemp("precision") / "eager"
    train(out)
    return out


# -----------------------------------------------------------------------------
# torch.compile

@NEEDS_CXX
@pytest.mark.serial
@pytest.mark.slow
def test_compiled_training_matches_eager_and_resumes_across_compile_on_and_off(eager_run, tmp_path):
    compiled_first, eager_first = tmp_path / "compiled-then-eager", tmp_path / "eager-then-compiled"
    p = train(compiled_first, "--compile=True", iters=ITERS // 2)
    assert "compile on" in p.stdout
    ckpt = torch.load(compiled_first / "ckpt.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])  # the plain model's names
    resume(compiled_first, "--compile=False")  # a compiled run's checkpoint, continued uncompiled
    assert_close_runs(eager_run, compiled_first)

    train(eager_first, iters=ITERS // 2)
    p = resume(eager_first, "--compile=True")  # and an uncompiled one's, continued compiled
    assert "compile on" in p.stdout
    assert_close_runs(eager_run, eager_first)


@NEEDS_CXX
@pytest.mark.serial
@pytest.mark.slow
def test_torchrun_with_compile_trains_like_one_process(eager_run, tmp_path):
    out = tmp_path / "two"
    ranks = run_ranks("train.py", [*COMMON, f"--out_dir={out}", f"--max_iters={ITERS}", "--compile=True"],
                      env=ENV, timeout=600)
    for rank, p in enumerate(ranks):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{p.stderr[-3000:]}"
    assert "2 processes (gloo)" in ranks[0].stdout and "compile on" in ranks[0].stdout
    assert_close_runs(eager_run, out)


# -----------------------------------------------------------------------------
# autocast: bf16, and fp16 with its loss scaler

def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


@pytest.mark.slow
def test_bf16_autocast_trains_and_resumes_exactly(char_data, tmp_path):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    p = train(whole, "--dtype=bfloat16")
    assert "dtype bfloat16 (as asked)" in p.stdout
    train(halves, "--dtype=bfloat16", iters=ITERS // 2)
    resume(halves, "--dtype=bfloat16")  # dtype is the machine's, given again (like device and compile)
    assert without_timing(read_metrics(halves)) == without_timing(read_metrics(whole))
    a = torch.load(whole / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(halves / "ckpt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(a[k].dtype == torch.float32 for k in a)  # autocast: the weights themselves stay fp32
    losses = evals(whole)
    assert losses[ITERS] < losses[0] - 0.05  # it learns, with bf16's 8-bit mantissa in the matmuls


@pytest.mark.slow
def test_fp16_skips_an_overflowing_step_says_so_and_resumes_the_loss_scale(char_data, tmp_path):
    out = tmp_path / "fp16"
    p = train(out, "--dtype=float16", iters=ITERS // 2)
    assert "dtype float16 (as asked)" in p.stdout
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    scaler = ckpt["scaler"]
    assert scaler is not None and scaler["scale"] > 0  # the CPU run has a loss scaler, and saves it
    # A scale at which the scaled gradients overflow fp16 (max 65504): here 2**19 first does, so 2**21
    # overflows at once and a few halvings bring it down. The resumed run must start from it (a fresh
    # scaler starts at 2**16 and would not overflow) and skip those steps, halving it each time.
    huge = 2.0 ** 21
    ckpt["scaler"]["scale"] = huge
    torch.save(ckpt, out / "ckpt.pt")
    p = resume(out, "--dtype=float16")
    lines = [line for line in p.stdout.splitlines() if line.startswith("iter ")]
    skipped = [line for line in lines if "1 step skipped by the fp16 loss scaler" in line]
    assert skipped and lines[0] == skipped[0], p.stdout  # the first resumed step overflows, and says so
    k = len(skipped)
    assert 1 <= k < ITERS // 2  # the scale came down to where steps succeed
    assert f"scale now {huge / 2:g}" in skipped[0]
    rows = steps(out)
    assert not math.isfinite(rows[ITERS // 2]["grad_norm"]) and math.isfinite(rows[ITERS // 2]["loss"])
    assert math.isfinite(rows[ITERS - 1]["grad_norm"])
    final = torch.load(out / "ckpt.pt", weights_only=True)
    assert final["scaler"]["scale"] == huge / 2 ** k  # restored, then halved once per skipped step
    # a skipped step leaves the weights alone, so training goes on: the loss still falls
    assert evals(out)[ITERS] < evals(out)[0]

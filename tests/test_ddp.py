"""torchrun on CPU (gloo): two processes train exactly like one, evaluate like one, stop together on a
signal and resume exactly; a launch that cannot divide the work says so and exits."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY, read_metrics, run

pytestmark = pytest.mark.serial  # torchrun: two processes a test
from gptkit import runtime
from gptkit.errors import UserError

ITERS = 40
# eval_iters=3 splits unevenly over two processes (2 and 1 batches), so the averaging is weighted;
# lr_decay_iters is set so that max_iters changes nothing about the training itself
COMMON = ["--dataset=play_char", *TINY, "--dropout=0.0", "--eval_iters=3", "--eval_interval=1000",
          "--learning_rate=1e-3", "--warmup_iters=4", f"--lr_decay_iters={ITERS}", f"--max_iters={ITERS}",
          "--gradient_accumulation_steps=4"]
TOL = 1e-5
LAUNCH_TIMEOUT = 300  # a loaded 2-core machine takes seconds per interpreter start; a hang takes forever


def torchrun_command(*args, launcher=()):
    # the module rather than the torchrun script, which need not be on PATH
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *launcher,
            str(ROOT / "train.py"), *map(str, args)]


def torchrun(*args):
    p = subprocess.run(torchrun_command(*args), cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                       capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    if p.returncode != 0:
        raise AssertionError(f"torchrun exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\n"
                             f"stderr:\n{p.stderr[-3000:]}")
    return p


def steps(rows):
    return {r["iter"]: r for r in rows if "loss" in r}


def evals(rows):
    return {r["iter"]: r for r in rows if "val_loss" in r}


def assert_close(a, b, what):
    assert abs(a - b) <= TOL, f"{what}: {a} vs {b}"


@pytest.fixture(scope="module")
def two_processes(char_data, tmp_path_factory):
    """The uninterrupted 2-process run every test here compares against."""
    out = tmp_path_factory.mktemp("ddp") / "two"
    p = torchrun(*COMMON, f"--out_dir={out}")
    return out, p


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_the_same_global_batch(two_processes, tmp_path):
    out2, p2 = two_processes
    # gradient_accumulation_steps counts micro-steps over all processes: 4 here is 2 per process, so
    # the single process accumulates twice what each of the two does and both see 4 x 8 sequences
    out1 = tmp_path / "one"
    run("train.py", *COMMON, f"--out_dir={out1}", env={"OMP_NUM_THREADS": "1"})

    assert "2 processes (gloo)" in p2.stdout
    # rank 0 alone logs: one header and one line per iteration, not one per process
    assert p2.stdout.count("tokens per iteration") == 1 and p2.stdout.count("iter 0:") == 1

    one, two = read_metrics(out1), read_metrics(out2)
    assert sorted(steps(two)) == list(range(ITERS)) == sorted(steps(one))
    for i in range(ITERS):
        assert_close(steps(one)[i]["loss"], steps(two)[i]["loss"], f"loss at iteration {i}")
        assert_close(steps(one)[i]["grad_norm"], steps(two)[i]["grad_norm"], f"gradient norm at iteration {i}")
    # evaluation shared over the ranks equals the single process's on the same fixed batches
    assert sorted(evals(two)) == [0, ITERS] == sorted(evals(one))
    for i in (0, ITERS):
        for split in ("train_loss", "val_loss"):
            assert_close(evals(one)[i][split], evals(two)[i][split], f"{split} at evaluation {i}")

    w1 = torch.load(out1 / "ckpt.pt", weights_only=True)
    w2 = torch.load(out2 / "ckpt.pt", weights_only=True)
    assert w1["iter_num"] == w2["iter_num"] == ITERS
    assert len(w2["rng"]) == 2  # every rank's random state, for resume
    assert w1["model"].keys() == w2["model"].keys()
    for k in w1["model"]:
        diff = (w1["model"][k] - w2["model"][k]).abs().max().item()
        assert diff <= TOL, f"{k} differs by {diff}"


# -----------------------------------------------------------------------------
# signals: one coordinated save, a clean exit everywhere, and an exact resume

def worker_pids(launcher_pid):
    """{rank: pid} of the workers torchrun started (Linux /proc)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours
        if f"\nPPid:\t{launcher_pid}\n" not in status:
            continue
        for var in environ:
            if var.startswith(b"RANK="):
                pids[int(var[5:])] = int(entry.name)
    return pids


def start_and_interrupt(out, send, *extra):
    """Start the reference command, wait until it has logged a few iterations, call send(launcher),
    and return the launcher's (returncode, output) once everything has exited."""
    p = subprocess.Popen(torchrun_command(*COMMON, f"--out_dir={out}", *extra), cwd=ROOT,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while time.monotonic() < deadline and p.poll() is None:
            try:
                if any(r.get("iter", 0) >= 2 and "loss" in r for r in read_metrics(out)):
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            time.sleep(0.01)
        assert p.poll() is None, "the run ended before it could be interrupted:\n" + p.communicate()[0][-3000:]
        send(p)
        output, _ = p.communicate(timeout=LAUNCH_TIMEOUT)
        return p.returncode, output
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def stopped_at(output):
    found = re.findall(r"stopped at iteration (\d+) and saved", output)
    assert len(found) == 1, output[-3000:]  # one save, announced once (by rank 0)
    return int(found[0])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through Linux /proc")
def test_sigterm_on_one_rank_stops_every_rank_and_the_resumed_run_matches(two_processes, tmp_path):
    ref, _ = two_processes
    out = tmp_path / "run"

    def signal_rank_1(launcher):
        deadline = time.monotonic() + 30
        while 1 not in (pids := worker_pids(launcher.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(pids[1], signal.SIGTERM)  # rank 0 and the launcher are never told

    status, output = start_and_interrupt(out, signal_rank_1)
    # every worker exited cleanly, or the launcher would report a failure and exit non-zero
    assert status == 0, output[-3000:]
    assert "Traceback" not in output
    k = stopped_at(output)
    assert 2 < k < ITERS, f"the signal landed at iteration {k}; the machine is too slow for this test"
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == k

    p = torchrun(*COMMON, f"--out_dir={out}", "--init_from=resume")
    assert f"resuming from {out / 'ckpt.pt'} at iteration {k}" in p.stdout
    resumed, reference = steps(read_metrics(out)), steps(read_metrics(ref))
    assert sorted(resumed) == list(range(ITERS))
    for i in range(ITERS):
        assert_close(resumed[i]["loss"], reference[i]["loss"], f"loss at iteration {i} (stopped at {k})")
    w = torch.load(out / "ckpt.pt", weights_only=True)["model"]
    w_ref = torch.load(ref / "ckpt.pt", weights_only=True)["model"]
    for name in w_ref:
        assert (w[name] - w_ref[name]).abs().max().item() <= TOL, name


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through Linux /proc")
def test_ctrl_c_under_torchrun_saves_once_and_exits(char_data, tmp_path):
    out = tmp_path / "run"

    def ctrl_c(launcher):
        workers = worker_pids(launcher.pid)
        # a terminal's Ctrl-C reaches the launcher and every worker; the launcher then forwards its
        # own SIGINT to the workers. Send a second copy a little later too, as a slower launcher
        # would: one keypress must not read as the "quit without saving" second press.
        os.killpg(launcher.pid, signal.SIGINT)
        time.sleep(0.05)
        for pid in workers.values():
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass  # already saved and gone

    _, output = start_and_interrupt(out, ctrl_c)
    # torchrun itself exits non-zero after it has been signalled, with its own report; the workers
    # must have finished the step, saved once and exited without a KeyboardInterrupt
    assert "KeyboardInterrupt" not in output, output[-3000:]
    k = stopped_at(output)
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == k
    assert sorted(steps(read_metrics(out))) == list(range(k))


# -----------------------------------------------------------------------------
# launches that cannot work

@pytest.mark.slow
def test_accumulation_that_does_not_divide_among_processes_fails_on_rank_0_without_hanging(char_data, tmp_path):
    logs = tmp_path / "logs"
    args = ["--dataset=play_char", *TINY, "--gradient_accumulation_steps=3", f"--out_dir={tmp_path / 'run'}"]
    # per-rank logs, so what each worker printed can be told apart from the launcher's own report
    p = subprocess.run(torchrun_command(*args, launcher=[f"--log-dir={logs}", "--redirects=3"]),
                       cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert p.returncode != 0
    rank_err = {int(f.parent.name): f.read_text() for f in logs.rglob("stderr.log")}
    assert sorted(rank_err) == [0, 1], list(logs.rglob("*"))
    errors = [line for line in rank_err[0].splitlines() if line.startswith("error:")]
    assert errors == ["error: gradient_accumulation_steps=3 does not divide among 2 processes; "
                      "make it a multiple of 2"], rank_err[0]
    assert "error:" not in rank_err[1] and "Traceback" not in rank_err[0] + rank_err[1]
    assert "exitcode  : 2" in p.stderr  # the workers' status, as the launcher reports it


def test_backend_follows_the_device_and_a_wrong_choice_is_one_sentence():
    assert runtime.pick_backend("cpu") == "gloo"
    assert runtime.pick_backend("cpu", "gloo") == "gloo"
    if torch.distributed.is_nccl_available():
        assert runtime.pick_backend("cuda") == "nccl"
    else:
        with pytest.raises(UserError, match="backend=nccl is not available"):
            runtime.pick_backend("cuda")  # no NCCL in a CPU build: a sentence, not a traceback
    with pytest.raises(UserError, match="backend=nccl"):
        runtime.pick_backend("cpu", "nccl")  # NCCL cannot reduce CPU tensors


def test_more_processes_than_gpus_is_one_sentence(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="--nproc_per_node=2"):
        runtime.init_distributed(runtime.Dist(enabled=True, rank=2, local_rank=2, world_size=3), "cuda", "gloo")


@pytest.mark.slow
def test_a_failed_save_on_rank_0_stops_every_process_with_its_sentence(char_data, tmp_path):
    """Rank 0 alone writes checkpoints. When it cannot (here the disk is "full": files may not grow past
    64 KB, far less than a checkpoint), every process must leave with an exit status, rank 0 with the
    sentence, and none may wait for rank 0 at the next collective."""
    import resource
    logs = tmp_path / "logs"
    args = [*COMMON, "--max_iters=4", "--eval_interval=2", f"--out_dir={tmp_path / 'run'}"]

    def small_files():  # inherited by the launcher's workers; Python ignores SIGXFSZ, so writes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    p = subprocess.run(torchrun_command(*args, launcher=[f"--log-dir={logs}", "--redirects=3"]), cwd=ROOT,
                       capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, preexec_fn=small_files)
    assert p.returncode != 0
    rank_err = {int(f.parent.name): f.read_text() for f in logs.rglob("stderr.log")}
    assert sorted(rank_err) == [0, 1], list(logs.rglob("*"))
    errors = [line for line in rank_err[0].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not write" in errors[0] and "best.pt" in errors[0], rank_err[0]
    assert "Traceback" not in rank_err[0] + rank_err[1] and "error:" not in rank_err[1]
    assert p.stderr.count("exitcode  : 1") >= 1 and "exitcode  : -" not in p.stderr  # exits, not kills
    assert not [f for f in os.listdir(tmp_path / "run") if ".tmp" in f]

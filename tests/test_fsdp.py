"""parallel=fsdp under torchrun on CPU (gloo): processes that each hold 1/N of the model train like one
process (AdamW, Muon, masked losses, hybrid sharding); a sharded run stopped by SIGTERM resumes on the
same or another number of processes like an uninterrupted run; the consolidated ckpt.pt is the file a
DDP run writes and samples the same text; and what cannot work says so in one sentence."""

import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptkit import configurator
from conftest import ROOT, export, read_metrics, run, script
from gptkit import checkpoint, dcp, keys, runs, runtime, sharding
from gptkit.errors import UserError
from test_ddp import (COMMON, ITERS, LAUNCH_TIMEOUT, TOL, assert_close, evals, start_and_interrupt, steps, stopped_at,
                      torchrun, worker_pids)

FSDP = ["--parallel=fsdp"]
# saves at iterations 15, 30 and 40, of which keep_last keeps the last two as numbered copies
SAVES = ["--eval_interval=15", "--keep_last=2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
SERIAL = pytest.mark.serial  # torchrun, or the torchrun run of the module's fixture: one after another


@pytest.fixture(scope="module")
def adamw_runs(char_data, tmp_path_factory):
    """The same AdamW training sharded over two processes, and in one process (parallel=ddp)."""
    root = tmp_path_factory.mktemp("fsdp")
    p = torchrun(*COMMON, *SAVES, *FSDP, f"--out_dir={root / 'sharded'}")
    run("train.py", *COMMON, *SAVES, f"--out_dir={root / 'one'}", env=ONE_THREAD)
    return root / "sharded", root / "one", p.stdout


def assert_same_checkpoint_file(a, b, tol=TOL):
    """The same entries, the same weights and the same optimizer state (to tol) in two checkpoint files."""
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sorted(x) == sorted(y) and x["model_args"] == y["model_args"] and x["iter_num"] == y["iter_num"]
    assert x["model"].keys() == y["model"].keys()
    for k in x["model"]:
        assert (x["model"][k] - y["model"][k]).abs().max().item() <= tol, k
    assert x["optimizer"].keys() == y["optimizer"].keys()
    # AdamW's state dict, or Muon's and AdamW's side by side
    for part in ("muon", "adamw") if "muon" in x["optimizer"] else (None,):
        opt_x, opt_y = (x["optimizer"], y["optimizer"]) if part is None else (x["optimizer"][part],
                                                                               y["optimizer"][part])
        assert opt_x["param_groups"] == opt_y["param_groups"] and opt_x["state"].keys() == opt_y["state"].keys()
        for i, state in opt_x["state"].items():
            for k, v in state.items():
                assert (v - opt_y["state"][i][k]).abs().max().item() <= tol, (part, i, k)


@SERIAL
@pytest.mark.slow
def test_two_sharded_processes_train_like_one_process_and_write_its_checkpoint_file(adamw_runs):
    sharded, one, stdout = adamw_runs
    assert "parallel=fsdp: weights, gradients and optimizer state sharded over 2 processes" in stdout
    a, b = read_metrics(one), read_metrics(sharded)
    assert sorted(steps(a)) == list(range(ITERS)) == sorted(steps(b))
    for i in range(ITERS):
        assert_close(steps(a)[i]["loss"], steps(b)[i]["loss"], f"loss at iteration {i}")
        assert_close(steps(a)[i]["grad_norm"], steps(b)[i]["grad_norm"], f"gradient norm at iteration {i}")
    # eval_iters=3 over two processes: one of them runs a forward pass with no batch of its own
    assert sorted(evals(a)) == [0, 15, 30, ITERS] == sorted(evals(b))
    for i in evals(a):
        assert_close(evals(a)[i]["val_loss"], evals(b)[i]["val_loss"], f"val loss at evaluation {i}")

    # the files sample.py, chat.py and export.py read: consolidated when the run ended
    assert_same_checkpoint_file(one / "ckpt.pt", sharded / "ckpt.pt")
    assert_same_checkpoint_file(one / "best.pt", sharded / "best.pt")
    # the sharded checkpoint: every process wrote its own file, each holding its part of every matrix
    import torch.distributed.checkpoint as dcp
    metadata = dcp.FileSystemReader(str(sharded / "ckpt.dcp")).read_metadata()
    files = {v.relative_path for v in metadata.storage_data.values()}
    assert files == {"__0_0.distcp", "__1_0.distcp"}
    matrices = [k for k, v in metadata.state_dict_metadata.items() if k.startswith("model.") and len(v.size) == 2]
    assert matrices and all(len(metadata.state_dict_metadata[k].chunks) == 2 for k in matrices)
    assert sorted(f.name for f in sharded.glob("ckpt_*.dcp")) == ["ckpt_0000030.dcp", "ckpt_0000040.dcp"]
    assert sorted(f.name for f in sharded.iterdir() if ".tmp" in f.name or ".previous" in f.name) == []


@SERIAL
@pytest.mark.slow
def test_the_consolidated_checkpoint_samples_what_the_one_process_run_samples(adamw_runs, capsys, monkeypatch):
    sharded, one, _ = adamw_runs
    texts = []
    for out in (sharded, one):
        monkeypatch.setattr(sys, "argv", ["sample.py", f"--out_dir={out}", "--num_samples=2", "--max_new_tokens=60",
                                          "--device=cpu"])
        runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and len(texts[0]) > 120


# -----------------------------------------------------------------------------
# a sharded run stopped and resumed

def signal_rank_1(launcher):
    deadline = time.monotonic() + 30
    while 1 not in (pids := worker_pids(launcher.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(pids[1], signal.SIGTERM)  # rank 0 and the launcher are never told


@SERIAL
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through Linux /proc")
def test_a_sharded_muon_run_stopped_by_sigterm_resumes_on_two_processes_and_on_one_like_an_uninterrupted_run(
        char_data, tmp_path):
    """Muon gathers each sharded matrix's update for Newton-Schulz. The reference is one process without
    sharding, so the resumed runs' iterations on two processes also compare sharded Muon with one process."""
    muon = ["--optimizer=muon"]
    ref, two, one = tmp_path / "ref", tmp_path / "two", tmp_path / "one"
    run("train.py", *COMMON, *muon, f"--out_dir={ref}", env=ONE_THREAD)

    status, output = start_and_interrupt(two, signal_rank_1, *FSDP, *muon)
    assert status == 0 and "Traceback" not in output, output[-3000:]
    k = stopped_at(output)
    assert 2 < k < ITERS, f"the signal landed at iteration {k}; the machine is too slow for this test"
    assert f"saved {two / 'ckpt.dcp'}" in output
    assert checkpoint.Store(two).run_state(two / "ckpt.dcp")["iter_num"] == k
    assert torch.load(two / "ckpt.pt", weights_only=True)["iter_num"] == k  # consolidated as the run stopped
    shutil.copytree(two, one)

    # with activation checkpointing, which recomputes each block in the backward pass (a machine setting)
    p = torchrun(*COMMON, *FSDP, *muon, f"--out_dir={two}", "--init_from=resume", "--activation_checkpointing=True")
    assert f"resuming from {two / 'ckpt.dcp'} at iteration {k}" in p.stdout
    # the run's saved settings (parallel=fsdp, muon) come back; one process does not shard
    p = run("train.py", "--init_from=resume", f"--out_dir={one}", env=ONE_THREAD)
    assert "parallel=fsdp on one process shards nothing" in p.stdout
    assert "the checkpoint was written by 2 processes and this run has 1" in p.stdout

    reference = steps(read_metrics(ref))
    for out in (two, one):
        resumed = steps(read_metrics(out))
        assert sorted(resumed) == list(range(ITERS))
        for i in range(ITERS):
            assert_close(resumed[i]["loss"], reference[i]["loss"], f"{out.name}: iteration {i} (stopped at {k})")
        assert_same_checkpoint_file(ref / "ckpt.pt", out / "ckpt.pt")


# -----------------------------------------------------------------------------
# memory, hybrid sharding and resharding, measured inside four processes

@SERIAL
@pytest.mark.slow
def test_each_of_n_processes_holds_a_nth_of_the_weights_gradients_and_optimizer_state(adamw_runs, tmp_path):
    """tests/sharded_worker.py: sharded over 4, and over 2 replicated twice, against one process; the
    two-process run's sharded checkpoint loads into four processes with its consolidated values."""
    sharded, _, _ = adamw_runs
    out = tmp_path / "figures.json"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                        str(ROOT / "tests" / "sharded_worker.py"), str(out), f"--load_run={sharded}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    figures = json.loads(out.read_text())
    one = figures["one_process"]
    for name, n in (("sharded over 4", 4), ("sharded over 2, replicated x2", 2)):
        mesh = figures["meshes"][name]
        for a, b in zip(mesh["losses"] + mesh["grad_norms"], one["losses"] + one["grad_norms"]):
            assert_close(a, b, name)
        # FSDP pads a tensor whose rows do not divide by n: a few rows of the 16-token embedding
        for held in mesh["bytes"]:
            assert 0.97 / n <= held / one["bytes"] <= 1.03 / n, (name, held, one["bytes"])
    assert figures["resharded"] == dict(weights=0.0, optimizer_state=0.0, written_by=2)


# -----------------------------------------------------------------------------
# what cannot work, and the sharded checkpoint's files

@SERIAL
@pytest.mark.slow
def test_a_run_resumes_only_with_the_engine_it_was_saved_by(adamw_runs):
    sharded, one, _ = adamw_runs
    e = script("train.py", "--init_from=resume", f"--out_dir={sharded}", "--parallel=ddp")
    assert "holds a sharded run (parallel=fsdp" in str(e) and "resume it with --parallel=fsdp" in str(e)
    e = script("train.py", "--init_from=resume", f"--out_dir={one}", "--parallel=fsdp")
    assert "a parallel=ddp run's checkpoint" in str(e) and "resume it with --parallel=ddp" in str(e)
    # and with its optimizer: the shards of AdamW's state are no Muon state
    e = script("train.py", "--init_from=resume", f"--out_dir={sharded}", "--optimizer=muon", f"--max_iters={ITERS + 1}")
    assert "holds an optimizer state for optimizer=adamw" in str(e) and "--optimizer=adamw" in str(e)


@SERIAL
@pytest.mark.slow
def test_a_run_with_only_sharded_checkpoints_is_read_whole_and_export_writes_the_same_file(
        adamw_runs, tmp_path, capsys, monkeypatch):
    sharded, _, _ = adamw_runs
    bare = tmp_path / "bare"
    shutil.copytree(sharded, bare)
    for name in ("ckpt.pt", "best.pt"):
        (bare / name).unlink()
    texts = []
    for out in (sharded, bare):  # the sharded checkpoint read whole, in memory: the text of the consolidated file
        monkeypatch.setattr(sys, "argv", ["sample.py", f"--out_dir={out}", "--num_samples=1", "--max_new_tokens=40",
                                          "--device=cpu"])
        runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")
        texts.append(capsys.readouterr())
    assert texts[0].out == texts[1].out and "read from the sharded ckpt.dcp" in texts[1].err
    assert sorted(f.name for f in bare.glob("*.pt")) == []  # nothing was written to the run folder
    export(f"--out_dir={bare}", "--format=pt")
    with pytest.raises(UserError, match="holds no sharded checkpoint"):
        export(f"--out_dir={tmp_path}", "--format=pt")
    assert_same_checkpoint_file(sharded / "ckpt.pt", bare / "ckpt.pt", tol=0.0)
    assert_same_checkpoint_file(sharded / "best.pt", bare / "best.pt", tol=0.0)


def test_hybrid_groups_must_divide_the_processes():
    cfg = configurator.configure(keys.KEYS, ["--parallel=fsdp", "--fsdp_shard_size=3",
                                             "--gradient_accumulation_steps=12"], announce=False)
    keys.check(cfg, world_size=3)
    with pytest.raises(UserError, match="fsdp_shard_size=3 does not divide the 4 processes"):
        keys.check(cfg, world_size=4)


def test_float16_is_refused_before_anything_is_sharded():
    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=16))
    plan = runtime.plan_for("cuda", "float16")  # a plan only: nothing runs on a GPU
    with pytest.raises(UserError, match="parallel=fsdp does not train in float16"):
        sharding.place(model, "fsdp", 0, False, runtime.Dist(enabled=True, world_size=2), plan)


def test_a_crash_between_the_two_renames_leaves_the_previous_checkpoint_found(tmp_path):
    def checkpoint_folder(path, iteration):
        path.mkdir()
        torch.save(dict(iter_num=iteration), path / runs.RUN_STATE)
        return path

    folder = tmp_path / "ckpt.dcp"
    assert runs.complete_sharded(str(folder)) is None
    checkpoint_folder(folder, 1)
    dcp.replace(str(checkpoint_folder(tmp_path / "ckpt.dcp.tmp1", 2)), str(folder))
    assert runs.complete_sharded(str(folder)) == str(folder) and sorted(os.listdir(tmp_path)) == ["ckpt.dcp"]
    assert torch.load(folder / runs.RUN_STATE)["iter_num"] == 2
    os.rename(folder, tmp_path / "ckpt.dcp.previous")  # the first rename, then the crash
    assert checkpoint.Store(tmp_path).sharded("ckpt.pt") == str(tmp_path / "ckpt.dcp.previous")
    dcp.replace(str(checkpoint_folder(tmp_path / "ckpt.dcp.tmp1", 3)), str(folder))  # the next save
    assert sorted(os.listdir(tmp_path)) == ["ckpt.dcp"] and torch.load(folder / runs.RUN_STATE)["iter_num"] == 3


def test_activation_checkpointing_gives_the_same_losses_gradients_and_dropout():
    from model import GPT, GPTConfig

    def loss_and_grads(checkpointed):
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=16, dropout=0.2))
        if checkpointed:
            sharding.checkpoint_blocks(model)
        x = torch.randint(0, 16, (4, 8))
        _, loss = model(x, x)
        loss.backward()
        after = torch.rand(1)  # the random stream goes on as without recomputation
        return loss, {n: p.grad for n, p in model.named_parameters()}, after

    (a, ga, ra), (b, gb, rb) = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(a, b) and torch.equal(ra, rb) and ga.keys() == gb.keys()
    assert all(torch.equal(ga[n], gb[n]) for n in ga)


def test_a_model_that_fits_only_when_sharded_is_refused_only_without_sharding(monkeypatch):
    from model import GPTConfig
    config = GPTConfig(n_layer=4, n_head=4, n_embd=256, vocab_size=1024)  # 3.7M parameters: 59 MB to train
    monkeypatch.setattr(runtime, "available_memory", lambda device: (40e6, "free"))
    with pytest.raises(UserError, match="would fit at this width"):
        runtime.check_fits(config, "cuda", "this model")
    runtime.check_fits(config, "cuda", "this model", shards=2)

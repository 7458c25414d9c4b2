"""train.py stopped and resumed: a SIGTERM'd or SIGKILL'd run continues bit for bit like an
uninterrupted one (the reference), and the non-finite guard, keep_last, nanoGPT checkpoints and a
second Ctrl-C behave as docs/checkpoints.md says."""

import hashlib
import math
import os
import random
import shutil
import signal
import subprocess
import time

import pytest
import torch

import conftest
from conftest import TINY, assert_clean_error, nanogpt_checkpoint, read_metrics, run
from gptkit.errors import UserError

# one intra-op thread: much faster for a tiny model on a busy machine, and the same in every run compared
ENV = {"OMP_NUM_THREADS": "1"}
# dropout and gradient accumulation on, so both the random state and the micro-step schedule must resume
EXACT = ["--dataset=play_char", *TINY, "--dropout=0.1", "--gradient_accumulation_steps=3",
         "--eval_interval=10", "--eval_iters=2", "--learning_rate=3e-3", "--warmup_iters=5",
         "--lr_decay_iters=80", "--log_interval=1"]
TIMING = {"ms", "tok_s", "mfu", "elapsed_s"}  # wall-clock figures, the only ones allowed to differ


def start(*args):
    return conftest.start("train.py", *args, env=ENV)


def wait_for_line(p, prefix, timeout=300):
    """Read p's stdout until a line starts with prefix (no fixed sleeps: the machine may be slow)."""
    deadline = time.monotonic() + timeout
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return seen
        assert time.monotonic() < deadline, f"no line {prefix!r} within {timeout} s:\n{''.join(seen[-20:])}"
    raise AssertionError(f"train.py ended before printing {prefix!r}:\n{''.join(seen[-20:])}\n{p.stderr.read()}")


def finish(p, timeout=300):
    out, err = p.communicate(timeout=timeout)
    return out, err


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same(a, b, where="checkpoint"):
    """Exact (bitwise) equality of two checkpoint trees."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def load(path):
    return torch.load(path, weights_only=True)


def assert_resumed_equals_reference(ref_dir, out_dir, machine_keys=()):
    ref, got = read_metrics(ref_dir), read_metrics(out_dir)
    assert without_timing(got) == without_timing(ref)  # every loss, val loss, lr, grad norm, bitwise
    a, b = load(ref_dir / "ckpt.pt"), load(out_dir / "ckpt.pt")
    a.pop("elapsed_s"), b.pop("elapsed_s")  # wall time
    for k in ("init_from", "out_dir", *machine_keys):  # how and where each was started, not what it trained
        a["config"].pop(k), b["config"].pop(k)
    # weights, optimizer, RNG, tokens seen, best val loss...: the whole saved state, not just weights
    assert_same(a, b)
    assert_same(load(ref_dir / "best.pt")["model"], load(out_dir / "best.pt")["model"], "best.pt")


@pytest.mark.serial
@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(char_data, tmp_path):
    K = 60
    ref, out = tmp_path / "ref", tmp_path / "run"
    run("train.py", *EXACT, f"--max_iters={K}", f"--out_dir={ref}", env=ENV)

    p = start(*EXACT, f"--max_iters={K}", f"--out_dir={out}")
    wait_for_line(p, "iter 3:")
    p.send_signal(signal.SIGTERM)
    stdout, stderr = finish(p)
    assert p.returncode == 0, stderr
    assert "SIGTERM received" in stdout and "--init_from=resume" in stdout, stdout
    stopped = load(out / "ckpt.pt")["iter_num"]
    assert 4 <= stopped < K, f"the run stopped at {stopped}; the signal came too late to test a resume"
    assert [r["iter"] for r in read_metrics(out) if "loss" in r] == list(range(stopped))

    p = run("train.py", *EXACT, f"--max_iters={K}", f"--out_dir={out}", "--init_from=resume", env=ENV)
    assert f"resuming from {out / 'ckpt.pt'} at iteration {stopped}" in p.stdout
    assert "note:" not in p.stdout  # a checkpoint of ours restores everything
    assert_resumed_equals_reference(ref, out)


@pytest.mark.serial
@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches(char_data, tmp_path):
    """Saving every iteration and killed without warning: each time the run resumes from what is
    on disk (a cut-short metrics line, half-written temporaries) and still ends like the reference."""
    K = 16
    common = [*EXACT, f"--max_iters={K}", "--eval_interval=1", "--eval_iters=1", "--keep_last=2"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    run("train.py", *common, f"--out_dir={ref}", env=ENV)
    rng = random.Random(0)
    init = "scratch"
    for attempt in range(2):
        p = start(*common, f"--out_dir={out}", f"--init_from={init}")
        wait_for_line(p, "eval ")
        wait_for_line(p, "iter ")  # past the startup (and the resume) so a checkpoint exists
        time.sleep(rng.uniform(0, 0.3))
        p.kill()
        finish(p)
        if p.returncode == 0:
            break  # it finished before the kill landed; the resume below is then a no-op
        assert p.returncode == -signal.SIGKILL
        ckpt = load(out / "ckpt.pt")  # loadable after every kill
        if ckpt["iter_num"] == K:
            break  # the kill landed after the final save, before the exit: nothing left to resume
        init = "resume"
    run("train.py", *common, f"--out_dir={out}", "--init_from=resume", env=ENV)
    assert_resumed_equals_reference(ref, out)
    assert not [f for f in os.listdir(out) if ".tmp" in f], os.listdir(out)
    assert sorted(f for f in os.listdir(out) if f.startswith("ckpt_")) == [f"ckpt_{K - 1:07d}.pt", f"ckpt_{K:07d}.pt"]


def test_a_finished_run_killed_while_drawing_is_tidied_by_the_next_command(char_run, tmp_path):
    """Killed after its last save, a run can leave a half-drawn loss.png.tmp<pid>; resuming the finished
    run has nothing to train, and removes that temporary (its writer is gone), nothing else."""
    out = tmp_path / "run"
    shutil.copytree(char_run, out)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no process holds now
    (out / f"loss.png.tmp{dead.pid}").write_bytes(b"half a png")
    before = sorted(os.listdir(out))
    p = run("train.py", "--init_from=resume", f"--out_dir={out}")
    assert "nothing to do" in p.stdout
    assert sorted(os.listdir(out)) == [f for f in before if ".tmp" not in f]


@pytest.mark.serial
@pytest.mark.slow
def test_second_sigint_quits_at_once(char_data, tmp_path):
    # steps of a few seconds, so the second Ctrl-C lands while the first is still finishing its step
    p = start(*EXACT, "--batch_size=64", "--gradient_accumulation_steps=16", "--max_iters=100000",
              f"--out_dir={tmp_path}", "--eval_interval=100000")
    wait_for_line(p, "iter 0:")
    p.send_signal(signal.SIGINT)
    wait_for_line(p, "SIGINT received")
    p.send_signal(signal.SIGINT)
    stdout, stderr = finish(p, timeout=60)
    assert p.returncode == 130, (p.returncode, stderr)
    assert "Traceback" not in stderr and "quitting without saving" in stderr
    assert "nothing was saved" in stderr  # not a ckpt.pt that does not exist
    assert not (tmp_path / "ckpt.pt").exists()  # no save after the second Ctrl-C
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


@pytest.mark.serial
@pytest.mark.slow
def test_one_sigint_finishes_the_step_under_way_saves_and_says_how_to_resume(char_data, tmp_path):
    # steps of a second or so: the signal lands while step 2 is being computed
    p = start(*EXACT, "--batch_size=64", "--gradient_accumulation_steps=32", "--max_iters=100000",
              f"--out_dir={tmp_path}", "--eval_interval=100000")
    wait_for_line(p, "iter 1:")
    p.send_signal(signal.SIGINT)
    stdout, stderr = finish(p, timeout=120)
    assert p.returncode == 0, stderr
    # step 2 finishes and is saved; no step 3 is started after the request
    assert load(tmp_path / "ckpt.pt")["iter_num"] == 3 and "iter 3:" not in stdout
    assert "stopped at iteration 3 and saved" in stdout and "--init_from=resume" in stdout


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def poisoned_resume(char_data, out, *extra):
    """A good run to iteration 4, then resumed with a learning rate that sends the weights to
    +-1e30: the evaluation at 5 is NaN and the step at 5 has a non-finite loss."""
    common = ["--dataset=play_char", *TINY, "--eval_iters=1", f"--out_dir={out}"]
    run("train.py", *common, "--max_iters=4", "--eval_interval=2", env=ENV)
    before = {f: digest(out / f) for f in ("ckpt.pt", "best.pt")}
    p = run("train.py", *common, "--init_from=resume", "--max_iters=12", "--eval_interval=1",
            "--learning_rate=1e30", "--decay_lr=False", "--grad_clip=0", *extra, check=False, env=ENV)
    assert {f: digest(out / f) for f in ("ckpt.pt", "best.pt")} == before  # the good checkpoints, untouched
    assert load(out / "ckpt.pt")["iter_num"] == 4
    return p


@pytest.mark.slow
def test_nonfinite_loss_stops_before_the_update_naming_the_iteration(char_data, tmp_path):
    p = poisoned_resume(char_data, tmp_path)
    assert "eval 5:" in p.stdout and "val loss nan" in p.stdout and "(best)" not in p.stdout.split("eval 5:")[1]
    error = assert_clean_error(p, words=["iteration 5", "not finite", "stopped before the update", "intact"])
    assert "on_nonfinite=skip" in error
    assert not [r for r in read_metrics(tmp_path) if r["iter"] >= 5 and "loss" in r]  # no step got logged


@pytest.mark.slow
def test_nonfinite_skip_skips_up_to_max_skips(char_data, tmp_path):
    p = poisoned_resume(char_data, tmp_path, "--on_nonfinite=skip", "--max_skips=3")
    for k in (1, 2, 3):
        assert f"step skipped ({k} of at most 3)" in p.stdout
    assert_clean_error(p, words=["iteration 8", "after 3 skipped steps"])
    assert [r["iter"] for r in read_metrics(tmp_path) if "loss" in r] == [0, 1, 2, 3, 4, 5, 6, 7]


@pytest.mark.slow
def test_nanogpt_checkpoint_resumes_with_a_note(char_data, tmp_path):
    nanogpt_checkpoint(tmp_path / "ckpt.pt", iter_num=100)
    p = run("train.py", "--dataset=play_char", *TINY, "--init_from=resume", "--max_iters=103",
            "--eval_interval=1000", "--eval_iters=1", f"--out_dir={tmp_path}", env=ENV)
    assert "resuming from" in p.stdout and "at iteration 100" in p.stdout
    assert "note: this checkpoint (nanoGPT layout)" in p.stdout
    ckpt = load(tmp_path / "ckpt.pt")
    assert ckpt["iter_num"] == 103 and ckpt["best_val_loss"] <= 2.5
    # what it writes now is complete: the next resume restores everything without a note
    assert {"rng", "sampler", "tokens_seen", "scaler", "last_eval_iter", "optimizer"} <= set(ckpt)
    p = run("train.py", "--dataset=play_char", *TINY, "--init_from=resume", "--max_iters=104",
            "--eval_interval=1000", "--eval_iters=1", f"--out_dir={tmp_path}", env=ENV)
    assert "note:" not in p.stdout


@pytest.mark.slow
def test_keep_last_keeps_the_newest_copies(char_data, tmp_path):
    run("train.py", "--dataset=play_char", *TINY, "--max_iters=5", "--eval_interval=1", "--eval_iters=1",
        "--keep_last=2", f"--out_dir={tmp_path}", env=ENV)
    copies = sorted(f for f in os.listdir(tmp_path) if f.startswith("ckpt_"))
    assert copies == ["ckpt_0000004.pt", "ckpt_0000005.pt"]
    assert load(tmp_path / copies[0])["iter_num"] == 4
    assert digest(tmp_path / copies[1]) == digest(tmp_path / "ckpt.pt")


# -----------------------------------------------------------------------------
# resume means resume; a new run from any checkpoint

@pytest.mark.slow
def test_resume_from_the_folder_alone_continues_like_an_uninterrupted_run(char_data, tmp_path):
    """Trained from a config file; resumed with --init_from=resume --out_dir=RUN and a larger max_iters
    only: the run's own settings come back (data, model, schedule, dropout, accumulation)."""
    recipe = tmp_path / "recipe.py"
    recipe.write_text("dataset = 'play_char'\nn_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 32\n"
                      "batch_size = 8\ndevice = 'cpu'\ncompile = False\ndropout = 0.1\n"
                      "gradient_accumulation_steps = 3\neval_interval = 3\neval_iters = 2\nlearning_rate = 3e-3\n"
                      "warmup_iters = 2\nlr_decay_iters = 12\nmax_iters = 6\n")
    ref, out = tmp_path / "ref", tmp_path / "run"
    run("train.py", recipe, "--max_iters=12", f"--out_dir={ref}", env=ENV)
    run("train.py", recipe, f"--out_dir={out}", env=ENV)
    p = run("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=12", env=ENV)
    assert "with the run's saved settings: changed max_iters 6 -> 12" in p.stdout
    # device and compile are the machine's, given now (here left to their defaults), not the run's
    assert_resumed_equals_reference(ref, out, machine_keys=("device", "compile"))


@pytest.mark.slow
def test_resume_without_a_checkpoint_talks_about_the_checkpoint_first(tmp_path):
    # the default dataset (openwebtext) is not prepared either: the checkpoint is the problem to report
    p = run("train.py", "--init_from=resume", f"--out_dir={tmp_path}", "--device=cpu", check=False, env=ENV)
    assert_clean_error(p, words=["no checkpoint at", "ckpt.pt"])


@pytest.fixture
def source_run(char_run):
    return char_run


@pytest.mark.slow
@pytest.mark.parametrize("source", ["file", "folder"])
def test_a_new_run_starts_from_a_checkpoints_weights(source_run, tmp_path, source):
    init = source_run / "ckpt.pt" if source == "file" else source_run
    out = tmp_path / "new"
    p = run("train.py", "--dataset=play_char", *TINY, "--max_iters=2", "--eval_interval=2", "--eval_iters=2",
            f"--init_from={init}", f"--out_dir={out}", "--learning_rate=1e-4", env=ENV)
    assert f"starting a new run from the weights of {source_run / 'ckpt.pt'} (iteration 6)" in p.stdout
    rows = read_metrics(out)
    assert [r["iter"] for r in rows if "loss" in r] == [0, 1]  # iteration 0: a new run
    # its first evaluation scores the source's final weights on the same fixed batches: the same loss
    source_last = [r for r in read_metrics(source_run) if "val_loss" in r][-1]
    assert [r for r in rows if "val_loss" in r][0]["val_loss"] == source_last["val_loss"]
    ckpt = load(out / "ckpt.pt")
    assert ckpt["iter_num"] == 2 and ckpt["optimizer"]["state"][0]["step"] == 2  # a fresh optimizer


@pytest.mark.slow
def test_a_new_run_from_a_nanogpt_checkpoint_and_what_is_refused(char_data, tmp_path):
    nanogpt_checkpoint(tmp_path / "nano" / "ckpt.pt", iter_num=5000)
    out = tmp_path / "ft"
    # a shorter context than the source's 32 is fine: the position table is cropped
    run("train.py", "--dataset=play_char", *TINY, "--block_size=16", "--max_iters=2", "--eval_interval=2",
        "--eval_iters=1", f"--init_from={tmp_path / 'nano' / 'ckpt.pt'}", f"--out_dir={out}", env=ENV)
    ckpt = load(out / "ckpt.pt")
    assert ckpt["iter_num"] == 2 and ckpt["model_args"]["block_size"] == 16 and not ckpt["model_args"]["bias"]
    p = run("train.py", "--dataset=play_char", *TINY, "--n_layer=3", f"--init_from={tmp_path / 'nano'}",
            f"--out_dir={tmp_path / 'x'}", check=False, env=ENV)
    assert_clean_error(p, status=2, words=["n_layer=3 conflicts with", "n_layer=2"])
    nanogpt_checkpoint(tmp_path / "wide" / "ckpt.pt", vocab_size=80)
    p = run("train.py", "--dataset=play_char", *TINY, f"--init_from={tmp_path / 'wide'}",
            f"--out_dir={tmp_path / 'y'}", check=False, env=ENV)
    assert_clean_error(p, status=2, words=["does not fit", "vocabulary of 80"])


def test_a_new_run_from_weights_takes_their_network_before_any_model_is_built_and_leaves_the_given_settings(
        char_data, tmp_path):
    from gptkit import configurator, init_from, keys
    from gptkit.dataset import read_meta
    nanogpt_checkpoint(tmp_path / "run" / "ckpt.pt", n_layer=2, n_embd=32, block_size=32)
    cfg = configurator.configure(keys.KEYS, argv=["--dataset=play_char", f"--init_from={tmp_path / 'run'}",
                                                  "--block_size=16", "--dropout=0.1"], announce=False)
    given = dict(vars(cfg))
    start = init_from.locate(cfg, keys.KEYS, keys.MACHINE_KEYS)
    assert vars(cfg) == given  # the settings given are never written into
    assert (start.cfg.n_layer, start.cfg.n_embd, start.cfg.bias, start.cfg.block_size) == (2, 32, False, 16)
    assert "model" not in start.saved and start.saved["iter_num"] == 100
    model, said = start.build_model(read_meta(char_data), "play_char")
    assert model.config.n_layer == 2 and model.config.block_size == 16 and model.config.dropout == 0.1
    assert said.startswith(f"starting a new run from the weights of {tmp_path / 'run' / 'ckpt.pt'} (iteration 100)")
    # a setting that contradicts the weights is refused while the settings are resolved, before any data is read
    cfg = configurator.configure(keys.KEYS, argv=[f"--init_from={tmp_path / 'run'}", "--n_embd=64"], announce=False)
    with pytest.raises(UserError, match="n_embd=64 conflicts with .*which has n_embd=32"):
        init_from.locate(cfg, keys.KEYS, keys.MACHINE_KEYS)


# -----------------------------------------------------------------------------
# going on for longer

def resumed_settings(saved, *argv, iter_num):
    """(settings, changed, note) of `train.py --init_from=resume *argv` on a run saved with `saved`."""
    from gptkit import configurator
    from gptkit import init_from, keys
    cfg = configurator.configure(keys.KEYS, argv=["--init_from=resume", *argv], announce=False)
    base, changed = configurator.rebase(cfg, keys.KEYS, saved, keep=keys.MACHINE_KEYS)
    return base, changed, init_from.extend_schedule(base, changed, iter_num)


def test_more_steps_on_resume_extend_the_decay_that_ended_at_the_old_end():
    saved = dict(max_iters=300, lr_decay_iters=300, warmup_iters=25, learning_rate=6e-3, min_lr=6e-4)
    cfg, changed, note = resumed_settings(saved, "--max_iters=400", iter_num=300)
    assert cfg.lr_decay_iters == 400 and changed["lr_decay_iters"] == (300, 400)
    # the cosine of the 400-step schedule at 300, by hand: (300 - 25) / (400 - 25) of the way down
    lr = 6e-4 + 0.5 * (1 + math.cos(math.pi * 275 / 375)) * (6e-3 - 6e-4)
    assert (f"at iteration 300 the learning rate rises from 6.00e-04 back to {lr:.2e}, then decays to min_lr=0.0006 "
            f"at 400; to keep the old decay instead (the extra steps at min_lr), add --lr_decay_iters=300") in note
    # what the user said stands: the old decay kept, or another one
    for given in ("--lr_decay_iters=300", "--lr_decay_iters=350"):
        cfg, changed, note = resumed_settings(saved, "--max_iters=400", given, iter_num=300)
        assert cfg.lr_decay_iters == int(given.split("=")[1]) and note is None
    # a decay that ended before the old end is not moved, but the steps at min_lr are named
    cfg, _, note = resumed_settings({**saved, "lr_decay_iters": 250}, "--max_iters=400", iter_num=300)
    assert cfg.lr_decay_iters == 250
    assert note.startswith("note: the learning rate decay ends at lr_decay_iters=250, so iterations 300 to 400 run "
                           "at min_lr") and note.endswith("add --lr_decay_iters=400")
    # nothing to say: no decay, a decay past the new end, or max_iters as it was
    for saved_, argv in (({**saved, "decay_lr": False}, ["--max_iters=400"]),
                         ({**saved, "lr_decay_iters": 600000}, ["--max_iters=400"]), (saved, [])):
        cfg, _, note = resumed_settings(saved_, *argv, iter_num=300)
        assert note is None and cfg.lr_decay_iters == saved_["lr_decay_iters"]


@pytest.mark.slow
def test_a_run_resumed_for_more_steps_decays_like_one_started_that_long(char_data, tmp_path):
    common = ["--dataset=play_char", *TINY, "--eval_interval=4", "--eval_iters=1", "--warmup_iters=1",
              "--learning_rate=3e-3", "--min_lr=3e-4"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    run("train.py", *common, "--max_iters=8", "--lr_decay_iters=8", f"--out_dir={ref}", env=ENV)
    run("train.py", *common, "--max_iters=4", "--lr_decay_iters=4", f"--out_dir={out}", env=ENV)
    p = run("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=8", env=ENV)
    assert "changed max_iters 4 -> 8, lr_decay_iters 4 -> 8" in p.stdout
    assert "note: lr_decay_iters follows max_iters (4 -> 8)" in p.stdout
    lrs = {path: {r["iter"]: r["lr"] for r in read_metrics(path) if "loss" in r} for path in (ref, out)}
    assert [lrs[out][it] for it in range(4, 8)] == [lrs[ref][it] for it in range(4, 8)]
    assert min(lrs[out][it] for it in range(4, 7)) > 3e-4  # not the old decay's floor
    assert load(out / "ckpt.pt")["config"]["lr_decay_iters"] == 8  # and so for the next resume

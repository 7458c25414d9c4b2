"""checkpoint.py: atomic saves that survive SIGKILL, safe loads, one sentence for every bad file
(in-process and through train.py and sample.py), random state that round-trips, and a run folder's
store: the newest of a checkpoint file and its sharded form is the one read, an older copy never
replaces a newer one, and a damaged sharded checkpoint is named with the ones that are intact."""

import multiprocessing
import os
import pickle
import random
import signal
import time

import numpy as np
import pytest
import torch

from conftest import CORPUS_VOCAB, TINY, assert_clean_error, nanogpt_checkpoint, run
from gptkit import checkpoint, loading
from gptkit.errors import UserError

ENV = {"OMP_NUM_THREADS": "1"}


def payload(k, n=1 << 20):
    # a few MB, so that a random kill often lands in the middle of a write
    return {"model": {"w": torch.full((n,), float(k))}, "model_args": {"k": k}, "iter_num": k}


def save_forever(path, done):
    # a forked child must not use the parent's OpenMP thread pool (it would wait forever on
    # threads that were not forked); one thread keeps torch's kernels inline
    torch.set_num_threads(1)
    for k in range(10**9):
        checkpoint.save(payload(k), path)
        done.value = k  # saves up to k have returned


@pytest.mark.serial
@pytest.mark.slow
def test_sigkill_during_saves_always_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    checkpoint.save(payload(-1), path)
    rng = random.Random(0)
    fork = multiprocessing.get_context("fork")  # a real process, without paying torch's import 12 times
    mid_write = 0
    for attempt in range(12):
        done = fork.Value("q", -2)
        proc = fork.Process(target=save_forever, args=(path, done))
        proc.start()
        deadline = time.monotonic() + 60
        while done.value < 0:  # the first save has returned: from now on a kill can land anywhere
            assert time.monotonic() < deadline and proc.is_alive(), "the saving process never saved"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.2))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=60)
        assert proc.exitcode == -signal.SIGKILL
        mid_write += any(".tmp" in f for f in os.listdir(tmp_path))
        ckpt = checkpoint.load(path)  # would exit with a sentence if the file were torn
        k = ckpt["iter_num"]
        assert done.value <= k <= done.value + 1  # the last finished save, or the one under way if it got renamed
        assert ckpt["model_args"]["k"] == k and torch.equal(ckpt["model"]["w"], torch.full((1 << 20,), float(k)))
    assert mid_write > 0, "no kill landed during a write; the test did not test anything"
    # kills mid-write leave temporaries; the next save clears those of dead processes
    checkpoint.save(payload(0), path)
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_failed_save_is_one_sentence_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(payload(1, 10), str(path))
    before = path.read_bytes()

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError) as e:
        checkpoint.save(payload(2, 10), str(path))
    err = str(e.value)
    assert "No space left" in err and "intact" in err and str(path) in err
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.pt"]


def dead_pid():
    proc = multiprocessing.get_context("fork").Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    return proc.pid  # exited and reaped, so no process has this id (until the system reuses it)


def test_keep_copy_keeps_versions_and_stale_temps_go(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    stale = tmp_path / f"ckpt_0000001.pt.tmp{dead_pid()}"
    live = tmp_path / f"best.pt.tmp{os.getppid()}"  # a save still under way in a live process: left alone
    stale.write_bytes(b"x"), live.write_bytes(b"x")
    for k in range(1, 5):
        checkpoint.save(payload(k, 10), path)
        checkpoint.Store(str(tmp_path)).keep_copy(path, k, keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["best.pt.tmp%d" % os.getppid(), "ckpt.pt", "ckpt_0000003.pt",
                                            "ckpt_0000004.pt"]
    # ckpt.pt is replaced by a rename, so a linked copy keeps the version it was made from
    assert checkpoint.load(str(tmp_path / "ckpt_0000003.pt"))["iter_num"] == 3
    assert checkpoint.load(path)["iter_num"] == 4


def bad_files(folder):
    """The broken checkpoints users meet, each as ckpt.pt in its own folder: {case: folder}."""
    good = tmp = folder / "good"
    tmp.mkdir(parents=True)
    nanogpt_checkpoint(good / "ckpt.pt")
    data = (good / "ckpt.pt").read_bytes()
    cases = {}
    for case in ("truncated", "corrupt", "empty", "not_a_checkpoint", "pickled_dict", "weights_only_refuses",
                 "incompatible_vocab", "incompatible_shape"):
        (folder / case).mkdir()
        cases[case] = folder / case
    (cases["truncated"] / "ckpt.pt").write_bytes(data[: len(data) // 2])
    (cases["corrupt"] / "ckpt.pt").write_bytes(np.random.default_rng(0).bytes(len(data)))
    (cases["empty"] / "ckpt.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3), "iter_num": 5}, cases["not_a_checkpoint"] / "ckpt.pt")
    with open(cases["pickled_dict"] / "ckpt.pt", "wb") as f:
        pickle.dump({"iter_num": 5, "config": {}}, f)
    torch.save({"model": {}, "model_args": {}, "when": np.float64(1.0)}, cases["weights_only_refuses"] / "ckpt.pt")
    nanogpt_checkpoint(cases["incompatible_vocab"] / "ckpt.pt", vocab_size=50304)  # a GPT-2 vocabulary
    shape = nanogpt_checkpoint(cases["incompatible_shape"] / "ckpt.pt")
    shape["model_args"]["n_embd"] = 64  # the weights say 32
    torch.save(shape, cases["incompatible_shape"] / "ckpt.pt")
    cases["missing"] = folder / "missing"
    cases["missing"].mkdir()
    return cases


WORDS = {  # what each sentence must say, beyond the file's name
    "truncated": ["truncated or corrupt"],
    "corrupt": ["corrupt"],
    "empty": ["truncated or corrupt"],
    "not_a_checkpoint": ["not a training checkpoint"],
    "pickled_dict": ["not a checkpoint that can be read safely"],
    "weights_only_refuses": ["weights_only"],
    "incompatible_vocab": ["vocabulary of 50304", str(CORPUS_VOCAB)],
    "incompatible_shape": ["does not fit", "shape"],
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    return bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", ["truncated", "corrupt", "empty", "not_a_checkpoint", "pickled_dict",
                                  "weights_only_refuses", "incompatible_shape", "missing"])
def test_load_errors_are_one_sentence_naming_the_file(bad, case):
    path = str(bad[case] / "ckpt.pt")
    with pytest.raises(UserError) as e:
        loading.build_model(checkpoint.load(path), path)
    err = str(e.value)
    assert len(err.splitlines()) == 1 and path in err, err
    for w in WORDS.get(case, ["no checkpoint at"]):
        assert w in err, (w, err)


# each sentence is checked in-process above; these check that the scripts pass them on as they are
@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "missing", "incompatible_vocab"])
def test_bad_checkpoint_through_train_and_sample(char_data, bad, case):
    path = bad[case] / "ckpt.pt"
    before = path.read_bytes() if path.exists() else None
    words = [str(path), *WORDS.get(case, [])]
    p = run("train.py", "--dataset=play_char", *TINY, "--init_from=resume", f"--out_dir={bad[case]}",
            "--max_iters=2", check=False, env=ENV)
    assert_clean_error(p, words=words if case != "missing" else ["init_from=resume", "no checkpoint", str(path)])
    p = run("sample.py", f"--out_dir={bad[case]}", "--device=cpu", "--num_samples=1", "--max_new_tokens=5",
            check=False, env=ENV)
    assert_clean_error(p, words=words if case != "missing" else ["no checkpoint at", str(path)])
    assert (path.read_bytes() if path.exists() else None) == before  # a bad file is reported, never touched


@pytest.mark.slow
def test_sample_refuses_a_vocabulary_that_does_not_match_meta(char_data, tmp_path):
    nanogpt_checkpoint(tmp_path / "ckpt.pt", vocab_size=80)
    (tmp_path / "meta.pkl").write_bytes((char_data / "meta.pkl").read_bytes())  # CORPUS_VOCAB characters
    p = run("sample.py", f"--out_dir={tmp_path}", "--device=cpu", "--num_samples=1", "--max_new_tokens=5",
            check=False, env=ENV)
    assert_clean_error(p, words=["vocabulary of 80", str(CORPUS_VOCAB), "meta.pkl"])


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    state = checkpoint.rng_state()
    expected = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    checkpoint.save({"model": {}, "model_args": {}, "rng": [state]}, str(tmp_path / "c.pt"))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.set_rng_state(checkpoint.load(str(tmp_path / "c.pt"))["rng"][0])
    got = (random.random(), np.random.randn(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def leaves(tree):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield k
            yield from leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from leaves(v)
    else:
        yield tree


@pytest.mark.slow
def test_a_resumed_runs_checkpoint_is_complete_and_plain(char_data, tmp_path):
    common = ["--dataset=play_char", *TINY, "--eval_interval=2", "--eval_iters=1", f"--out_dir={tmp_path}"]
    run("train.py", *common, "--max_iters=2", env=ENV)
    first = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    run("train.py", *common, "--max_iters=4", "--init_from=resume", env=ENV)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert set(ckpt) == set(first)  # nothing lost on the way through a resume
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config", "scaler", "tokens_seen",
            "last_eval_iter", "skipped_steps", "rng", "sampler"} <= set(ckpt)
    assert ckpt["iter_num"] == 4 and ckpt["tokens_seen"] == 2 * first["tokens_seen"] > 0
    assert isinstance(ckpt["best_val_loss"], float) and ckpt["last_eval_iter"] == 4
    assert set(ckpt["rng"][0]) >= {"python", "numpy", "torch_cpu"} and ckpt["sampler"]["seed"] == 1337
    plain = (torch.Tensor, int, float, str, bool, type(None))
    assert all(isinstance(v, plain) for v in leaves(ckpt)), {type(v) for v in leaves(ckpt)} - set(plain)


# -----------------------------------------------------------------------------
# a run folder's store, with sharded checkpoints written by one process (as parallel=fsdp on one process does)

def tiny_run(folder, sharded, fsdp_consolidate="end", keep_last=2):
    """A saver for a two-layer model's run in folder, and a function that trains it one step."""
    from gptkit import optim, runtime
    from gptkit.training import Progress
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=CORPUS_VOCAB, dropout=0.0))
    config = dict(seed=0, fsdp_consolidate=fsdp_consolidate, weight_decay=0.1, learning_rate=1e-2, beta1=0.9,
                  beta2=0.95, optimizer="adamw", dataset="play_char")
    opt = optim.configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95))
    saver = checkpoint.Store(str(folder)).saver(sharded, model, opt, None, config, None, keep_last, runtime.Dist(),
                                                "cpu")
    progress = Progress()

    def step():
        x = torch.randint(0, CORPUS_VOCAB, (2, 8))
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        progress.iter_num += 1
        return progress

    return saver, step, model


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_sharded_checkpoint_newer_than_its_file_is_the_one_read_in_memory_and_nothing_is_written(tmp_path):
    saver, step, model = tiny_run(tmp_path, sharded=True)
    saver.save(step(), best=True)
    assert saver.consolidate() == []  # ckpt.pt and best.pt of iteration 1
    for _ in range(2):
        saver.save(step())  # killed after this save: ckpt.dcp at 3, ckpt.pt still at 1
    store = checkpoint.Store(str(tmp_path))
    before = (tmp_path / "ckpt.pt").read_bytes()
    ckpt, path, note = store.load()
    assert path == str(tmp_path / "ckpt.dcp") and ckpt["iter_num"] == 3 and "newer than ckpt.pt" in note
    assert same_weights(ckpt["model"], checkpoint.model_state(model))
    assert (tmp_path / "ckpt.pt").read_bytes() == before  # read in memory: the user's files are left as they were
    # every sharded checkpoint is read by its name: best.dcp, and keep_last's numbered copies
    assert store.load("best.dcp")[0]["iter_num"] == 1 and store.load("best.pt")[1] == str(tmp_path / "best.pt")
    assert sorted(n for n in store.names() if n.startswith("ckpt_")) == ["ckpt_0000002.dcp", "ckpt_0000003.dcp"]
    assert store.load("ckpt_0000002.dcp")[0]["iter_num"] == 2
    assert "ckpt.pt (latest; older than ckpt.dcp, which the scripts read)" in store.describe()
    # the file written from it is the one a one-file run writes (nanoGPT's keys), and then it is the one read
    assert store.consolidate("ckpt.pt") == f"wrote {tmp_path / 'ckpt.pt'} from {tmp_path / 'ckpt.dcp'} (iteration 3)"
    whole = checkpoint.load(str(tmp_path / "ckpt.pt"), require=("optimizer", "iter_num", "best_val_loss", "config"))
    assert same_weights(whole["model"], ckpt["model"]) and store.find()[0] == str(tmp_path / "ckpt.pt")


def test_consolidating_never_writes_an_older_sharded_checkpoint_over_a_newer_file(tmp_path):
    """best.dcp of a sharded run at iteration 1, then the run went on in one process and wrote best.pt at 3."""
    sharded, step, _ = tiny_run(tmp_path, sharded=True, fsdp_consolidate="never")
    sharded.save(step(), latest=False, best=True)
    whole, step, _ = tiny_run(tmp_path, sharded=False)
    step(), step()
    whole.save(step(), best=True)
    before = (tmp_path / "best.pt").read_bytes()
    store = checkpoint.Store(str(tmp_path))
    said = store.consolidate("best.pt")
    assert said.startswith(f"kept {tmp_path / 'best.pt'} (iteration 3)") and "best.dcp (iteration 1)" in said
    assert (tmp_path / "best.pt").read_bytes() == before
    assert store.load("best.pt")[0]["iter_num"] == 3  # and the newer file is the one read


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_a_damaged_shard_is_named_with_the_checkpoints_that_are_intact(tmp_path, how):
    saver, step, _ = tiny_run(tmp_path, sharded=True, fsdp_consolidate="never")
    saver.save(step(), best=True)
    saver.save(step())
    shard = tmp_path / "ckpt.dcp" / "__0_0.distcp"
    data = shard.read_bytes()
    shard.unlink()  # the numbered copy holds a second link to the file: it stays whole
    if how == "truncated":
        shard.write_bytes(data[:len(data) // 2])
    store = checkpoint.Store(str(tmp_path))
    for read in (store.load, lambda: store.load("ckpt.dcp")):
        with pytest.raises(UserError) as e:
            read()
        err = str(e.value)
        assert str(shard) in err and how in err and "damaged" in err, err
        assert "intact: best.dcp, ckpt_0000001.dcp, ckpt_0000002.dcp" in err and "different model" not in err, err
    assert store.load("ckpt_0000002.dcp")[0]["iter_num"] == 2

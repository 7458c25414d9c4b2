"""Nothing a user has is lost or damaged: run folders are never clobbered, one process
writes a run, datasets are consistent or refused, vocabulary files are read safely and always match
their run, every bad value is one sentence, and a stop request is answered at once. File contents are
compared byte for byte before and after."""

import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CORPUS, ROOT, TINY, assert_clean_error, digests, read_metrics, run, script, start
from gptkit import checkpoint, dataprep, dataset
from gptkit.batches import Batches
from gptkit.errors import UserError

BASE = ["--dataset=play_char", *TINY, "--eval_iters=2"]


@pytest.fixture
def a_run(char_run):
    return char_run


# -----------------------------------------------------------------------------
# data loss

def test_export_overwrite_never_replaces_a_run_a_repository_or_a_parent(a_run, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "code.py").write_text("print('mine')")
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "model.pt").write_bytes(b"a checkpoint")
    before = {p: digests(p) for p in (a_run, repo, tmp_path / "weights")}
    monkeypatch.chdir(repo)
    for target, words in [(a_run, "is the run folder"), (".", "is the working directory"),
                          (a_run.parent, "contains the run"), (tmp_path / "weights", "not a folder export.py wrote"),
                          (tmp_path / "weights" / "model.pt" / "hf", "is a file")]:
        e = script("export.py", f"--out_dir={a_run}", f"--export_dir={target}", "--overwrite=True")
        assert words in str(e), (target, str(e))
    assert {p: digests(p) for p in before} == before


@pytest.mark.slow
def test_a_new_run_in_a_folder_holding_a_run_is_refused_and_changes_nothing(a_run, tmp_path):
    before = digests(a_run)
    p = run("train.py", *BASE, "--max_iters=6", f"--out_dir={a_run}", check=False)
    assert_clean_error(p, status=2, words=["holds a run (ckpt.pt)", "--init_from=resume", "--overwrite=True"])
    # a run that cannot start (its logger is missing) is refused before it touches the history
    p = run("train.py", "--init_from=resume", f"--out_dir={a_run}", "--max_iters=9", "--tensorboard_log=True",
            check=False, env={"PYTHONPATH": str(blocked_module(tmp_path, "tensorboard"))})
    assert_clean_error(p, status=2, words=["tensorboard_log=True", "pip install tensorboard"])
    # an evaluation of the run writes nothing (not even a metrics row)
    p = run("train.py", "--init_from=resume", f"--out_dir={a_run}", "--eval_only=True")
    assert "eval 6:" in p.stdout and "nothing was written" in p.stdout
    assert digests(a_run) == before
    # overwrite=True asks for exactly that: the old run goes, the numbered copies with it
    fresh = tmp_path / "fresh"
    run("train.py", *BASE, "--max_iters=9", "--eval_interval=3", "--keep_last=2", f"--out_dir={fresh}")
    (fresh / "notes.txt").write_text("mine")
    run("train.py", *BASE, "--max_iters=2", "--eval_interval=2", f"--out_dir={fresh}", "--overwrite=True")
    assert [r["iter"] for r in read_metrics(fresh) if "loss" in r] == [0, 1]
    assert not [f for f in os.listdir(fresh) if f.startswith("ckpt_")] and (fresh / "notes.txt").read_text() == "mine"


def blocked_module(tmp_path, name):
    """A folder to put first on PYTHONPATH in which `import <name>` fails, as if it were not installed."""
    folder = tmp_path / f"no-{name}"
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(f"raise ImportError('no module named {name}')\n")
    return folder


@pytest.mark.serial
@pytest.mark.slow
def test_one_writer_per_run_folder(char_data, tmp_path):
    out = tmp_path / "run"
    first = start("train.py", *BASE, "--max_iters=100000", "--eval_interval=2", f"--out_dir={out}")
    try:
        for line in first.stdout:
            if line.startswith("iter 3:"):  # past its first save, so there is a run to resume
                break
        for extra in (["--overwrite=True"], ["--init_from=resume"]):
            p = run("train.py", *BASE, "--max_iters=100000", f"--out_dir={out}", *extra, check=False)
            assert_clean_error(p, words=["in use by another training process", f"PID {first.pid}"])
        first.send_signal(signal.SIGKILL)  # a lock whose holder died is free again
        first.wait()
        saved = checkpoint.load(str(out / "ckpt.pt"))["iter_num"]
        p = run("train.py", "--init_from=resume", f"--out_dir={out}", f"--max_iters={saved + 2}")
        assert "resuming from" in p.stdout and "done in" in p.stdout
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_a_half_rewritten_dataset_is_refused(tmp_path):
    folder = tmp_path / "data"
    vocab = {"vocab_size": 3, "stoi": {"a": 0, "b": 1, "c": 2}, "itos": {0: "a", 1: "b", 2: "c"}}
    ids = np.arange(300) % 3
    writer = dataprep.DatasetWriter(str(folder), 3, vocab)
    writer.write("train", ids)
    writer.write("val", ids[:100])
    writer.finish()
    assert Batches(str(folder), "x", 8, 2, 0, "cpu").train_batch(0, 0)[0].shape == (2, 8)
    # prepare.py killed after the new train.bin: the folder mixes two preparations
    writer = dataprep.DatasetWriter(str(folder), 4, dict(vocab, vocab_size=4, stoi={**vocab["stoi"], "d": 3},
                                                         itos={**vocab["itos"], 3: "d"}))
    writer.write("train", np.arange(500) % 4)
    with pytest.raises(UserError, match="half-prepared"):
        Batches(str(folder), "x", 8, 2, 0, "cpu")
    # a file swapped by hand after a finished preparation
    writer.write("val", np.arange(120) % 4)
    writer.finish()
    (folder / "val.bin").write_bytes(np.zeros(50, dtype=np.uint16).tobytes())
    with pytest.raises(UserError, match="mixes two preparations"):
        Batches(str(folder), "x", 8, 2, 0, "cpu")
    # folders prepared by nanoGPT (no dataset.json) train as before; leftover temporaries are cleared
    writer.write("val", np.arange(120) % 4)
    (folder / "dataset.json").unlink()
    Batches(str(folder), "x", 8, 2, 0, "cpu")
    (folder / "train.bin.tmp").write_bytes(b"left by an older version")
    (folder / "val.bin.tmp999999999").write_bytes(b"left by a killed process")
    dataprep.DatasetWriter(str(folder), 4)
    assert not [f for f in os.listdir(folder) if ".tmp" in f]


@pytest.mark.slow
def test_a_runs_vocabulary_files_always_match_its_checkpoint(char_data, tmp_path):
    # a BPE dataset (GPT-2 ids, no meta.pkl) made here, so no tokenizer download is needed
    bpe = tmp_path / "bpe"
    writer = dataprep.DatasetWriter(str(bpe), 50257)
    rng = np.random.default_rng(0)
    writer.write("train", rng.integers(0, 50257, 5000))
    writer.write("val", rng.integers(0, 50257, 1000))
    writer.finish()
    out = tmp_path / "run"
    run("train.py", *BASE, "--max_iters=2", "--eval_interval=2", f"--out_dir={out}")
    assert (out / "meta.pkl").exists()  # the character run's vocabulary
    run("train.py", *TINY, f"--data_dir={bpe}", "--eval_iters=1", "--max_iters=2", "--eval_interval=2",
        f"--out_dir={out}", "--overwrite=True")
    assert not (out / "meta.pkl").exists()
    # a stale meta.pkl put back by hand: export refuses it, as sampling does
    (out / "meta.pkl").write_bytes((char_data / "meta.pkl").read_bytes())
    p = run("export.py", f"--out_dir={out}", f"--export_dir={tmp_path / 'hf'}", "--skip_tokenizer=True", check=False)
    assert_clean_error(p, words=["does not fit the meta.pkl"])
    assert not (tmp_path / "hf").exists()


# -----------------------------------------------------------------------------
# security

class Payload:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_meta_pkl_is_read_without_running_code(char_data, tmp_path):
    victim = tmp_path / "created-by-meta.pkl"
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 3, "stoi": Payload(str(victim))}, f)
    with pytest.raises(UserError, match="could run code"):
        dataset.read_meta(str(tmp_path))
    assert not victim.exists()
    assert dataset.read_meta(str(char_data))["vocab_size"] > 0  # nanoGPT's layout still loads


# -----------------------------------------------------------------------------
# silent nonsense

@pytest.mark.parametrize("arg, words", [
    ("--gradient_accumulation_steps=0", ["gradient_accumulation_steps must be at least 1"]),
    ("--eval_iters=0", ["eval_iters must be at least 1"]),
    ("--batch_size=-3", ["batch_size must be at least 1"]),
    ("--block_size=0", ["block_size must be at least 1"]),
    ("--learning_rate=-1", ["learning_rate must be greater than 0"]),
    ("--dropout=1.5", ["dropout must be at least 0.0 and less than 1.0"]),
    ("--eval_interval=0", ["eval_interval must be at least 1"]),
    ("--log_interval=0", ["log_interval must be at least 1"]),
    ("--seed=-1", ["seed must be at least 0"]),
    ("--beta2=1.0", ["beta2"]),
    ("--out_dir=", ["out_dir is empty"]),
])
def test_every_numeric_key_is_range_checked(arg, words):
    from gptkit import configurator
    from gptkit import keys, runs
    with pytest.raises(UserError) as e:
        cfg = configurator.parse(keys.KEYS, [*BASE, arg])
        runs.check_out_dir(cfg["out_dir"])
    assert e.value.status == 2 and all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize("args, words", [
    (["--learning_rate=5e-5"], ["min_lr=6e-05 is above learning_rate=5e-05", "1.2x", "--min_lr=5e-06"]),
    (["--learning_rate=1e-3", "--min_lr=4e-3"], ["4x after the warmup", "--decay_lr=False"]),
    (["--fsdp_shard_size=4"], ["fsdp_shard_size=4", "parallel=ddp", "--parallel=fsdp"]),
])
def test_settings_that_would_train_on_nonsense_are_refused_with_the_figures(args, words):
    from gptkit import configurator
    from gptkit import keys
    cfg = configurator.configure(keys.KEYS, argv=[*BASE, *args], announce=False)
    with pytest.raises(UserError) as e:
        keys.check(cfg)
    assert e.value.status == 2 and all(w in str(e.value) for w in words), str(e.value)
    # the same rate as a constant is what was asked for: accepted
    keys.check(configurator.configure(keys.KEYS, argv=[*BASE, "--learning_rate=5e-5", "--decay_lr=False"],
                                      announce=False))


@pytest.mark.slow
def test_cross_key_checks(char_data, tmp_path):
    p = run("train.py", *BASE, "--n_head=3", f"--out_dir={tmp_path}", check=False)
    assert_clean_error(p, status=2, words=["n_embd=32 does not divide into n_head=3 heads"])
    (tmp_path / "a-file").write_text("")
    p = run("train.py", *BASE, f"--out_dir={tmp_path / 'a-file' / 'run'}", check=False)
    assert_clean_error(p, status=2, words=["is a file"])


@pytest.mark.slow
def test_resuming_cannot_change_the_architecture_context_or_vocabulary(a_run, tmp_path):
    before = digests(a_run)
    for arg, words in [("--n_layer=3", ["n_layer=3 contradicts the run", "--init_from="]),
                       ("--block_size=16", ["block_size=16 contradicts the run"]),
                       ("--bias=True", ["bias=True contradicts the run"])]:
        p = run("train.py", "--init_from=resume", f"--out_dir={a_run}", "--max_iters=9", arg, check=False)
        assert_clean_error(p, status=2, words=words)
    # another character corpus with exactly as many characters as the run's, but other ones
    text = CORPUS.read_text(encoding="utf-8")
    swapped = text.translate(str.maketrans("eE", "\u00e9\u00c9"))  # same count, other characters
    other = tmp_path / "other_char"
    (tmp_path / "other.txt").write_text(swapped, encoding="utf-8")
    run("data/shakespeare_char/prepare.py", tmp_path / "other.txt", f"--out={other}")
    p = run("train.py", "--init_from=resume", f"--out_dir={a_run}", "--max_iters=9", f"--data_dir={other}",
            check=False)
    assert_clean_error(p, status=2, words=["not the vocabulary", "resume with the dataset"])
    assert digests(a_run) == before


# -----------------------------------------------------------------------------
# one sentence, never a traceback

def test_damaged_data_is_one_sentence(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "val.bin").write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    for content, words in [(b"\x00\x01\x02", "not a whole number of uint16"), (b"", "nothing")]:
        (folder / "train.bin").write_bytes(content)
        with pytest.raises(UserError, match=words):
            Batches(str(folder), "x", 8, 2, 0, "cpu")
    (folder / "train.bin").write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    batches = Batches(str(folder), "x", 8, 2, 0, "cpu", vocab_size=10)  # ids up to 99
    with pytest.raises(UserError, match="holds token id [1-9][0-9] but its vocabulary has only 10 tokens"):
        batches.train_batch(0, 0)
    (folder / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 10}))  # the vocabulary the ids should be in
    with pytest.raises(UserError, match="holds token id [1-9][0-9] but its vocabulary has only 10 tokens"):
        Batches(str(folder), "x", 8, 2, 0, "cpu").train_batch(0, 0)
    for content, words in [(pickle.dumps({"vocab_size": 3})[:10], "truncated or not a pickle"),
                           (b"vocab_size = 65\n", "truncated or not a pickle"),
                           (pickle.dumps([1, 2, 3]), "not a vocabulary file"),
                           (pickle.dumps({"vocab_size": 2, "stoi": {"a": 0}, "itos": {0: "a"}}), "broken character")]:
        (folder / "meta.pkl").write_bytes(content)
        with pytest.raises(UserError, match=words):
            dataset.read_meta(str(folder))


@pytest.mark.slow
def test_a_full_disk_while_logging_is_one_sentence(char_data, tmp_path):
    import resource

    def small_files():  # files may not grow past 12 KB: metrics.jsonl reaches that after some 50 steps
        resource.setrlimit(resource.RLIMIT_FSIZE, (12 * 1024, 12 * 1024))

    out = tmp_path / "run"
    p = subprocess.run([sys.executable, str(ROOT / "train.py"), *BASE, "--max_iters=400", "--eval_interval=1000",
                        f"--out_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=small_files, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert_clean_error(p, words=["could not append to", "metrics.jsonl", "free some disk space"])


@pytest.mark.serial
@pytest.mark.slow
def test_sampling_into_a_closed_pipe_or_interrupted_ends_quietly(a_run):
    args = [sys.executable, str(ROOT / "sample.py"), f"--out_dir={a_run}", "--num_samples=1000",
            "--max_new_tokens=200"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()  # `python sample.py | head -c 10`
    assert p.wait(timeout=120) == 0 and b"Traceback" not in p.stderr.read()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and b"Traceback" not in err and b"interrupted" in err


# -----------------------------------------------------------------------------
# prompt stops

@pytest.mark.serial
@pytest.mark.slow
def test_a_stop_request_interrupts_a_long_evaluation(char_data, tmp_path):
    out = tmp_path / "run"
    run("train.py", *BASE, "--max_iters=2", "--eval_interval=2", f"--out_dir={out}")
    # resumed with evaluations of 2 x 4000 batches of 8 x 32 tokens (most of a minute on 2 cores), the
    # next at iteration 4: a stop request must not wait for it
    p = start("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=100", "--eval_interval=4",
              "--eval_iters=4000")
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("iter 3:"):  # the evaluation at iteration 4 starts now
            break
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "stopped at iteration 4 during its evaluation" in stdout and "eval 4:" not in stdout
    assert checkpoint.load(str(out / "ckpt.pt"))["iter_num"] == 4

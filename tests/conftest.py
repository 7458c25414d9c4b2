"""Shared test helpers: the tests' own corpus and data folder, the downloads some tests need (skipped,
with the reason, where they cannot be had), and running the scripts."""

import hashlib
import json
import os
import random
import runpy
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
import launcher  # (tests/launcher.py: scripts as fresh processes that start at once)
from gptkit.errors import UserError

# Every dataset the tests prepare goes to a temporary data root (dataset=<name> looks there, in the
# scripts the tests start too), never into the checkout; the CPU peaks they measure go to a temporary
# cache folder, never into the user's.
# A suite started in the background by a non-interactive shell (`pytest &`) inherits SIGINT ignored,
# and so would every script it starts: the tests that press Ctrl-C need a terminal's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

DATA_ROOT = Path(tempfile.mkdtemp(prefix="gpt-tests-data-"))
os.environ["GPT_DATA_ROOT"] = str(DATA_ROOT)
CACHE = Path(tempfile.mkdtemp(prefix="gpt-tests-cache-"))
os.environ["GPT_CACHE_DIR"] = str(CACHE)
CORPUS = DATA_ROOT / "play.txt"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes seconds (trains, or starts processes); still part of the suite")
    config.addinivalue_line("markers", "serial: sends signals, holds locks or starts torchrun: these run one after "
                                       "another (on one worker), never beside each other")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("serial"):
            item.add_marker(pytest.mark.xdist_group("serial"))


def script(path, *args):
    """Run a script in this process (its refusals come before anything heavy): the UserError it ends with."""
    saved = sys.argv
    sys.argv = [str(path), *map(str, args)]
    try:
        with pytest.raises(UserError) as e:
            runpy.run_path(str(ROOT / path), run_name="__main__")
    finally:
        sys.argv = saved
    return e.value


def export(*args):
    """export.py run in this process, as a user runs it (it may end with sys.exit(0))."""
    saved = sys.argv
    sys.argv = ["export.py", *map(str, args)]
    try:
        runpy.run_path(str(ROOT / "export.py"), run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None)
    finally:
        sys.argv = saved


def digests(folder):
    """{relative path: sha256} of every file under folder: what 'unchanged' means here."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="session", autouse=True)
def share_the_cores():
    """Each test process takes its share of the cores for its own tensor work."""
    import torch
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_unconfigure(config):
    shutil.rmtree(DATA_ROOT, ignore_errors=True)
    shutil.rmtree(CACHE, ignore_errors=True)


def play_text(n_chars=400_000, seed=0):
    """A play-shaped corpus made here, so that no test needs a download: speakers' names in capitals,
    speeches of a few lines of words, blank lines between them. Its statistics are easy enough for a
    tiny model to learn in a few dozen steps, as tiny-shakespeare's are."""
    rng = random.Random(seed)
    speakers = ["ROMEO", "JULIET", "MERCUTIO", "NURSE", "FRIAR LAURENCE", "TYBALT", "BENVOLIO", "LADY CAPULET"]
    words = ("the and to of my I you a that in is not with it me be your his this but have for what thy thou "
             "so will him all do shall are by no her love sir our if good come on lord now more then how here "
             "night day heart death sweet fair well know let there which would say hath make go man they such "
             "art eyes name speak hand light tears fortune time she upon house grace gentle stay live").split()
    out, size = [], 0
    while size < n_chars:
        speech = [rng.choice(speakers) + ":"]
        for _ in range(rng.randint(1, 4)):
            line = [rng.choice(words) for _ in range(rng.randint(4, 10))]
            line[0] = line[0].capitalize()
            speech.append(" ".join(line) + rng.choice([",", ".", ";", "!", "?", ":"]))
        text = "\n".join(speech) + "\n\n"
        out.append(text)
        size += len(text)
    return "".join(out)


CORPUS.write_text(play_text(), encoding="utf-8")
CORPUS_VOCAB = len(set(CORPUS.read_text(encoding="utf-8")))

# a model small enough that a training run takes seconds on a CPU
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--device=cpu",
        "--compile=False", "--dtype=float32", "--gradient_accumulation_steps=1"]


def offline(tmp_path):
    """Environment variables that make a script behave as on a machine without internet and with empty
    caches, whatever this machine has: the hub switched off, and every HTTP(S) request sent to a closed
    local port (refused at once)."""
    closed = "http://127.0.0.1:9"
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home"),
            "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty-tiktoken-cache"),
            "HTTPS_PROXY": closed, "HTTP_PROXY": closed, "https_proxy": closed, "http_proxy": closed,
            "NO_PROXY": "", "no_proxy": ""}


def run(script, *args, check=True, timeout=600, env=None, cwd=ROOT, input=None, closed=()):
    """Run one of the project's scripts as a fresh process (`input`: text on its stdin; `closed`: the
    streams it starts without, "stdin", "stdout", "stderr", as after `>&-`); return the
    CompletedProcess. The process is forked from a server that has imported torch and the project
    (tests/launcher.py), so it starts in milliseconds; it shares nothing with this one. It runs with one
    intra-op thread: the tiny models gain nothing from a second, and the test processes share the cores."""
    p = launcher.run(script, [str(a) for a in args], env=env, cwd=cwd, input=input, timeout=timeout, closed=closed)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def start(script, *args, env=None, cwd=ROOT):
    """A script started as a fresh process (as run() does) and left running: .stdout is read as it prints;
    .send_signal(), .wait(), .communicate() as with subprocess.Popen."""
    return launcher.start(script, [str(a) for a in args], env=env, cwd=cwd)


def assert_clean_error(p, status=None, words=()):
    """A user error: non-zero exit, one 'error:' sentence, and no traceback."""
    assert p.returncode != 0, p.stdout
    if status is not None:
        assert p.returncode == status, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, p.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])
    return errors[0]


def read_metrics(out_dir):
    with open(Path(out_dir) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def char_data():
    """The tests' corpus prepared at the character level as dataset=play_char (in the temporary data root)."""
    folder = DATA_ROOT / "play_char"
    run("data/shakespeare_char/prepare.py", CORPUS, f"--out={folder}")
    return folder


@pytest.fixture(scope="session")
def char_run(char_data, tmp_path_factory):
    """A finished tiny run on play_char with every kind of file a run leaves (ckpt.pt, best.pt, numbered
    copies ckpt_0000003.pt and ckpt_0000006.pt, metrics.jsonl, config.json, meta.pkl, loss.png), shared
    by the tests that only read it: copy it first to change it."""
    out = tmp_path_factory.mktemp("char-run") / "run"
    run("train.py", "--dataset=play_char", *TINY, "--eval_iters=2", "--max_iters=6", "--eval_interval=3",
        "--keep_last=2", f"--out_dir={out}")
    return out


@pytest.fixture(scope="session")
def gpt2_encoding():
    """tiktoken's GPT-2 encoding: from TIKTOKEN_CACHE_DIR or tiktoken's cache, else downloaded once;
    the test is skipped, naming what is missing, where neither is possible (offline)."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # network errors come in several types
        pytest.skip(f"GPT-2's BPE files could not be had ({type(e).__name__}): tiktoken downloads them once; "
                    f"offline, point TIKTOKEN_CACHE_DIR at a folder holding them")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory, gpt2_encoding):
    """A tiny random GPT-2 (2 layers, 128 positions) in GPT-2's vocabulary, saved as transformers saves
    GPT-2: the scripts load it with --init_from=<folder>, and read it with GPT-2's tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=128, n_embd=32, n_layer=2, n_head=2))
    with torch.no_grad():
        for p in hf.parameters():  # weights away from their init, so the text is not one token repeated
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("tiny-gpt2") / "tiny"
    hf.save_pretrained(folder)
    return folder


@pytest.fixture
def prepare_inputs(tmp_path, gpt2_encoding):
    """{name: arguments} that make each data/<name>/prepare.py prepare something small in a moment (GPT-2's
    BPE where it needs one), all but --out; a new prepare script must be added here."""
    docs = tmp_path / "docs"
    docs.mkdir()
    text = CORPUS.read_text(encoding="utf-8")[:20_000]
    for i in range(4):
        (docs / f"{i}.txt").write_text(text[i * 5000:(i + 1) * 5000], encoding="utf-8")
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                      {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                             for i in range(4)), encoding="utf-8")
    hellaswag = tmp_path / "hellaswag_val.jsonl"
    hellaswag.write_text(json.dumps({"ctx": "A man", "endings": ["runs", "sits", "eats", "reads"], "label": 0}) + "\n",
                         encoding="utf-8")
    gsm8k = tmp_path / "gsm8k"
    gsm8k.mkdir()
    for split in ("train", "test"):
        (gsm8k / f"{split}.jsonl").write_text(json.dumps({"question": "What is 3 times 4?",
                                                          "answer": "3 * 4 = <<3*4=12>>12\n#### 12"}) + "\n",
                                              encoding="utf-8")
    inputs = {"shakespeare_char": [CORPUS], "shakespeare": [CORPUS], "corpus": [f"--input={docs}"],
              "openwebtext": [f"--input={docs}", "--num_proc=1"], "fineweb_edu": [f"--input={docs}", "--num_proc=1"],
              "chat": [chats], "hellaswag": [f"--input={hellaswag}"], "addition": ["--count=10"], "gsm8k": [f"--input={gsm8k}"]}
    assert set(inputs) == {p.parent.name for p in (ROOT / "data").glob("*/prepare.py")}, "a prepare script is missing"
    return inputs


def nanogpt_checkpoint(path, vocab_size=None, n_layer=2, n_head=2, n_embd=32, block_size=32, dataset="play_char",
                       iter_num=100, compiled=True):
    """Write a checkpoint the way nanoGPT's train.py does: its six keys only, state-dict names of its
    model.py (with the '_orig_mod.' prefix a compiled model adds), bias=False, the tied head stored
    under both names, best_val_loss as a tensor, and an AdamW state with its two parameter groups."""
    import torch
    if vocab_size is None:
        vocab_size = CORPUS_VOCAB  # the character vocabulary of play_char
    torch.manual_seed(0)
    n = n_embd
    sd = {"transformer.wte.weight": torch.randn(vocab_size, n) * 0.02,
          "transformer.wpe.weight": torch.randn(block_size, n) * 0.02}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = torch.ones(n)
        sd[p + "attn.c_attn.weight"] = torch.randn(3 * n, n) * 0.02
        sd[p + "attn.c_proj.weight"] = torch.randn(n, n) * 0.02
        sd[p + "ln_2.weight"] = torch.ones(n)
        sd[p + "mlp.c_fc.weight"] = torch.randn(4 * n, n) * 0.02
        sd[p + "mlp.c_proj.weight"] = torch.randn(n, 4 * n) * 0.02
    sd["transformer.ln_f.weight"] = torch.ones(n)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    params = [torch.nn.Parameter(v.clone()) for k, v in sd.items() if k != "lm_head.weight"]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    sum((p * p).sum() for p in params).backward()
    opt.step()
    prefix = "_orig_mod." if compiled else ""
    ckpt = {
        "model": {prefix + k: v for k, v in sd.items()},
        "optimizer": opt.state_dict(),
        "model_args": dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size,
                           bias=False, vocab_size=vocab_size, dropout=0.0),
        "iter_num": iter_num,
        "best_val_loss": torch.tensor(2.5),
        "config": dict(dataset=dataset, n_layer=n_layer, batch_size=12, learning_rate=1e-3, device="cuda"),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return ckpt


# lines of the tests' corpus long enough to be told apart, for multiple-choice sets and texts
LINES = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if len(line) > 12]


def choice_file(path, n, seed=0, max_chars=None):
    """n multiple-choice examples from the tests' corpus: a line, then its next line among three others."""
    rng = random.Random(seed)
    cut = (lambda s: s[:max_chars]) if max_chars else (lambda s: s)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            k = rng.randrange(len(LINES) - 1)
            choices = [cut(LINES[k + 1])]
            while len(choices) < 4:  # three others, each unlike the rest (a choice twice is refused)
                other = cut(rng.choice(LINES))
                if other not in choices:
                    choices.append(other)
            rng.shuffle(choices)
            f.write(json.dumps({"context": cut(LINES[k]), "choices": choices, "label": choices.index(cut(LINES[k + 1]))})
                    + "\n")
    return path


def harness_tasks(folder, quiz, text):
    """lm-evaluation-harness task files for a local multiple-choice file and a local text document."""
    common = "dataset_path: json\nvalidation_split: validation\n"
    (folder / "quiz.yaml").write_text(
        f"task: local_quiz\n{common}dataset_kwargs:\n  data_files:\n    validation: {quiz}\n"
        f"  cache_dir: {folder / 'cache'}\noutput_type: multiple_choice\ndoc_to_text: \"{{{{context}}}}\"\n"
        f"doc_to_choice: \"{{{{choices}}}}\"\ndoc_to_target: \"{{{{label}}}}\"\nmetric_list:\n"
        f"  - metric: acc\n  - metric: acc_norm\n")
    (folder / "text.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    (folder / "text.yaml").write_text(
        f"task: local_text\n{common}dataset_kwargs:\n  data_files:\n    validation: {folder / 'text.jsonl'}\n"
        f"  cache_dir: {folder / 'cache'}\noutput_type: loglikelihood_rolling\ndoc_to_text: \"\"\n"
        f"doc_to_target: \"{{{{text}}}}\"\nmetric_list:\n  - metric: bits_per_byte\n")

"""Shared test helpers: paths, the offline corpus and tokenizer cache, and running the scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# The machines here are offline: CI keeps the corpus and tiktoken's files in ../shared. Elsewhere the
# prepare scripts download the corpus and tiktoken its files, as they do for users.
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
if not SHAKESPEARE.exists():
    SHAKESPEARE = ROOT / "data" / "shakespeare_char" / "input.txt"
if (SHARED / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
sys.path.insert(0, str(ROOT))

# a model small enough that a training run takes seconds on a CPU
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8", "--device=cpu",
        "--compile=False", "--dtype=float32", "--gradient_accumulation_steps=1"]


def run(script, *args, check=True, timeout=600, env=None, cwd=ROOT):
    """Run one of the project's scripts in a fresh interpreter; return the CompletedProcess."""
    # one thread: the tiny models gain nothing from a second, and two processes (DDP tests, or a
    # busy machine) with two threads each on two cores slow every step by an order of magnitude
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    full_env.update(env or {})
    p = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=full_env,
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} exited {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


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
    """tiny-shakespeare prepared at the character level in data/shakespeare_char/."""
    folder = ROOT / "data" / "shakespeare_char"
    if not (folder / "val.bin").exists() or not (folder / "meta.pkl").exists():
        run("data/shakespeare_char/prepare.py", *([f"--input={SHAKESPEARE}"] if SHAKESPEARE.exists() else []))
    return folder


def nanogpt_checkpoint(path, vocab_size=65, n_layer=2, n_head=2, n_embd=32, block_size=32, dataset="shakespeare_char",
                       iter_num=100, compiled=True):
    """Write a checkpoint the way nanoGPT's train.py does: its six keys only, state-dict names of its
    model.py (with the '_orig_mod.' prefix a compiled model adds), bias=False, the tied head stored
    under both names, best_val_loss as a tensor, and an AdamW state with its two parameter groups."""
    import torch
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

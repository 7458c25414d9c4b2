"""train.py end to end on a tiny model, and the device plan that keeps CUDA-only calls off MPS/CPU."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, assert_clean_error, read_metrics, run
from gptkit import runtime
from gptkit.errors import UserError


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_writes_a_nanogpt_checkpoint(char_data, tmp_path):
    out = tmp_path / "run"
    p = run("train.py", "--dataset=play_char", *TINY, "--max_iters=60", "--eval_interval=30",
            "--eval_iters=4", "--learning_rate=3e-3", "--warmup_iters=5", "--lr_decay_iters=60",
            "--gradient_accumulation_steps=2", f"--out_dir={out}")
    assert "device cpu" in p.stdout
    rows = read_metrics(out)
    evals = [r for r in rows if "val_loss" in r]
    steps = [r for r in rows if "loss" in r]
    assert [r["iter"] for r in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8
    assert [r["iter"] for r in steps] == list(range(60))
    assert all({"loss", "lr", "ms", "tok_s", "mfu"} <= set(r) for r in steps)
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"} <= set(ckpt)
    assert ckpt["iter_num"] == 60 and not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert ckpt["best_val_loss"] == pytest.approx(evals[-1]["val_loss"])
    assert (out / "meta.pkl").exists() and (out / "config.json").exists() and (out / "best.pt").exists()
    # nanoGPT's sample.py and train.py build GPTConfig(**model_args) with the fields of its GPTConfig and
    # load the weights strictly: a GPT-2-shaped run must need nothing more
    assert set(ckpt["model_args"]) == {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}
    from gptkit.loading import build_model
    from model import GPT, GPTConfig
    bare = GPT(GPTConfig(**ckpt["model_args"]))
    bare.load_state_dict(ckpt["model"], strict=True)
    x = torch.randint(0, ckpt["model_args"]["vocab_size"], (2, 16))
    torch.testing.assert_close(bare.eval()(x, x)[1], build_model(ckpt, "ckpt.pt").eval()(x, x)[1], atol=0, rtol=0)


@pytest.mark.slow
def test_missing_data_names_the_prepare_command(tmp_path):
    p = run("train.py", "--dataset=shakespeare_char", f"--data_dir={tmp_path}", *TINY, check=False)
    assert_clean_error(p, words=["train.bin", "python data/shakespeare_char/prepare.py"])


@pytest.mark.slow
def test_resume_without_checkpoint_says_so(char_data, tmp_path):
    p = run("train.py", "--dataset=play_char", *TINY, "--init_from=resume", f"--out_dir={tmp_path}", check=False)
    assert_clean_error(p, words=["init_from=resume", "ckpt.pt"])


@pytest.mark.slow
def test_bad_device_is_one_sentence():
    p = run("train.py", "--device=tpu", "--dataset=play_char", check=False)
    assert_clean_error(p, words=["tpu"])


def test_device_plan_keeps_cuda_only_features_on_cuda():
    mps = runtime.plan_for("mps", runtime.pick_dtype("mps")[0])
    assert not (mps.grad_scaler or mps.pin_memory or mps.fused_adamw)
    assert runtime.pick_dtype("mps", "bfloat16")[0] == "bfloat16"
    cpu = runtime.plan_for("cpu", "float32")
    assert not (cpu.grad_scaler or cpu.pin_memory or cpu.autocast) and cpu.fused_adamw
    assert runtime.plan_for("cpu", "float16").grad_scaler  # PyTorch has a CPU GradScaler: fp16 needs it there too
    cuda16 = runtime.plan_for("cuda:1", "float16")
    assert cuda16.grad_scaler and cuda16.pin_memory and cuda16.fused_adamw and cuda16.autocast
    assert not runtime.plan_for("cuda", "bfloat16").grad_scaler  # bf16 needs no loss scaling
    with pytest.raises(UserError):
        runtime.pick_dtype("mps", "float16")  # would need a GradScaler, which MPS does not get


RECORD_MODULES = """
import atexit, json, os, runpy, sys
atexit.register(lambda: open(os.environ["MODULES_FILE"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_optional_loggers_are_imported_only_when_asked_and_log_every_row(char_data, tmp_path):
    # a stand-in wandb module that records its calls, found first on PYTHONPATH
    fake = tmp_path / "fake"
    fake.mkdir()
    calls = tmp_path / "calls.jsonl"
    (fake / "wandb.py").write_text(
        "import json, os\n"
        "def _rec(x):\n"
        "    with open(os.environ['FAKE_WANDB_CALLS'], 'a') as f: f.write(json.dumps(x) + '\\n')\n"
        "def init(project=None, name=None, config=None, **kw): _rec({'init': [project, name, config['n_layer']]})\n"
        "def log(row, step=None): _rec({'log': row, 'step': step})\n"
    )
    env = {"PYTHONPATH": str(fake), "FAKE_WANDB_CALLS": str(calls), "MODULES_FILE": str(tmp_path / "modules.json")}
    common = ["--dataset=play_char", *TINY, "--max_iters=4", "--eval_interval=2", "--eval_iters=1"]
    p = subprocess.run([sys.executable, "-c", RECORD_MODULES, str(ROOT / "train.py"), *common,
                        f"--out_dir={tmp_path / 'a'}"], env=dict(os.environ, **env), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    modules = set(json.loads((tmp_path / "modules.json").read_text()))
    assert not calls.exists() and "wandb" not in modules and "torch.utils.tensorboard" not in modules
    assert not (tmp_path / "a" / "tb").exists()
    assert (tmp_path / "a" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # every run draws its picture
    run("train.py", *common, f"--out_dir={tmp_path / 'b'}", "--wandb_log=True", "--wandb_project=p",
        "--wandb_run_name=r", "--tensorboard_log=True", "--loss_png=False", env=env)
    assert not (tmp_path / "b" / "loss.png").exists()
    rows = [json.loads(line) for line in calls.read_text().splitlines()]
    assert rows[0] == {"init": ["p", "r", 2]}
    logged = [r["log"] for r in rows[1:]]
    assert [r["iter"] for r in logged if "loss" in r] == [0, 1, 2, 3]
    assert [r["iter"] for r in logged if "val_loss" in r] == [0, 2, 4]
    # TensorBoard's own reader finds every metrics row's numbers at its iteration
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(tmp_path / "b" / "tb"))
    events.Reload()
    metrics = read_metrics(tmp_path / "b")
    for name in ("loss", "val_loss", "lr"):
        expected = [(r["iter"], r[name]) for r in metrics if name in r]
        got = [(e.step, e.value) for e in events.Scalars(name)]
        assert [s for s, _ in got] == [s for s, _ in expected]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6)  # stored as float32

"""The optimizer options (Muon + AdamW, fused AdamW on CPU) against torch's references, train.py
with optimizer=muon end to end, and bench.py's training mode."""

import json

import pytest
import torch

from conftest import CORPUS_VOCAB, TINY, assert_clean_error, read_metrics, run
from gptkit.optim import Muon, MuonAdamW, configure_optimizers
from model import GPT, GPTConfig


def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, bias=True))


def test_muon_matches_torch_muon_within_bf16_rounding():
    # ours orthogonalizes in fp32 on CPU, torch's in bf16: same update up to bf16's ~3 digits
    torch.manual_seed(0)
    # two of the same shape once oriented wide: (48, 16) and (16, 48) are orthogonalized as one batch
    ours = [torch.nn.Parameter(torch.randn(*shape)) for shape in [(64, 16), (16, 48), (48, 16), (16, 16)]]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = Muon(ours, lr=0.05, weight_decay=0.01, adjust_lr_fn="original")
    ref_opt = torch.optim.Muon(ref, lr=0.05, weight_decay=0.01, adjust_lr_fn="original")
    start = [p.detach().clone() for p in ours]
    for _ in range(3):
        for p, q in zip(ours, ref):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, q, p0 in zip(ours, ref, start):
        moved = (q - p0).abs().max()
        assert moved > 0.02  # the updates are not trivially small
        assert (p - q).abs().max() < 0.03 * moved
    # the same state layout, so either can load the other's state
    ref_opt.load_state_dict(opt.state_dict())


def test_fused_adamw_on_cpu_matches_the_plain_loop():
    a, b = tiny_model(), tiny_model()
    opt_a = configure_optimizers(a, 0.1, 1e-2, (0.9, 0.95), fused=True)
    opt_b = configure_optimizers(b, 0.1, 1e-2, (0.9, 0.95), fused=False)
    assert opt_a.defaults["fused"] and not opt_b.defaults.get("fused")
    x = torch.randint(0, 65, (4, 16))
    for _ in range(3):
        for m, opt in ((a, opt_a), (b, opt_b)):
            _, loss = m(x, x)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    # Adam divides by sqrt(v): where a gradient is ~0 rounding differs visibly, so the tolerance is
    # 1% of one step's size (lr 1e-2), far below what a wrong update would move
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-4)


def test_muon_takes_the_hidden_matrices_and_adamw_everything_else():
    model = tiny_model()
    opt = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), optimizer="muon", muon_lr=0.05)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.muon.param_groups for p in g["params"]]
    adamw = [names[id(p)] for g in opt.adamw.param_groups for p in g["params"]]
    assert sorted(muon + adamw) == sorted(names.values())  # each exactly once (the tied head too)
    assert all(n.startswith("transformer.h.") and n.endswith(".weight") and "ln_" not in n for n in muon)
    assert len(muon) == 4 * 2  # c_attn, attn.c_proj, c_fc, mlp.c_proj in each of the 2 blocks
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"} <= set(adamw)
    assert all(g["lr_scale"] == pytest.approx(50) for g in opt.muon.param_groups)
    # a Muon + AdamW state saved and loaded keeps today's lr_scale
    other = configure_optimizers(tiny_model(), 0.1, 1e-3, (0.9, 0.95), optimizer="muon", muon_lr=0.01)
    other.load_state_dict(opt.state_dict())
    assert all(g["lr_scale"] == pytest.approx(10) for g in other.param_groups[:len(other.muon.param_groups)])
    with pytest.raises(ValueError):
        other.load_state_dict(configure_optimizers(tiny_model(), 0.1, 1e-3, (0.9, 0.95)).state_dict())


@pytest.mark.slow
def test_muon_training_run_learns_saves_and_resumes(char_data, tmp_path):
    out = tmp_path / "run"
    common = ["--dataset=play_char", *TINY, "--optimizer=muon", "--muon_lr=0.05", "--learning_rate=3e-3",
              "--warmup_iters=5", "--lr_decay_iters=60", "--min_lr=3e-4", "--eval_interval=30", "--eval_iters=4",
              f"--out_dir={out}"]
    run("train.py", *common, "--max_iters=30")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)  # plain tensors and numbers only
    assert set(ckpt["optimizer"]) == {"muon", "adamw"}
    muon_lr = ckpt["optimizer"]["muon"]["param_groups"][0]["lr"]
    adamw_lr = ckpt["optimizer"]["adamw"]["param_groups"][0]["lr"]
    assert muon_lr / adamw_lr == pytest.approx(0.05 / 3e-3)  # the schedule scaled both alike
    assert ckpt["optimizer"]["muon"]["state"]  # momentum buffers were saved

    p = run("train.py", *common, "--max_iters=60", "--init_from=resume")
    assert "resuming from" in p.stdout
    rows = read_metrics(out)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in rows if "loss" in r] == list(range(60))
    assert [r["iter"] for r in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.8

    p = run("train.py", *common, "--max_iters=90", "--init_from=resume", "--optimizer=adamw", check=False)
    assert_clean_error(p, words=["optimizer=muon"])


@pytest.mark.slow
def test_bench_times_the_step_a_training_config_describes(char_data, tmp_path):
    # a train.py config file: bench.py takes the keys that shape a step and says which it skips
    config = tmp_path / "recipe.py"
    config.write_text("out_dir = 'out-x'\neval_interval = 100\ndataset = 'play_char'\nn_layer = 2\nn_head = 2\n"
                      "n_embd = 32\nblock_size = 32\nbatch_size = 4\ngradient_accumulation_steps = 2\n"
                      "optimizer = 'muon'\nmuon_ns_steps = 4\nmuon_lr = 0.03\n")
    trace = tmp_path / "trace.json"
    p = run("bench.py", config, "--device=cpu", "--steps=2", "--warmup=1", "--repeats=2", f"--profile={trace}")
    assert "not used by bench.py: eval_interval, out_dir" in p.stderr
    assert "ms/iter" in p.stdout and "MFU" in p.stdout
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["optimizer"] == "muon" and result["muon_ns_steps"] == 4 and result["fused_adamw"]
    assert result["n_layer"] == 2 and result["data"] == "play_char"
    assert result["vocab_size"] == CORPUS_VOCAB and result["tokens_per_iter"] == 4 * 32 * 2
    assert result["peak_memory_bytes"] > 0
    assert "traceEvents" in json.loads(trace.read_text())

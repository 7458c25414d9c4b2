"""The network: attention paths agree, loss semantics, initialisation, optimizer groups, generation."""

import math
import os

import pytest
import torch

from gptkit.generate import KVCache, generate, sample_next
from gptkit.optim import configure_optimizers, lr_at
from model import GPT, GPTConfig


def tiny(**kw):
    args = dict(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    args.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args))


@pytest.mark.parametrize("bias", [True, False])
def test_sdpa_matches_manual_attention(bias):
    model = tiny(bias=bias)
    idx = torch.randint(0, 97, (3, 32))
    targets = torch.randint(0, 97, (3, 32))
    logits_sdpa, loss_sdpa = model(idx, targets)
    model.set_attention("manual")
    logits_manual, loss_manual = model(idx, targets)
    torch.testing.assert_close(logits_sdpa, logits_manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_sdpa, loss_manual, atol=1e-6, rtol=1e-6)


def test_loss_is_cross_entropy_ignoring_minus_one():
    model = tiny()
    idx = torch.randint(0, 97, (2, 16))
    targets = torch.randint(0, 97, (2, 16))
    targets[:, :5] = -1  # e.g. padding or prompt tokens
    logits, loss = model(idx, targets)
    keep = targets != -1
    logp = torch.log_softmax(logits.double(), -1)
    expected = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    assert abs(loss.item() - expected.item()) < 1e-5


def test_inference_returns_last_position_only():
    model = tiny()
    idx = torch.randint(0, 97, (2, 10))
    last, loss = model(idx)
    full = model.all_logits(idx)
    assert loss is None and last.shape == (2, 1, 97)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_the_named_passes_agree_with_the_plain_call():
    model = tiny(block_size=16)
    idx, targets = torch.randint(0, 97, (2, 10)), torch.randint(0, 97, (2, 10))
    full = model.all_logits(idx)
    assert torch.equal(model(idx, targets)[0], full)  # with targets, every position, as nanoGPT
    assert torch.equal(model.logits(model.hidden_states(idx)), full)
    # through a cache, chunk by chunk, positions continue where the cache left off
    cache = KVCache.for_model(model, 2)
    parts = [model.hidden_states(idx[:, :4], cache), model.hidden_states(idx[:, 4:], cache)]
    assert cache.pos == 10
    torch.testing.assert_close(model.logits(torch.cat(parts, dim=1)), full, atol=1e-5, rtol=0)


def test_causality_future_tokens_do_not_change_past_logits():
    model = tiny()
    idx = torch.randint(0, 97, (1, 20))
    changed = idx.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 97
    a = model.all_logits(idx)
    b = model.all_logits(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_weights_tied_and_gpt2_init():
    model = tiny(n_layer=8, n_embd=64)
    assert model.lm_head.weight is model.transformer.wte.weight
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * 8)) < 1e-3
    assert abs(fc.std().item() - 0.02) < 1e-3


def test_parameter_count_matches_gpt2_small():
    # GPT-2 124M: the published count, with the tied head counted once and position embeddings left out
    with torch.device("meta"):  # shapes without memory: counting needs no weights
        model = GPT(GPTConfig(vocab_size=50257, bias=True), init_weights=False)
    assert model.get_num_params(non_embedding=False) == 124_439_808
    assert model.get_num_params() == 124_439_808 - 1024 * 768


def test_crop_block_size():
    model = tiny(block_size=32)
    model.crop_block_size(16)
    assert model.transformer.wpe.weight.shape == (16, 32) and model.config.block_size == 16
    model(torch.randint(0, 97, (1, 16)))
    with pytest.raises(AssertionError):
        model(torch.randint(0, 97, (1, 17)))


def test_crop_vocab_keeps_logits_and_tying():
    model = tiny(vocab_size=97).eval()
    idx = torch.randint(0, 90, (2, 12))
    full = model.all_logits(idx)
    model.crop_vocab(90)
    cropped = model.all_logits(idx)
    assert cropped.shape[-1] == 90 and model.lm_head.weight is model.transformer.wte.weight
    torch.testing.assert_close(cropped, full[..., :90])
    assert int(generate(model, idx, 30, temperature=1.0)[:, 12:].max()) < 90


def test_optimizer_decays_only_matrices():
    model = tiny()
    opt = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_flops_per_token_matches_a_hand_count_for_gpt2_small():
    # by hand, per token, for GPT-2 124M (12 layers, 768 wide, context 1024, 50257 tokens): every matmul
    # costs 2 FLOPs per weight forward and twice that backward; the weights are the four matrices of
    # each block and the (tied) head. Attention adds q.k and att.v: 2 * 2 * T * C per layer forward.
    L, C, T, V = 12, 768, 1024, 50257
    matmul_weights = L * (C * 3 * C + C * C + C * 4 * C + 4 * C * C) + C * V
    by_hand = 3 * 2 * matmul_weights + 3 * 4 * L * T * C
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=V, bias=True), init_weights=False)
    # the model counts every non-position parameter (norms and biases too: 0.1% more)
    assert model.flops_per_token() == pytest.approx(by_hand, rel=1e-3)


def test_lr_schedule_warmup_cosine_and_floor():
    lr, floor = 6e-4, 6e-5
    at = lambda it: lr_at(it, lr, floor, warmup_iters=10, lr_decay_iters=110)  # noqa: E731
    assert at(0) == pytest.approx(lr / 11) and at(9) == pytest.approx(lr * 10 / 11)  # linear, never 0
    assert at(10) == pytest.approx(lr)  # the peak, where the cosine starts
    assert at(60) == pytest.approx((lr + floor) / 2)  # halfway down the cosine
    assert at(85) == pytest.approx(floor + (lr - floor) * (1 + math.cos(math.pi * 0.75)) / 2)
    assert at(110) == pytest.approx(floor) and at(10_000) == floor  # then the floor for good
    assert all(at(i) >= at(i + 1) for i in range(10, 200))
    assert lr_at(5, lr, floor, 10, 110, decay_lr=False) == lr


# -----------------------------------------------------------------------------
# generation: the KV cache against full recomputation

@pytest.mark.parametrize("attention", ["sdpa", "manual"])
def test_kv_cache_greedy_equals_full_recomputation_past_block_size(attention):
    model = tiny(block_size=24).eval()
    model.set_attention(attention)
    prompt = torch.randint(0, 97, (2, 17))  # longer than half the context
    cached = generate(model, prompt, 20, temperature=0)  # runs past block_size
    full = model.generate(prompt, 20, temperature=0)
    assert torch.equal(cached, full)


def test_kv_cache_logits_match_recomputed_logits():
    model = tiny(block_size=32).eval()
    seq = torch.randint(0, 97, (2, 30))
    cache = KVCache.for_model(model, 2)
    with torch.no_grad():
        model(seq[:, :10], cache=cache)
        model(seq[:, 10:14], cache=cache)  # a chunk after a past needs the shifted causal mask
        for t in range(14, 30):
            step, _ = model(seq[:, t:t + 1], cache=cache)
            full, _ = model(seq[:, :t + 1])
            torch.testing.assert_close(step, full, atol=1e-5, rtol=0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.2, 0.15, 0.1]])
    logits = probs.log()
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        seen.add(sample_next(logits, 1.0, None, 0.8, gen).item())
    assert seen == {1, 2, 3}  # 0.5 + 0.2 = 0.7 < 0.8, + 0.15 reaches it
    seen = {sample_next(logits, 1.0, None, 0.5, gen).item() for _ in range(100)}
    assert seen == {1}  # the top token alone reaches 0.5


def test_temperature_zero_is_greedy_and_seed_repeats():
    logits = torch.randn(4, 97)
    assert torch.equal(sample_next(logits, 0.0), logits.argmax(-1))
    a = sample_next(logits, 1.0, 50, 0.9, torch.Generator().manual_seed(7))
    b = sample_next(logits, 1.0, 50, 0.9, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_mfu_is_never_over_100_percent():
    from gptkit import loggers
    assert loggers.mfu_of(1e6, 1000, 1.0, peak=1e10) == pytest.approx(0.1)
    assert loggers.mfu_of(1e6, 1000, 1.0, peak=1e8) is None  # 1e9 FLOP/s achieved: the peak must be wrong


def test_cpu_peak_is_never_below_a_matmul_measured_on_this_machine(tmp_path, monkeypatch):
    # the real measurements, seen as the peak makes them: each figure is at or above every one so far
    from gptkit import runtime
    measure, rates = runtime.measured_matmul_flops, []

    def spy(device, dtype, **kw):
        rates.append((dtype, measure(device, dtype, **kw)))
        return rates[-1][1]
    monkeypatch.setattr(runtime, "measured_matmul_flops", spy)
    for dtype in ("float32", "bfloat16", "float32"):
        peak, how = runtime.cpu_peak_flops(dtype, cache=tmp_path / "peak.json")
        assert peak >= max(rate for d, rate in rates if d == getattr(torch, dtype)), how


def test_cpu_peak_cache_only_rises_and_a_bad_one_is_ignored(tmp_path, monkeypatch):
    import json

    from gptkit import runtime
    rates = iter([5e10, 3e10, 8e10] + [2e10] * 5)
    monkeypatch.setattr(runtime, "measured_matmul_flops", lambda *a, **k: next(rates))
    monkeypatch.setattr(runtime, "cpu_nominal_flops", lambda threads: (None, None))
    cache = tmp_path / "peak.json"
    assert [runtime.cpu_peak_flops(cache=cache)[0] for _ in range(3)] == [5e10, 5e10, 8e10]
    key, = json.loads(cache.read_text())
    for bad in ("{not json", "[8e10]", json.dumps({key: "fast"})):
        cache.write_text(bad)
        assert runtime.cpu_peak_flops(cache=cache)[0] == 2e10  # ignored, and replaced by a good one
        assert json.loads(cache.read_text()) == {key: 2e10}
    (tmp_path / "a file").write_text("")
    assert runtime.cpu_peak_flops(cache=tmp_path / "a file" / "peak.json")[0] == 2e10  # cannot be written
    monkeypatch.delenv("GPT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runtime.peak_cache_path() == str(tmp_path / "gptkit" / "peak_flops.json")


def test_nominal_cpu_peak_only_with_the_highest_clock_known(tmp_path, monkeypatch):
    from gptkit import runtime
    cpuinfo, max_clock = tmp_path / "cpuinfo", tmp_path / "cpuinfo_max_freq"
    cpuinfo.write_text("model name\t: Some CPU\ncpu MHz\t\t: 2300.000\nflags\t\t: fpu avx fma avx2 avx512f\n")
    assert runtime.cpu_nominal_flops(2, cpuinfo, max_clock) == (None, None)  # 'cpu MHz' is not the highest
    max_clock.write_text("3500000\n")  # kHz
    flops, how = runtime.cpu_nominal_flops(2, cpuinfo, max_clock)
    assert flops == pytest.approx(2 * 3.5e9 * 64) and "highest clock" in how
    # the larger of the two figures, and the nominal one only in fp32
    monkeypatch.setattr(runtime, "measured_matmul_flops", lambda *a, **k: 1e11)
    monkeypatch.setattr(runtime, "cpu_nominal_flops", lambda threads: (flops, how))
    assert runtime.cpu_peak_flops("float32", cache=tmp_path / "peak.json") == (flops, how)
    assert runtime.cpu_peak_flops("bfloat16", cache=tmp_path / "peak.json")[0] == 1e11
    monkeypatch.setattr(runtime, "cpu_nominal_flops", lambda threads: (5e10, "nominal"))
    assert runtime.cpu_peak_flops("float32", cache=tmp_path / "peak.json")[0] == 1e11


# -----------------------------------------------------------------------------
# model.py copied alone into another project

@pytest.mark.slow
def test_model_py_works_copied_alone_into_an_empty_folder(tmp_path):
    """Only torch and the standard library: `from model import GPT, GPTConfig`, a training step, sampling,
    and GPT.from_pretrained through transformers, in a folder holding model.py and nothing else of ours."""
    import shutil
    import subprocess
    import sys

    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import ROOT
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=100)).eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        expected = hf(ids).logits[0, -1]
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    project = tmp_path / "elsewhere"
    project.mkdir()
    shutil.copy(ROOT / "model.py", project)
    code = """
import sys, torch
from model import GPT, GPTConfig
assert not any(m.split('.')[0] == 'gptkit' for m in sys.modules), 'the package was imported'
m = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=50))
x = torch.randint(0, 50, (2, 16))
_, loss = m(x, x); loss.backward()
assert m.generate(x[:, :4], 20, temperature=0).shape == (2, 24)
ref = torch.load(sys.argv[1] + '/expected.pt')
gpt2 = GPT.from_pretrained(sys.argv[1] + '/gpt2-tiny').eval()
logits, _ = gpt2(ref['ids'])
torch.testing.assert_close(logits[0, -1], ref['logits'], atol=1e-5, rtol=1e-5)
try:
    GPTConfig(n_head=5, n_embd=32)
except ValueError as e:
    print('refused:', e)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=project, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "refused: n_embd=32 does not divide into n_head=5 heads" in p.stdout

"""Int8 weights for CPU decoding, checked against the fp32 model they come from and against full
recomputation."""

import runpy
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import ROOT, play_text
from gptkit import quantize
from gptkit.errors import UserError
from gptkit.generate import KVCache, generate
from model import GPT, GPTConfig

OPTIONS = [
    {},
    dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu"),
    dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=2),
    dict(mlp="relu2", tie_embeddings=False, logit_softcap=15.0, bias=False),
    dict(pos_emb="rope", n_kv_head=1, mlp_hidden=96, norm_eps=1e-6, rope_theta=500.0),
]


def tiny(**kw):
    args = dict(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    args.update(kw)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**args)).eval()
    with torch.no_grad():  # every norm gain and bias away from its trivial init, so a dropped one shows
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def trained():
    """A character model trained here for a few seconds on the tests' play corpus, so greedy choices
    have the margins of a real model (a random one's top two logits are often within rounding), and
    held-out batches to score it on."""
    text = play_text(100_000)
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    split = int(0.9 * len(data))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=len(chars), n_layer=2, n_head=4, n_embd=64, dropout=0.0,
                          bias=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)

    def batch(lo, hi, n):
        ix = torch.randint(lo, hi - 33, (n,), generator=g)
        return torch.stack([data[i:i + 32] for i in ix]), torch.stack([data[i + 1:i + 33] for i in ix])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from a second thread, and loses 10x on a busy machine
    try:
        for _ in range(120):  # the loss falls from 4.0 to about 2.6
            _, loss = model(*batch(0, split, 16))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), batch(split, len(data), 32)


def test_int8_model_scores_and_decodes_like_the_fp32_one(trained):
    model, (x, y) = trained
    q = quantize.quantize_int8(model)
    with torch.inference_mode():
        logits, loss = model(x, y)
        qlogits, qloss = q(x, y)
    # Rounding weights to 1/254 of each row's range and inputs to 1/255 of theirs moves the logits by
    # about 1% of their spread (RMS; the largest single change 17%), the held-out loss by 0.01%.
    spread = logits.std()
    assert (qlogits - logits).pow(2).mean().sqrt() < 0.02 * spread
    assert (qlogits - logits).abs().max() < 0.3 * spread
    assert abs(qloss.item() - loss.item()) < 0.01 * loss.item()
    prompts = x[:8, :8]
    ours = generate(model, prompts, 24, temperature=0)[:, 8:]
    theirs = generate(q, prompts, 24, temperature=0)[:, 8:]
    assert (ours == theirs).float().mean() >= 0.9  # nearly the same greedy text (a near-tie may flip)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "gpt2")
def test_every_architecture_option_quantizes_and_its_cache_matches_recomputation(options):
    model = tiny(**options)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize.quantize_int8(model)
    # every Linear, the head included, is int8 in the copy; the model given is untouched
    assert not any(type(m) is torch.nn.Linear for m in q.modules())
    assert all(type(m) is not torch.nn.Linear or m.weight.dtype == torch.float32 for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Teacher-forced: the same 12 tokens fed through the int8 model's cache one at a time, and the
    # whole sequence recomputed. Not bit-equal: each call quantizes its input with one scale, taken
    # over one position in decoding and over all of them in recomputation.
    seq = generate(model, torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(1)), 12, temperature=0)
    with torch.inference_mode():
        full = q.all_logits(seq)  # (B, T, vocab)
        ref = model.all_logits(seq)
        cache = KVCache.for_model(q, 2)
        stepped = [q(seq[:, :6], cache=cache)[0][:, -1]]
        stepped += [q(seq[:, t:t + 1], cache=cache)[0][:, -1] for t in range(6, seq.size(1) - 1)]
    stepped = torch.stack(stepped, dim=1)  # (B, 12, vocab): logits after 6 .. 17 tokens
    spread = ref.std()  # the largest differences measured: 5-8% of the logits' spread, both ways
    assert (stepped - full[:, 5:-1]).abs().max() < 0.15 * spread
    assert (full - ref).abs().max() < 0.15 * spread  # and both near the fp32 model's


def test_int8_needs_a_cpu_with_quantized_kernels_and_float32(monkeypatch):
    with pytest.raises(UserError, match="needs a CPU"):
        quantize.check_supported("cuda")
    with pytest.raises(UserError, match="dtype=bfloat16"):
        quantize.check_supported("cpu", "bfloat16")
    monkeypatch.setattr(torch.backends, "quantized", SimpleNamespace(supported_engines=["none"]))  # a build without
    with pytest.raises(UserError, match="quantized CPU kernels"):
        quantize.check_supported("cpu")
    monkeypatch.setattr(torch, "ao", SimpleNamespace())  # a PyTorch that has removed torch.ao.quantization
    with pytest.raises(UserError, match="no longer has"):
        quantize.check_supported("cpu")


def test_sample_refuses_int8_with_another_dtype_before_reading_any_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sample.py", "--quantize=int8", "--dtype=bfloat16", "--device=cpu",
                                      f"--out_dir={tmp_path / 'no-run-here'}"])
    with pytest.raises(UserError, match="dtype=bfloat16") as e:
        runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")
    assert e.value.status == 2

"""The CUDA paths, on a CUDA GPU: fused attention kernels, bf16 and fp16 with its loss scaler, compile,
fused AdamW, pinned batches, resume, KV-cache decoding (eager and compiled), a GPU run sampled on a
CPU, and Muon. Skipped, with one reason, where there is no GPU; on one it takes a few minutes:

    python -m pytest -q -n 0 tests/test_gpu.py

docs/gpu.md says what the CPU suite covers of the same paths, and how to run the benchmarks."""

import math

import pytest
import torch

from conftest import TINY, read_metrics, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (see docs/gpu.md)")

ITERS = 40
# TINY's model on the GPU, a little wider; the runs compared share these
CUDA = [*TINY, "--device=cuda", "--n_embd=64", "--eval_iters=4", "--learning_rate=3e-3", "--warmup_iters=4",
        f"--lr_decay_iters={ITERS}", f"--eval_interval={ITERS // 2}", "--log_interval=1", "--dataset=play_char"]


def train(out, *extra, iters=ITERS):
    # later keys win: TINY's --compile=False and --dtype=float32 are overridden by extra where given
    return run("train.py", *CUDA, f"--out_dir={out}", f"--max_iters={iters}", *extra)


def val_losses(out):
    return {r["iter"]: r["val_loss"] for r in read_metrics(out) if "val_loss" in r}


def tiny_gpt(device="cuda", **kw):
    from model import GPT, GPTConfig
    args = dict(block_size=256, vocab_size=512, n_layer=2, n_head=4, n_embd=256, dropout=0.0, bias=False)
    args.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args)).to(device)


@pytest.fixture(scope="module")
def bf16_run(char_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "bf16"
    p = train(out, "--dtype=bfloat16")
    return out, p


# -----------------------------------------------------------------------------
# attention

def test_sdpa_uses_a_fused_kernel_for_bf16_training_shapes_and_matches_the_manual_path():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model = tiny_gpt()
    x = torch.randint(0, 512, (4, 256), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        # only the fused kernels allowed: if neither fits these shapes, SDPA raises instead of falling back
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            fused, loss = model(x, x)
            loss.backward()  # the fused backward too
        model.set_attention("manual")
        manual, _ = model(x, x)
    # bf16 rounds to ~3 significant digits; the two paths sum in different orders
    assert (fused.float() - manual.float()).abs().max().item() < 5e-2


# -----------------------------------------------------------------------------
# precision: bf16, and fp16 with the loss scaler

def test_bf16_run_lowers_the_loss(bf16_run):
    out, p = bf16_run
    assert "device cuda" in p.stdout and "dtype bfloat16" in p.stdout
    losses = val_losses(out)
    assert losses[ITERS] < losses[0] - 0.5


def test_fp16_run_with_the_loss_scaler_lowers_the_loss(char_data, tmp_path):
    out = tmp_path / "fp16"
    p = train(out, "--dtype=float16")
    losses = val_losses(out)
    assert losses[ITERS] < losses[0] - 0.5, p.stdout[-2000:]
    scaler = torch.load(out / "ckpt.pt", weights_only=True)["scaler"]
    assert scaler is not None and scaler["scale"] > 0


# -----------------------------------------------------------------------------
# compile, fused AdamW, pinned batches

def losses_of_steps(model, steps=5, fused=False, loop=False):
    from gptkit import optim
    opt = optim.configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), fused=fused)
    if loop:  # AdamW's plain per-tensor loop instead of its default on CUDA (foreach: batched per group)
        for group in opt.param_groups:
            group["foreach"] = False
    g = torch.Generator(device="cuda").manual_seed(0)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 512, (4, 256), device="cuda", generator=g)
        _, loss = model(x, x.roll(-1, dims=1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_compile_on_and_off_train_alike():
    eager = losses_of_steps(tiny_gpt())
    compiled = losses_of_steps(torch.compile(tiny_gpt()))
    # fp32 with TF32 off by default in this process; compiled kernels sum in another order
    assert all(abs(a - b) < 1e-3 for a, b in zip(eager, compiled)), (eager, compiled)


def test_fused_adamw_equals_the_per_tensor_loop():
    a, b = tiny_gpt(), tiny_gpt()
    la, lb = losses_of_steps(a, fused=True), losses_of_steps(b, loop=True)
    assert all(abs(x - y) < 1e-5 for x, y in zip(la, lb)), (la, lb)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p - q).abs().max().item() < 1e-5, name


def test_pinned_non_blocking_batches_equal_plain_ones(char_data):
    from gptkit.batches import open_source
    pinned = open_source("play_char", "", 32, 8, 1337, "cuda", True)
    plain = open_source("play_char", "", 32, 8, 1337, "cuda", False)
    for it in range(3):
        for micro in range(2):
            (xp, yp), (x, y) = pinned.train_batch(it, micro), plain.train_batch(it, micro)
            assert xp.is_cuda and torch.equal(xp, x) and torch.equal(yp, y)
    torch.cuda.synchronize()


# -----------------------------------------------------------------------------
# resume, generation, a GPU run on a CPU, Muon

def test_resume_on_cuda_continues_like_an_uninterrupted_run(bf16_run, tmp_path):
    whole, _ = bf16_run
    halves = tmp_path / "halves"
    train(halves, "--dtype=bfloat16", iters=ITERS // 2)
    run("train.py", "--init_from=resume", f"--out_dir={halves}", f"--max_iters={ITERS}", "--device=cuda",
        "--dtype=bfloat16", "--compile=False")
    a = {r["iter"]: r["loss"] for r in read_metrics(whole) if "loss" in r}
    b = {r["iter"]: r["loss"] for r in read_metrics(halves) if "loss" in r}
    assert sorted(a) == sorted(b) == list(range(ITERS))
    # CUDA kernels may add in a different order from run to run (atomics in some backward kernels),
    # so resume is compared to a tolerance here, where on a CPU it is bit for bit
    worst = max(abs(a[i] - b[i]) for i in a)
    assert worst < 1e-2, worst


def test_kv_cache_generation_equals_recomputation_eager_and_compiled():
    from gptkit.generate import compile_for_decoding, generate
    model = tiny_gpt(block_size=64).eval()
    prompt = torch.randint(0, 512, (2, 8), device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    with torch.no_grad():
        reference = model.generate(prompt, 80, temperature=0)  # full recomputation, sliding past 64
        cached = generate(model, prompt, 80, temperature=0)
        compiled, failure = compile_for_decoding(model)
        assert failure is None, failure
        from_compiled = generate(compiled, prompt, 80, temperature=0)
    assert torch.equal(cached, reference)
    # compiled kernels may round the last bit differently; greedy tokens agree unless two logits tie
    agree = (from_compiled == reference).float().mean().item()
    assert agree > 0.95, agree


def test_a_gpu_run_samples_on_a_cpu(bf16_run):
    out, _ = bf16_run
    p = run("sample.py", f"--out_dir={out}", "--device=cpu", "--num_samples=1", "--max_new_tokens=50")
    assert len(p.stdout.split("---------------")[0]) > 20


def test_muon_trains_on_cuda(char_data, tmp_path):
    out = tmp_path / "muon"
    train(out, "--dtype=bfloat16", "--optimizer=muon", "--muon_lr=0.02")
    losses = val_losses(out)
    assert math.isfinite(losses[ITERS]) and losses[ITERS] < losses[0] - 0.5

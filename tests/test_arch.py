"""The architecture options, each against a reference: RMSNorm, the rotation, QK-norm and grouped-query
attention computed by hand, the MLPs by hand, soft-capping by its formula; the KV cache against full
recomputation with every option; export against transformers' GPT-2, Llama and Qwen3."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptkit.errors import UserError
from gptkit.generate import KVCache, generate
from model import GPT, MLP, CausalSelfAttention, GPTConfig, norm_layer

# each non-default value at least once; "modern" is what the CPU recipe's kind of model looks like
OPTIONS = {
    "gpt2": {},
    "rope": dict(pos_emb="rope", rope_theta=500.0),
    "rmsnorm": dict(norm="rmsnorm", norm_eps=1e-6),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2", mlp_hidden=48),
    "swiglu": dict(mlp="swiglu"),
    "gqa": dict(n_kv_head=2),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=5.0),
    "modern": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", n_kv_head=1, tie_embeddings=False,
                   logit_softcap=15.0, bias=False),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny ops: a second thread only waits for the first, ~10x slower when other work shares the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(seed=0, perturb=False, **kw):
    """A 2-layer, 4-head, 32-wide model. perturb adds noise to every weight, so that norm gains and
    biases are not their trivial init (a dropped one shows)."""
    args = dict(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    args.update(kw)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**args))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


# -----------------------------------------------------------------------------
# each option against a hand computation

def test_rmsnorm_is_the_root_mean_square_scaling():
    norm = norm_layer(GPTConfig(norm="rmsnorm", norm_eps=1e-6), 16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    by_hand = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    assert sum(p.numel() for p in norm.parameters()) == 16  # a scale and no bias
    torch.testing.assert_close(norm(x.float()).double(), by_hand, atol=1e-6, rtol=1e-5)


def rotate_by_hand(x, positions, theta):
    """Rotary embedding written as complex multiplication (RoFormer, eq. 34) in float64: dimension i and
    i + hs/2 form one complex number, turned by position * theta^(-2i/hs)."""
    hs = x.size(-1)
    i = torch.arange(hs // 2, dtype=torch.float64)
    angle = positions.double()[:, None] * theta ** (-2 * i / hs)  # (T, hs/2)
    z = torch.complex(x[..., :hs // 2].double(), x[..., hs // 2:].double()) * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag), dim=-1)


def attention_by_hand(attn, x, qk_norm, rope_theta):
    """Causal attention from the module's weights, written out: q, k, v split from c_attn, QK-norm as
    x / rms(x) * w per head, the rotation from rotate_by_hand, key/value head j // (n_head / n_kv_head)
    serving query head j, softmax of scaled scores, c_proj."""
    B, T, C = x.shape
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_size
    x = x.double()
    qkv = x @ attn.c_attn.weight.double().T + attn.c_attn.bias.double()
    q, k, v = qkv[..., :nh * hs], qkv[..., nh * hs:(nh + nkv) * hs], qkv[..., (nh + nkv) * hs:]
    heads = []
    for j in range(nh):
        qj = q[..., j * hs:(j + 1) * hs]
        g = j // (nh // nkv)
        kj, vj = k[..., g * hs:(g + 1) * hs], v[..., g * hs:(g + 1) * hs]
        if qk_norm:
            rms = lambda t: torch.sqrt((t * t).mean(-1, keepdim=True) + attn.q_norm.eps)  # noqa: E731
            qj = qj / rms(qj) * attn.q_norm.weight.double()
            kj = kj / rms(kj) * attn.k_norm.weight.double()
        if rope_theta:
            qj, kj = rotate_by_hand(qj, torch.arange(T), rope_theta), rotate_by_hand(kj, torch.arange(T), rope_theta)
        scores = qj @ kj.transpose(-1, -2) / math.sqrt(hs)
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        heads.append(scores.softmax(-1) @ vj)
    return torch.cat(heads, dim=-1) @ attn.c_proj.weight.double().T + attn.c_proj.bias.double()


@pytest.mark.parametrize("n_kv_head", [0, 2, 1])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_attention_matches_a_hand_computation(impl, pos_emb, qk_norm, n_kv_head):
    config = GPTConfig(n_head=4, n_embd=32, n_kv_head=n_kv_head, qk_norm=qk_norm, pos_emb=pos_emb, rope_theta=100.0)
    torch.manual_seed(0)
    attn = CausalSelfAttention(config)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    attn.sdpa = impl == "sdpa"
    x = torch.randn(2, 12, 32)
    rope = None
    if pos_emb == "rope":
        from model import rope_tables
        rope = rope_tables(config.head_size, config.rope_theta, 0, 12, "cpu")
    with torch.no_grad():
        ours = attn(x, rope)
    expected = attention_by_hand(attn, x, qk_norm, config.rope_theta if pos_emb == "rope" else 0)
    torch.testing.assert_close(ours.double(), expected, atol=2e-5, rtol=1e-4)
    if n_kv_head:  # the fused projection holds n_kv_head key and value heads
        assert attn.c_attn.weight.shape == ((4 + 2 * n_kv_head) * 8, 32)


def test_rope_scores_depend_only_on_the_distance():
    # what rotary embeddings are for (RoFormer, section 3.4.2): q.k after rotation is a function of
    # the distance between the positions, so shifting both leaves every score unchanged
    from model import apply_rope, rope_tables
    q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)

    def score(m, n):
        cm, sm = rope_tables(16, 10000.0, m, 1, "cpu")
        cn, sn = rope_tables(16, 10000.0, n, 1, "cpu")
        return (apply_rope(q, cm.double(), sm.double()) * apply_rope(k, cn.double(), sn.double())).sum().item()

    assert score(7, 3) == pytest.approx(score(107, 103), abs=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)


@pytest.mark.parametrize("kind", ["gelu", "relu2", "swiglu"])
def test_mlp_matches_a_hand_computation(kind):
    config = GPTConfig(n_embd=32, n_head=4, mlp=kind, bias=True)
    torch.manual_seed(0)
    mlp = MLP(config)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    w1, b1 = mlp.c_fc.weight.double(), mlp.c_fc.bias.double()
    w2, b2 = mlp.c_proj.weight.double(), mlp.c_proj.bias.double()
    if kind == "gelu":
        h = x @ w1.T + b1
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    elif kind == "relu2":  # Primer: max(0, x)^2
        h = torch.clamp(x @ w1.T + b1, min=0) ** 2
    else:  # Shazeer 2020: (Swish(x W) * x V) W2, gate rows first in c_fc
        H = w1.size(0) // 2
        gate, up = x @ w1[:H].T + b1[:H], x @ w1[H:].T + b1[H:]
        h = gate / (1 + torch.exp(-gate)) * up
    with torch.no_grad():
        torch.testing.assert_close(mlp(x.float()).double(), h @ w2.T + b2, atol=1e-5, rtol=1e-4)


def test_swiglu_width_keeps_the_parameter_count():
    # three matrices of 8/3 * n_embd against GELU's two of 4 * n_embd (Shazeer 2020)
    for n_embd, extra in ((768, 0.0), (128, 0.032)):
        gelu = sum(p.numel() for p in MLP(GPTConfig(n_embd=n_embd, n_head=4, bias=False)).parameters())
        swiglu = sum(p.numel() for p in MLP(GPTConfig(n_embd=n_embd, n_head=4, bias=False, mlp="swiglu")).parameters())
        assert gelu <= swiglu <= gelu * (1 + extra)
    assert GPTConfig(n_embd=128, n_head=4, mlp="swiglu", mlp_hidden=300).mlp_width == 300


def test_logit_softcap_is_cap_tanh_of_the_logits():
    capped = tiny(logit_softcap=1.0, perturb=True)
    plain = GPT(GPTConfig(**{**capped.config.__dict__, "logit_softcap": 0.0})).eval()
    plain.load_state_dict(capped.state_dict())
    idx, targets = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        logits, loss = capped(idx, targets)
        raw = plain.all_logits(idx)
    torch.testing.assert_close(logits, 1.0 * torch.tanh(raw / 1.0))
    assert raw.abs().max() > 1.0 > logits.abs().max()  # the cap did bite
    torch.testing.assert_close(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def test_untied_head_is_its_own_parameter_through_training_and_loading():
    model = tiny(tie_embeddings=False).train()
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert abs(model.lm_head.weight.std().item() - 0.02) < 2e-3  # GPT-2's init, like the embedding
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    _, loss = model(torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16)))
    loss.backward()
    opt.step()
    assert not torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    back = GPT.with_weights(model.config, model.state_dict()).eval()
    assert back.lm_head.weight is not back.transformer.wte.weight
    idx = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(back.all_logits(idx), model.eval().all_logits(idx))
    # the count leaves out the embedding (a lookup) and keeps the head (a matmul): the tied model's count
    assert back.get_num_params() == tiny().get_num_params()


@pytest.mark.parametrize("options", ["swiglu", "modern"])
def test_init_keeps_gpt2s_scales(options):
    model = tiny(n_layer=8, n_embd=64, **OPTIONS[options])
    proj = torch.cat([p.flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.transformer.h])
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * 8)) < 1e-3  # residual projections scaled with depth
    assert abs(fc.std().item() - 0.02) < 1e-3
    gains = [p for n, p in model.named_parameters() if p.dim() == 1 and n.endswith("weight")]
    assert gains and all(torch.equal(g, torch.ones_like(g)) for g in gains)  # norms (and QK-norms) start as identity


def test_default_is_gpt2s_network_with_its_names():
    names = set(GPT(GPTConfig(n_layer=1, n_embd=32, n_head=4, vocab_size=97, block_size=8)).state_dict())
    assert names == {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
                     "lm_head.weight"} | {f"transformer.h.0.{m}.{p}" for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2",
                                                                                   "mlp.c_fc", "mlp.c_proj")
                                          for p in ("weight", "bias")}
    assert GPTConfig().options() == {}


@pytest.mark.parametrize("args, words", [
    (dict(n_head=4, n_kv_head=3), ["n_kv_head=3", "n_head=4"]),
    (dict(n_head=4, n_kv_head=8), ["n_kv_head=8"]),
    (dict(n_head=4, n_embd=36, pos_emb="rope"), ["pos_emb=rope", "odd"]),
    (dict(n_head=5, n_embd=32), ["n_embd=32", "n_head=5"]),
    (dict(mlp="geglu"), ["mlp='geglu'", "swiglu"]),
    (dict(logit_softcap=-1.0), ["logit_softcap=-1.0"]),
])
def test_impossible_settings_are_one_sentence(args, words):
    with pytest.raises(ValueError) as e:  # model.py stands alone: the scripts turn it into their sentence
        GPTConfig(**args)
    assert all(w in str(e.value) for w in words), str(e.value)


# -----------------------------------------------------------------------------
# generation with every option: the KV cache equals full recomputation

@pytest.mark.parametrize("options", OPTIONS)
def test_sdpa_matches_manual_attention(options):
    model = tiny(perturb=True, **OPTIONS[options])
    idx, targets = torch.randint(0, 97, (3, 32)), torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        a, loss_a = model(idx, targets)
        model.set_attention("manual")
        b, loss_b = model(idx, targets)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options", OPTIONS)
def test_kv_cache_equals_recomputation_within_and_past_block_size(options):
    model = tiny(block_size=24, perturb=True, **OPTIONS[options])
    prompt = torch.randint(0, 97, (2, 9))
    # tokens: 9 + 30 runs 15 past the context, so the window slides
    assert torch.equal(generate(model, prompt, 30, temperature=0), model.generate(prompt, 30, temperature=0))
    # logits: a prefill, a chunk after a past (shifted mask and rotation), then one position at a time
    seq = torch.randint(0, 97, (2, 24))
    cache = KVCache.for_model(model, 2)
    with torch.no_grad():
        model(seq[:, :7], cache=cache)
        chunk = model.all_logits(seq[:, 7:11], cache)
        torch.testing.assert_close(chunk, model.all_logits(seq[:, :11])[:, 7:], atol=1e-5, rtol=0)
        for t in range(11, 24):
            step, _ = model(seq[:, t:t + 1], cache=cache)
            torch.testing.assert_close(step, model(seq[:, :t + 1])[0], atol=1e-5, rtol=0)
    assert cache.k.size(2) == model.config.kv_heads  # the cache holds only the key/value heads


@pytest.mark.parametrize("options", ["untied", "modern"])
def test_crop_vocab_keeps_logits(options):
    model = tiny(perturb=True, **OPTIONS[options])
    idx = torch.randint(0, 90, (2, 12))
    with torch.no_grad():
        full = model.all_logits(idx)
        model.crop_vocab(90)
        cropped = model.all_logits(idx)
    torch.testing.assert_close(cropped, full[..., :90])
    assert int(generate(model, idx, 30, temperature=1.0)[:, 12:].max()) < 90


# -----------------------------------------------------------------------------
# export: the transformers model from the written folder computes what ours computes

transformers_options = {
    "gpt2 relu2 untied": dict(mlp="relu2", mlp_hidden=48, tie_embeddings=False, norm_eps=1e-6, bias=False),
    "gpt2 tanh-gelu": dict(gelu_approximate="tanh"),
    "llama": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False),
    "llama gqa untied biases": dict(pos_emb="rope", rope_theta=500.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu",
                                    n_kv_head=2, tie_embeddings=False, bias=True),
    "qwen3": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False),
    "qwen3 mqa untied": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_head=1,
                             tie_embeddings=False, mlp_hidden=40, bias=False),
}


@pytest.mark.parametrize("name", transformers_options)
def test_export_parity_with_transformers(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    from gptkit import hf as hf_io
    model = tiny(perturb=True, **transformers_options[name])
    hf_io.to_transformers(model, 90).save_pretrained(tmp_path)
    model.crop_vocab(90)
    theirs, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    expected = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[name.split()[0]]
    assert type(theirs).__name__ == expected
    tied = theirs.lm_head.weight.data_ptr() == theirs.get_input_embeddings().weight.data_ptr()
    assert tied == model.config.tie_embeddings
    theirs.eval()
    idx = torch.randint(0, 90, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.all_logits(idx)
        assert (ours - theirs(idx).logits).abs().max().item() <= 1e-5
    prompt = idx[:, :6]
    ref = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20,
                          pad_token_id=0)
    assert torch.equal(generate(model, prompt, 20, temperature=0), ref)


@pytest.mark.parametrize("args, words", [
    (dict(logit_softcap=30.0), ["logit_softcap=30.0"]),
    (dict(norm="rmsnorm"), ["norm=rmsnorm", "pos_emb=learned"]),
    (dict(qk_norm=True), ["qk_norm=True", "pos_emb=learned"]),
    (dict(mlp="swiglu"), ["mlp=swiglu", "pos_emb=learned"]),
    (dict(n_kv_head=2), ["n_kv_head=2", "pos_emb=learned"]),
    (dict(pos_emb="rope", mlp="swiglu"), ["norm=layernorm", "pos_emb=rope"]),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="relu2"), ["mlp=relu2", "pos_emb=rope"]),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=True), ["qk_norm=True", "bias=True"]),
])
def test_export_refuses_what_no_transformers_class_computes(args, words):
    from gptkit import hf as hf_io
    with pytest.raises(UserError) as e:
        hf_io.export_architecture(GPTConfig(**args))
    assert all(w in str(e.value) for w in words) and "cannot be exported" in str(e.value), str(e.value)


# -----------------------------------------------------------------------------
# end to end: train -> resume (bit for bit) -> sample -> chat -> export, one trained run per configuration

E2E = {
    # every non-default value; logit_softcap makes it one no transformers class computes
    "everything": dict(pos_emb="rope", rope_theta=500.0, norm="rmsnorm", norm_eps=1e-6, qk_norm=True, mlp="relu2",
                       mlp_hidden=48, n_kv_head=1, tie_embeddings=False, logit_softcap=15.0),
    # the same with swiglu and no cap: Qwen3's network
    "qwen3": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", n_kv_head=1, tie_embeddings=False),
}
# dropout and gradient accumulation on, so the random state and the micro-step schedule must resume too
SCHEDULE = ["--dataset=play_char", "--eval_interval=6", "--eval_iters=2", "--learning_rate=3e-3", "--warmup_iters=2",
            "--lr_decay_iters=12", "--log_interval=1", "--dropout=0.1", "--gradient_accumulation_steps=2"]


def greedy_text(model, tok, prompt, n):
    """n greedy tokens after prompt by full recomputation (the reference for the KV cache), decoded."""
    ids = torch.tensor([tok.encode(prompt) if isinstance(prompt, str) else prompt])
    return tok.decode(model.generate(ids, n, temperature=0)[0, ids.size(1):].tolist())


@pytest.mark.slow
@pytest.mark.parametrize("name", E2E)
def test_options_through_train_resume_sample_chat_export(name, char_data, tmp_path):
    import json

    from test_resume import assert_same, load, without_timing

    from conftest import CORPUS_VOCAB, TINY, assert_clean_error, read_metrics, run
    from gptkit import checkpoint, conversation, loading
    from gptkit.batches import Batches
    from gptkit.tokenizer import StopText, load_tokenizer

    options = [f"--{k}={v}" for k, v in E2E[name].items()]
    ref, out = tmp_path / "ref", tmp_path / "run"
    run("train.py", *TINY, *SCHEDULE, *options, "--max_iters=12", f"--out_dir={ref}")
    run("train.py", *TINY, *SCHEDULE, *options, "--max_iters=6", f"--out_dir={out}")
    # resumed without the options: the architecture comes back from the checkpoint's model_args alone
    p = run("train.py", *TINY, *SCHEDULE, "--max_iters=12", f"--out_dir={out}", "--init_from=resume")
    assert "resuming from" in p.stdout and "note:" not in p.stdout
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(ref))  # every loss, bit for bit
    a, b = load(ref / "ckpt.pt"), load(out / "ckpt.pt")
    a.pop("elapsed_s"), b.pop("elapsed_s")  # wall time
    for k in ("init_from", "out_dir"):  # what the two commands differed in
        a["config"].pop(k), b["config"].pop(k)
    assert_same(a, b)  # weights, optimizer, random state, model_args, and the config resumed with them

    # the network sample, chat and export build from the checkpoint is the one that trained: its val
    # loss on the same batches is the one train.py logged
    path = out / "ckpt.pt"
    model = loading.build_model(checkpoint.load(path), path, dropout=0.0).eval()
    assert model.config.options() == E2E[name]
    batches = Batches(str(char_data), "play_char", 32, 8, 1337, "cpu")
    with torch.no_grad():
        val = sum(model(*batches.eval_batch("val", k))[1].item() for k in range(2)) / 2
    assert val == pytest.approx([r for r in read_metrics(out) if "val_loss" in r][-1]["val_loss"], abs=1e-5)

    # sample.py: greedy through the KV cache, past block_size (6 + 40 > 32), equals full recomputation
    tok = load_tokenizer(loading.find_meta(checkpoint.load(path), out)[0])
    p = run("sample.py", f"--out_dir={out}", "--start=ROMEO:", "--num_samples=1", "--max_new_tokens=40",
            "--temperature=0", "--device=cpu")
    assert p.stdout.split("\n---------------")[0] == "ROMEO:" + greedy_text(model, tok, "ROMEO:", 40)

    # chat.py: one reply, the same greedy continuation of the play transcript, cut at the next speaker
    p = run("chat.py", f"--out_dir={out}", "--prompt=good night", "--temperature=0", "--max_new_tokens=20",
            "--device=cpu")
    play = conversation.PLAY
    reply = greedy_text(model, tok, play.fit(tok.encode, [], "good night", 32 - 16), 20)
    text = StopText(play.stops(), line_stop=play.line_stop())  # cut where chat.py cuts a play's reply
    shown = "".join(text.push(c) for c in reply)
    shown += "" if text.stopped else text.flush()
    assert p.stdout == play.bot + shown + "\n\n"

    # export.py: Qwen3 computes the same logits and tokens; the capped model is refused, nothing written
    dest = tmp_path / "hf"
    p = run("export.py", f"--out_dir={out}", f"--export_dir={dest}", check=False)
    if name == "everything":
        assert_clean_error(p, words=["logit_softcap=15.0", "cannot be exported"])
        assert not dest.exists()
        # bench.py times the network the same keys build
        p = run("bench.py", "--dataset=play_char", *TINY, *options, "--steps=1", "--repeats=1", "--warmup=0")
        result = json.loads(p.stdout.strip().splitlines()[-1])
        assert result["options"] == model.config.options() and result["params"] == model.get_num_params()
        # an impossible combination: one sentence from train.py
        p = run("train.py", *TINY, "--dataset=play_char", "--n_kv_head=3", f"--out_dir={tmp_path / 'bad'}", check=False)
        assert_clean_error(p, status=2, words=["n_kv_head=3", "n_head=2"])
        return
    assert p.returncode == 0 and "as Qwen3ForCausalLM" in p.stdout, p.stderr
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(dest).eval()
    assert theirs.config.vocab_size == CORPUS_VOCAB
    idx = torch.randint(0, CORPUS_VOCAB, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model.all_logits(idx) - theirs(idx).logits).abs().max().item() <= 1e-5
    prompt = idx[:, :6]
    ref_tokens = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20,
                                 pad_token_id=0)
    assert torch.equal(generate(model, prompt, 20, temperature=0), ref_tokens)


@pytest.mark.slow
def test_llama_export_runs_in_a_text_generation_pipeline(gpt2_encoding, tmp_path, monkeypatch):
    """A model in GPT-2's vocabulary with Llama's architecture (biases and grouped-query attention
    too) exported with its tokenizer: transformers.pipeline writes what our model writes."""
    transformers = pytest.importorskip("transformers")
    from conftest import CORPUS, TINY, run
    from gptkit import checkpoint, loading

    data = tmp_path / "bpe"
    data.mkdir()
    (data / "corpus.txt").write_text(CORPUS.read_text(encoding="utf-8")[:60000], encoding="utf-8")
    run("data/corpus/prepare.py", f"--input={data / 'corpus.txt'}", "--tokenizer=gpt2", f"--out={data}")
    out = tmp_path / "run"
    run("train.py", f"--data_dir={data}", *TINY, "--max_iters=6", "--eval_interval=6", "--eval_iters=1",
        "--learning_rate=1e-2", "--warmup_iters=0", "--pos_emb=rope", "--norm=rmsnorm", "--mlp=swiglu", "--bias=True",
        "--n_kv_head=1", f"--out_dir={out}")
    p = run("export.py", f"--out_dir={out}", f"--export_dir={tmp_path / 'hf'}")
    assert "as LlamaForCausalLM" in p.stdout
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    assert type(gen.model).__name__ == "LlamaForCausalLM"
    text = gen("ROMEO:", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    path = out / "ckpt.pt"
    ours = loading.build_model(checkpoint.load(path), path).eval()
    ids = torch.tensor([gpt2_encoding.encode("ROMEO:")])
    new = generate(ours, ids, 8, temperature=0)[0, ids.size(1):].tolist()
    if 50256 in new:  # transformers stops at <|endoftext|>
        new = new[:new.index(50256)]
    assert text == "ROMEO:" + gpt2_encoding.decode(new)

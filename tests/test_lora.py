"""LoRA: adapters start as the base model exactly, only they train, merging computes what they compute
with every architecture option, a LoRA run saves adapters alone and resumes bit for bit like an
uninterrupted run, its base is checked whenever it is rebuilt, and its export is the merged model or
PEFT's adapter format, both checked against transformers (and peft.PeftModel where peft is installed)."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from gptkit import configurator
from conftest import CORPUS_VOCAB, ROOT, TINY, export, nanogpt_checkpoint, read_metrics, run, script
from launcher import run_ranks
from test_arch import OPTIONS  # each architecture option at least once
from test_resume import assert_resumed_equals_reference
from gptkit import checkpoint, hf, init_from, keys, loading, lora
from gptkit.dataset import read_meta
from gptkit.errors import UserError
from gptkit.tokenizer import GPT2_VOCAB
from gptkit.optim import configure_optimizers
from model import GPT, GPTConfig

TOL = 1e-5  # fp32
EVERY_LAYER = "all-linear,lm_head"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny ops: a second thread only waits for the first, ~10x slower when other work shares the cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(seed=0, **kw):
    """A 2-layer, 4-head, 32-wide model with every weight perturbed (a dropped bias or gain shows)."""
    args = dict(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    args.update(kw)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**args))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def adapted(model, targets=EVERY_LAYER, rank=4, alpha=8.0, seed=1):
    """The model with adapters that have learnt something: B drawn (it starts at zero)."""
    lora.apply(model, rank, alpha, 0.0, targets, base=None)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, m in lora.adapted(model):
            m.lora_B.normal_(0, 0.05)
    return model.eval()


def logits(model, idx):
    with torch.no_grad():
        return model.all_logits(idx)


IDX = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(2))


# -----------------------------------------------------------------------------
# the adapters themselves

def test_an_adapted_layer_computes_the_paper_formula():
    """y = x W^T + b + alpha / r * x A^T B^T, computed by hand in float64."""
    base = torch.nn.Linear(16, 24)
    layer = lora.LoRALinear(base, rank=4, alpha=8.0, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 16)
    W, b, A, B = (t.detach().double() for t in (base.weight, base.bias, layer.lora_A, layer.lora_B))
    expected = x.double() @ W.T + b + 8.0 / 4 * (x.double() @ A.T) @ B.T
    assert (layer(x).double() - expected).abs().max().item() < 1e-5
    assert layer.weight is base.weight and layer.bias is base.bias  # the base's own parameters, same names


@pytest.mark.parametrize("option", OPTIONS)
def test_every_architecture_option_gets_adapters_that_start_as_the_base_and_merge_exactly(option):
    model = tiny(**OPTIONS[option])
    base_logits = logits(model, IDX)
    lora.apply(model, 4, 8.0, 0.0, EVERY_LAYER, base=None)
    n = model.config.n_layer
    assert [name for name, _ in lora.adapted(model)] == [
        f"transformer.h.{i}.{k}" for i in range(n) for k in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ] + ["lm_head"]
    # B = 0: the adapted model is the base model, bit for bit
    assert torch.equal(logits(model, IDX), base_logits)
    torch.manual_seed(1)
    with torch.no_grad():
        for _, m in lora.adapted(model):
            m.lora_B.normal_(0, 0.05)
    unmerged = logits(model, IDX)
    assert (unmerged - base_logits).abs().max().item() > 1e-2  # the adapters do change the model
    wte = model.transformer.wte.weight.detach().clone()
    merged = lora.merge(model)
    assert not lora.adapted(merged) and all(p.requires_grad for p in merged.parameters())
    assert set(merged.state_dict()) == set(tiny(**OPTIONS[option]).state_dict())  # the base's names, no others
    assert (logits(merged, IDX) - unmerged).abs().max().item() <= TOL
    # the head's update never reached the embedding: a tied head is untied by the merge
    assert torch.equal(merged.transformer.wte.weight, wte) and not merged.config.tie_embeddings \
        and merged.lm_head.weight is not merged.transformer.wte.weight


def test_lora_targets_pick_layers_and_a_misspelt_one_is_a_sentence():
    assert lora.kinds("c_attn") == ("attn.c_attn",)
    assert lora.kinds("lm_head, c_proj") == ("attn.c_proj", "mlp.c_proj", "lm_head")
    assert lora.kinds("mlp,attn.c_proj") == ("attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    model = adapted(tiny(), "attn.c_proj")
    assert [n for n, _ in lora.adapted(model)] == ["transformer.h.0.attn.c_proj", "transformer.h.1.attn.c_proj"]
    for bad in ("qproj", "c_attn,wte", ""):
        with pytest.raises(UserError, match="lora_targets=.*c_attn, attn.c_attn"):
            lora.kinds(bad)
    # PEFT's names for Llama and Qwen: q, k, v (gate, up) are one fused matrix here, named together
    assert lora.kinds("q_proj,k_proj,v_proj,down_proj") == ("attn.c_attn", "mlp.c_proj")
    with pytest.raises(UserError, match="fused matrix.*name all of q_proj, k_proj, v_proj"):
        lora.kinds("q_proj,v_proj")


def test_only_the_adapters_get_gradients_and_optimizer_state():
    model = adapted(tiny(dropout=0.1), "c_attn,mlp.c_fc,lm_head").train()
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_A", ".lora_B")) for n in trainable)
    opt = configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95))
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in in_opt} == {id(p) for p in model.parameters() if p.requires_grad}
    for _ in range(2):
        _, loss = model(IDX, IDX)
        loss.backward()
        assert all(p.grad is None for n, p in model.named_parameters() if n in base)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert set(opt.state) == {p for p in model.parameters() if p.requires_grad}  # no state for a base weight
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    # a frozen weight costs its forward and its input's gradient (4 FLOPs a parameter), not 6
    frozen = sum(p.numel() for n, p in model.named_parameters() if n in base and n != "transformer.wpe.weight")
    plain = tiny(dropout=0.1)
    plain_flops = plain.flops_per_token() + 6 * sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert model.flops_per_token() == plain_flops - 2 * frozen


def test_muon_scratch_and_fsdp_are_refused_with_lora(tmp_path):
    def check(*args):
        cfg = configurator.configure(keys.KEYS, argv=["--lora_rank=4", *args], announce=False)
        with pytest.raises(UserError) as e:
            keys.check(cfg)
        assert e.value.status == 2
        return str(e.value)

    assert "init_from=scratch has none to adapt" in check()
    assert "--optimizer=adamw" in check("--init_from=gpt2", "--optimizer=muon")
    assert "'qv'" in check("--init_from=gpt2", "--lora_targets=qv")
    assert "--parallel=ddp" in check("--init_from=gpt2", "--parallel=fsdp")


def test_a_rank_not_below_a_target_layers_width_is_refused_with_the_width():
    model = tiny(n_embd=32, n_head=4)  # c_attn is 96 x 32: rank 31 is low-rank, 32 is not
    lora.check_rank(model, 31, "c_attn")
    with pytest.raises(UserError) as e:
        lora.check_rank(model, 32, "c_attn")
    assert e.value.status == 2 and "lora_rank=32" in str(e.value) and "96 x 32, so 32" in str(e.value), str(e.value)
    with pytest.raises(UserError, match="lm_head is 97 x 32"):  # the head too (its width is n_embd)
        lora.check_rank(model, 40, "lm_head")


def test_the_lora_recipes_resolve_and_pass_the_checks():
    for name, targets in (("lora_shakespeare", ("attn.c_attn",)),
                          ("lora_sft", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))):
        cfg = configurator.configure(keys.KEYS, argv=[str(ROOT / "config" / f"{name}.py")], announce=False)
        keys.check(cfg)
        assert cfg.lora_rank == 8 and lora.kinds(cfg.lora_targets) == targets and cfg.init_from == "gpt2-medium"


# -----------------------------------------------------------------------------
# a LoRA run: a tiny transformers GPT-2 as its base, character data

@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A tiny random GPT-2 in transformers' layout over the tests' character vocabulary, with a longer
    context than the runs use (they crop it)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=CORPUS_VOCAB, n_positions=64, n_embd=32,
                                                                 n_layer=2, n_head=2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("hf-base") / "gpt2-tiny"
    model.save_pretrained(folder)
    return folder


LORA_RUN = ["--dataset=play_char", *TINY, "--lora_rank=4", "--lora_alpha=8", "--lora_dropout=0.1", "--dropout=0.1",
            "--lora_targets=c_attn,mlp.c_proj,lm_head", "--gradient_accumulation_steps=2", "--max_iters=12",
            "--eval_interval=6", "--eval_iters=2", "--keep_last=2", "--learning_rate=1e-2", "--warmup_iters=2",
            "--lr_decay_iters=12", "--loss_png=False"]


@pytest.fixture(scope="module")
def lora_run(char_data, hf_base, tmp_path_factory):
    """One short LoRA run, uninterrupted: adapter and model dropout on and gradient accumulation, so a
    resume must restore the random state and the micro-step schedule too."""
    out = tmp_path_factory.mktemp("lora") / "run"
    p = run("train.py", *LORA_RUN, f"--init_from={hf_base}", f"--out_dir={out}")
    assert "LoRA rank 4 (alpha 8, dropout 0.1) on 5 layers (attn.c_attn, mlp.c_proj, lm_head)" in p.stdout
    return out


@pytest.mark.serial
@pytest.mark.slow
def test_two_processes_train_the_adapters_like_one_process(char_data, hf_base, tmp_path):
    """Under torchrun (DDP over the adapters alone) the same global batch gives every step's loss and
    gradient norm, and the adapters, of one process (no dropout: each process draws its own)."""
    args = [*LORA_RUN, "--lora_dropout=0.0", "--dropout=0.0", "--max_iters=6", f"--init_from={hf_base}"]
    run("train.py", *args, f"--out_dir={tmp_path / 'one'}")
    ranks = run_ranks("train.py", [*args, f"--out_dir={tmp_path / 'two'}"], env={"OMP_NUM_THREADS": "1"})
    for rank, p in enumerate(ranks):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{p.stderr[-3000:]}"
    assert "2 processes (gloo)" in ranks[0].stdout
    one, two = ({r["iter"]: r for r in read_metrics(tmp_path / name) if "loss" in r} for name in ("one", "two"))
    assert sorted(one) == sorted(two) == list(range(6))
    for i in one:
        for k in ("loss", "grad_norm"):
            assert abs(one[i][k] - two[i][k]) <= 1e-5, (k, i, one[i][k], two[i][k])
    a, b = (torch.load(tmp_path / name / "ckpt.pt", weights_only=True)["model"] for name in ("one", "two"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() <= 1e-5 for k in a)


@pytest.mark.slow
def test_a_lora_checkpoint_holds_the_adapters_their_optimizer_and_the_base_identity(lora_run, hf_base):
    ckpt = torch.load(lora_run / "ckpt.pt", weights_only=True)
    assert sorted(ckpt["model"]) == sorted(f"{layer}.lora_{ab}" for ab in "AB" for layer in
                                           ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn",
                                            "transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj", "lm_head"])
    n_adapters = sum(t.numel() for t in ckpt["model"].values())
    moments = [t for s in ckpt["optimizer"]["state"].values() for k, t in s.items() if k != "step"]
    assert len(moments) == 2 * len(ckpt["model"]) and sum(t.numel() for t in moments) == 2 * n_adapters
    base, _ = loading.load_pretrained(str(hf_base))
    assert ckpt["lora"] == dict(rank=4, alpha=8.0, dropout=0.1, targets=["attn.c_attn", "mlp.c_proj", "lm_head"],
                                base=dict(source=str(hf_base), sha256=lora.fingerprint(base)))
    assert checkpoint.model_args(ckpt)["block_size"] == 32 and ckpt["config"]["lora_rank"] == 4
    # the adapters learnt, and the model the run trained is its base with them on top
    model = loading.build_model(ckpt, "ckpt.pt").eval()
    assert all(m.lora_B.abs().max() > 0 for _, m in lora.adapted(model))
    base.crop_block_size(32)
    assert all(torch.equal(p, model.state_dict()[k]) for k, p in base.state_dict().items())


@pytest.mark.slow
def test_a_resumed_lora_run_equals_the_uninterrupted_one(lora_run, tmp_path):
    """The run's state at iteration 6 (kept as ckpt_0000006.pt) resumed to 12 in a copy of the run
    folder: every logged loss and the whole final checkpoint are those of the uninterrupted run."""
    out = tmp_path / "resumed"
    shutil.copytree(lora_run, out)
    shutil.copyfile(out / "ckpt_0000006.pt", out / "ckpt.pt")
    p = run("train.py", "--init_from=resume", f"--out_dir={out}", "--device=cpu", "--compile=False", "--dtype=float32")
    assert f"resuming from {out / 'ckpt.pt'} at iteration 6" in p.stdout and "LoRA rank 4" in p.stdout
    assert [r["iter"] for r in read_metrics(out) if "loss" in r] == list(range(12))
    # every loss, grad norm and val loss bitwise; adapters, optimizer, random state, counters, settings
    assert_resumed_equals_reference(lora_run, out)


@pytest.mark.slow
def test_resume_keeps_the_adapters_shape_and_a_full_run_stays_full(lora_run, char_data, tmp_path):
    e = script("train.py", "--init_from=resume", f"--out_dir={lora_run}", "--lora_rank=8")
    assert "lora_rank=8 contradicts the run being resumed (lora_rank=4)" in str(e) and e.status == 2
    e = script("train.py", "--init_from=resume", f"--out_dir={lora_run}", "--lora_targets=c_attn")
    assert "lora_targets=c_attn contradicts" in str(e) and "attn.c_attn,mlp.c_proj,lm_head" in str(e)
    full = tmp_path / "full"
    nanogpt_checkpoint(full / "ckpt.pt")
    e = script("train.py", "--init_from=resume", f"--out_dir={full}", "--lora_rank=4")
    assert "which trains every weight" in str(e) and f"--init_from={full}" in str(e)


@pytest.mark.slow
def test_a_missing_or_changed_base_is_one_sentence(lora_run, hf_base, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(hf_base, base)
    ckpt = torch.load(lora_run / "ckpt.pt", weights_only=True)
    ckpt["lora"]["base"]["source"] = str(base)
    loading.build_model(ckpt, "run/ckpt.pt")  # the copy is the same base
    from safetensors.torch import load_file, save_file
    weights = load_file(base / "model.safetensors")
    weights["transformer.h.1.mlp.c_fc.bias"][3] += 1e-3
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match=f"the base model of run/ckpt.pt, {base}, has changed since its LoRA "
                                        f"adapters were trained"):
        loading.build_model(ckpt, "run/ckpt.pt")
    shutil.rmtree(base)
    with pytest.raises(UserError, match=f"the base model of run/ckpt.pt, {base}, is missing"):
        loading.build_model(ckpt, "run/ckpt.pt")


def test_a_base_that_moved_or_survives_as_a_numbered_copy_is_named_with_lora_base(tmp_path):
    """Adapters over a run's ckpt.pt, after that run went on (its ckpt.pt is newer; keep_last kept the old one
    as a numbered copy) or after the base moved: the refusal names the copy with the recorded checksum, and
    --lora_base uses it (the same model as before), a wrong one is refused, and no file is written."""
    base = tmp_path / "base" / "ckpt.pt"
    nanogpt_checkpoint(base)
    model = loading.build_model(checkpoint.load(str(base)), str(base), dropout=0.0)
    lora.apply(model, 2, 4.0, 0.0, "attn", lora.identify(model, str(base)))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # adapters that change the logits
    ckpt = dict(**checkpoint.model_entries(model.config), **lora.checkpoint_entries(model), iter_num=7)
    idx = IDX % CORPUS_VOCAB
    reference = logits(loading.build_model(ckpt, "run/ckpt.pt").eval(), idx)
    copy_ = base.parent / "ckpt_0000100.pt"
    shutil.copyfile(base, copy_)
    nanogpt_checkpoint(base, iter_num=200, compiled=False)
    newer = checkpoint.load(str(base))
    newer["model"]["transformer.ln_f.weight"] += 0.5  # the run went on: other weights at the same path
    torch.save(newer, base)
    files = {p: p.read_bytes() for p in base.parent.iterdir()}
    with pytest.raises(UserError) as e:
        loading.build_model(ckpt, "run/ckpt.pt")
    assert "has changed since its LoRA adapters were trained" in str(e.value)
    assert f"{copy_} holds those weights: add --lora_base={copy_}" in str(e.value), str(e.value)
    assert "put the" not in str(e.value)  # never sent to put an old base back over the newer run
    model = loading.build_model(ckpt, "run/ckpt.pt", lora_base=str(copy_)).eval()
    assert torch.equal(logits(model, idx), reference)
    assert model.lora["base"]["source"] == str(copy_)  # what a save of this run records from now on
    with pytest.raises(UserError, match=f"lora_base={base} is not the base the LoRA adapters of run/ckpt.pt "
                                        f"were trained on"):
        loading.build_model(ckpt, "run/ckpt.pt", lora_base=str(base))
    assert {p: p.read_bytes() for p in base.parent.iterdir()} == files
    moved = tmp_path / "moved"
    (base.parent).rename(moved)
    with pytest.raises(UserError, match="is missing: .*name it with --lora_base=PATH"):
        loading.build_model(ckpt, "run/ckpt.pt")
    model = loading.build_model(ckpt, "run/ckpt.pt", lora_base=str(moved / copy_.name)).eval()
    assert torch.equal(logits(model, idx), reference)


@pytest.mark.slow
def test_a_run_folder_or_checkpoint_brings_weights_for_lora_and_a_lora_run_brings_its_merged_model(lora_run, char_data,
                                                                                                  tmp_path):
    base_ckpt = tmp_path / "base" / "ckpt.pt"
    nanogpt_checkpoint(base_ckpt)

    def start(init, *args):
        cfg = configurator.configure(keys.KEYS, argv=["--dataset=play_char", *TINY, f"--init_from={init}",
                                                      f"--out_dir={tmp_path / 'new'}", *args], announce=False)
        s = init_from.locate(cfg, keys.KEYS, keys.MACHINE_KEYS)
        keys.check(s.cfg)
        return s.build_model(meta=read_meta(char_data), data_dir="play_char")

    for init in (base_ckpt.parent, base_ckpt):  # a run folder and a checkpoint file
        model, said = start(init, "--lora_rank=2", "--lora_targets=attn")
        assert "LoRA rank 2" in said and len(lora.adapted(model)) == 4
        assert model.lora["base"] == dict(source=str(base_ckpt), sha256=lora.fingerprint(
            loading.build_model(checkpoint.load(str(base_ckpt)), "base", dropout=0.0)))
    # full fine-tuning from a LoRA run starts from its merged model; new adapters go over that
    trained = loading.build_model(checkpoint.load(str(lora_run / "ckpt.pt")), "run").eval()
    idx = IDX % CORPUS_VOCAB
    for args in ((), ("--lora_rank=2",)):
        model, _ = start(lora_run, "--dropout=0.0", *args)
        assert len(lora.adapted(model)) == (2 if args else 0)  # the default target: c_attn in 2 blocks
        assert not model.config.tie_embeddings  # the run adapted its tied head
        assert (logits(model.eval(), idx) - logits(trained, idx)).abs().max().item() <= TOL


@pytest.mark.slow
def test_sample_and_chat_load_the_run_with_its_adapters_merged(lora_run):
    model, tok, desc = loading.load_for_inference("resume", str(lora_run))
    assert f"LoRA adapters over {checkpoint.load(str(lora_run / 'ckpt.pt'))['lora']['base']['source']}" in desc
    assert not lora.adapted(model) and tok.vocab_size == CORPUS_VOCAB
    trained = loading.build_model(checkpoint.load(str(lora_run / "ckpt.pt")), "run").eval()
    idx = IDX % CORPUS_VOCAB
    assert (logits(model, idx) - logits(trained, idx)).abs().max().item() <= TOL


# -----------------------------------------------------------------------------
# export: the merged model, and the adapters alone in PEFT's format

def peft_model(base, folder):
    peft = pytest.importorskip("peft", reason="the PEFT round trip needs peft (pip install peft)")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT says it adapts a tied head without its embedding: as we do
        return peft.PeftModel.from_pretrained(base, str(folder)).eval()


@pytest.mark.slow
def test_export_writes_the_merged_model_and_the_adapters_for_peft(lora_run, hf_base, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    trained = loading.build_model(checkpoint.load(str(lora_run / "ckpt.pt")), "run").eval()
    idx = IDX % CORPUS_VOCAB
    ours = logits(trained, idx)
    export(f"--out_dir={lora_run}", f"--export_dir={tmp_path / 'merged'}")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(merged).__name__ == "GPT2LMHeadModel" and not merged.config.tie_word_embeddings
    with torch.no_grad():
        assert (merged(idx).logits - ours).abs().max().item() <= TOL
    folder = tmp_path / "peft"
    export(f"--out_dir={lora_run}", "--peft=True", f"--export_dir={folder}")
    assert {"adapter_config.json", "adapter_model.safetensors", "export.json", "meta.pkl"} == \
        {f.name for f in folder.iterdir()}
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn", "lm_head", "mlp.c_proj"]
    assert config["base_model_name_or_path"] == str(hf_base) and config["r"] == 4 and config["lora_alpha"] == 8
    said = capsys.readouterr()
    assert f"AutoModelForCausalLM.from_pretrained('{hf_base}'), '{folder}')" in said.out
    # lm_head adapted over GPT-2's tied head: merging in PEFT would change the embedding too, and that is said
    assert "merge_and_unload() would add the head's update" in said.err
    theirs = peft_model(transformers.AutoModelForCausalLM.from_pretrained(hf_base), folder)
    with torch.no_grad():
        assert (theirs(idx).logits - ours).abs().max().item() <= TOL
    # a run trained in full has no adapters to write
    nanogpt_checkpoint(tmp_path / "full" / "ckpt.pt")
    e = script("export.py", f"--out_dir={tmp_path / 'full'}", "--peft=True")
    assert "is a model trained in full (lora_rank=0); export it without --peft" in str(e)


def save(path, model):
    """model as a run's checkpoint: its weights, or (adapted) its adapters and what identifies its base."""
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = lora.checkpoint_entries(model) or dict(model=model.state_dict())
    torch.save(dict(**weights, **checkpoint.model_entries(model.config), iter_num=1, config={}), path)
    return path.parent


@pytest.mark.slow
def test_a_lora_run_exports_to_gguf_as_its_merged_model(tmp_path, gpt2_encoding):
    """The GGUF file of a LoRA run holds, tensor for tensor, what a plain model's export holds for its
    merged model (gguf_tensors: the plain export's own mapping, checked against llama.cpp in test_gguf)."""
    gguf = pytest.importorskip("gguf")
    from gptkit.gguf_export import gguf_tensors
    base_ckpt = tmp_path / "base" / "ckpt.pt"
    save(base_ckpt, tiny(vocab_size=50304, bias=False))
    model = loading.build_model(checkpoint.load(str(base_ckpt)), "base")  # the base as a run loads it
    lora.apply(model, 4, 8.0, 0.0, EVERY_LAYER, base=lora.identify(model, str(base_ckpt)))
    torch.manual_seed(1)
    with torch.no_grad():
        for _, m in lora.adapted(model):
            m.lora_B.normal_(0, 0.05)
    run_dir = save(tmp_path / "lora" / "ckpt.pt", model)
    export(f"--out_dir={run_dir}", "--format=gguf", "--gguf_type=f32")
    written = {t.name: t.data for t in gguf.GGUFReader(run_dir / "model-f32.gguf").tensors}
    _, expected = gguf_tensors(lora.merge(model), GPT2_VOCAB)
    assert written.keys() == expected.keys()
    assert all(np.array_equal(written[k].reshape(v.shape), v) for k, v in expected.items())
    e = script("export.py", f"--out_dir={run_dir}", "--format=gguf", "--peft=True")
    assert "drop --format=gguf" in str(e) and e.status == 2


LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu")


@pytest.mark.parametrize("arch,options,targets", [
    ("GPT2LMHeadModel", dict(mlp="relu2", tie_embeddings=False), "c_attn,attn.c_proj,lm_head"),
    ("LlamaForCausalLM", dict(**LLAMA, n_kv_head=2, tie_embeddings=False), EVERY_LAYER),  # grouped-query, untied
    ("Qwen3ForCausalLM", dict(**LLAMA, qk_norm=True, bias=False), EVERY_LAYER),  # a tied head adapted
])
def test_peft_loads_the_adapters_over_each_exported_architecture(arch, options, targets, tmp_path):
    """Fused layers split for Llama and Qwen3: q, k and v (gate and up) share A and take their rows of B."""
    pytest.importorskip("transformers")
    base = tiny(**options)
    exported_base = hf.to_transformers(copy.deepcopy(base))
    assert type(exported_base).__name__ == arch
    model = adapted(base, targets)
    ours = logits(model, IDX)
    config, tensors = hf.peft_adapter(model)
    hf.save_peft(tmp_path, config, tensors)
    with torch.no_grad():
        assert (hf.to_transformers(lora.merge(model))(IDX).logits - ours).abs().max().item() <= TOL
        assert (peft_model(exported_base, tmp_path)(IDX).logits - ours).abs().max().item() <= TOL

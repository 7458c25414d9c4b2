"""GGUF export for llama.cpp: the file read back with gguf's own reader (Llama, Qwen2, Qwen3 and Mistral
folders against their own files and tokenizer.json, as llama.cpp's converter writes them; runs on GPT-2's
BPE or a trained tokenizer), and run by llama.cpp itself (llama-cpp-python, where installed) against this
project's model: the same tokens from the same text, the same logits for every architecture it takes, the
same greedy text as sample.py."""

import pickle
import runpy
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, export, play_text
from gptkit import checkpoint, loading
from gptkit.errors import UserError
from model import GPT, GPTConfig

gguf = pytest.importorskip("gguf")

ARCHS = {  # a model of each shape llama.cpp takes, with the options each allows
    "gpt2": dict(gelu_approximate="tanh"),
    "llama": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, tie_embeddings=False, bias=True,
                  rope_theta=500.0, rope_scale=8.0, rope_scale_context=16),  # Llama 3's scaling: rope_freqs
    "qwen2": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, qkv_bias=True, bias=False),
    "qwen3": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False, norm_eps=1e-6),
}


def llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python compiles llama.cpp, which takes "
                    "over ten minutes, so it is not in the dev extra)")
    return llama_cpp


def save_run(folder, model, iteration=1):
    """model as a run's checkpoint, the way train.py stores one (model_args, weights, iteration)."""
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    args = {k: getattr(c, k) for k in c.__dataclass_fields__}
    torch.save(dict(model=model.state_dict(), model_args=args, iter_num=iteration, config={}), folder / "ckpt.pt")
    return folder


def random_model(**options):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=4, n_embd=64, **options)).eval()
    with torch.no_grad():  # larger than init, so logits spread and a wrong permutation or bias shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.05))
    return model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, gpt2_encoding):
    """A GPT-2-shaped run on GPT-2's vocabulary (exact GELU, no biases: nanoGPT's defaults), trained
    here for a few seconds on the tests' play corpus so that greedy choices are not near-ties."""
    data = torch.tensor(gpt2_encoding.encode(play_text(40_000)))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64, bias=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from a second thread, and loses 10x on a busy machine
    try:
        for _ in range(40):
            ix = torch.randint(0, len(data) - 33, (4,), generator=g)
            x, y = torch.stack([data[i:i + 32] for i in ix]), torch.stack([data[i + 1:i + 33] for i in ix])
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return save_run(tmp_path_factory.mktemp("gguf") / "run", model.eval(), iteration=40)


@pytest.fixture(scope="module")
def exported(trained_run):
    """The trained run exported by export.py as f32 and as Q8_0 (the default paths in the run folder)."""
    for kind in ("f32", "q8_0"):
        export(f"--out_dir={trained_run}", "--format=gguf", f"--gguf_type={kind}")
    return {kind: trained_run / f"model-{kind}.gguf" for kind in ("f32", "q8_0")}


def field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.slow
def test_gguf_file_reads_back_with_its_weights_tokenizer_and_settings(trained_run, exported, gpt2_encoding):
    path = trained_run / "ckpt.pt"
    model = loading.build_model(checkpoint.load(path), path)
    for kind, file in exported.items():
        r = gguf.GGUFReader(file)
        assert field(r, "general.architecture") == "gpt2"
        assert [field(r, f"gpt2.{k}") for k in ("context_length", "embedding_length", "block_count",
                                                 "feed_forward_length", "attention.head_count")] == [64, 64, 2, 256, 2]
        assert field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(1e-5)
        tokens = field(r, "tokenizer.ggml.tokens")
        assert field(r, "tokenizer.ggml.model") == "gpt2" and len(tokens) == 50257
        assert field(r, "tokenizer.ggml.eos_token_id") == 50256 and tokens[50256] == "<|endoftext|>"
        # the byte-level spelling: " the" is token 262, written with GPT-2's stand-in for a space
        assert tokens[gpt2_encoding.encode(" the")[0]] == "\u0120the"
        assert len(field(r, "tokenizer.ggml.merges")) == 50000
        tensors = {t.name: t for t in r.tensors}
        assert len(tensors) == 4 + 2 * 12  # embeddings, final norm (weight, bias); 12 tensors a block
        wte = model.transformer.wte.weight.detach()[:50257].numpy()  # the padding rows are dropped
        emb = tensors["token_embd.weight"]
        got = gguf.quants.dequantize(emb.data, emb.tensor_type).reshape(wte.shape)
        if kind == "f32":
            assert emb.tensor_type == gguf.GGMLQuantizationType.F32 and np.array_equal(got, wte)
        else:  # Q8_0: 32 weights share one step, their largest magnitude / 127, stored in fp16; each weight
            # is off by half a step, plus up to 127 times the step's own rounding (2^-11): 0.56 steps
            assert emb.tensor_type == gguf.GGMLQuantizationType.Q8_0
            step = np.abs(wte.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
            assert (np.abs(got - wte).reshape(-1, 32) <= 0.57 * step).all()
        assert tensors["blk.1.attn_norm.bias"].tensor_type == gguf.GGMLQuantizationType.F32  # zeros: no biases here
        assert not tensors["blk.1.attn_norm.bias"].data.any()


@pytest.mark.slow
def test_llama_cpp_greedy_text_equals_sample_py(trained_run, exported, gpt2_encoding, capsys):
    llama = llama_cpp()
    llm = llama.Llama(str(exported["f32"]), n_ctx=64, n_threads=1, verbose=False)
    prompt = "ROMEO:\nGood"
    assert llm.tokenize(prompt.encode(), add_bos=False) == gpt2_encoding.encode(prompt)  # the tokenizer carried over
    theirs = [t for _, t in zip(range(20), llm.generate(gpt2_encoding.encode(prompt), temp=0.0, top_k=1))]
    llm.close()
    saved = sys.argv
    sys.argv = ["sample.py", f"--out_dir={trained_run}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=20",
                "--temperature=0", "--stop_at_eot=False", "--device=cpu"]
    try:
        runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")
    finally:
        sys.argv = saved
    ours = capsys.readouterr().out.split("\n---------------")[0]
    assert ours == prompt + gpt2_encoding.decode(theirs)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_llama_cpp_logits_equal_ours_for_every_architecture(arch, tmp_path, gpt2_encoding):
    llama = llama_cpp()
    from gptkit.gguf_export import write_gguf
    model = random_model(**ARCHS[arch])
    path = tmp_path / f"{arch}.gguf"
    assert write_gguf(model, path, "f32") == arch
    ids = gpt2_encoding.encode("JULIET:\nO Romeo, Romeo, wherefore art thou Romeo?")
    llm = llama.Llama(str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[:len(ids)]))
    llm.close()
    with torch.no_grad():
        ours = model.all_logits(torch.tensor([ids]))[0, :, :50257]
    # f32 both ways; llama.cpp sums in another order and computes GELU from an fp16 table
    assert (ours - theirs).abs().max() < 2e-3 * ours.abs().max()


def test_export_refuses_what_llama_cpp_cannot_run_and_never_replaces_other_files(tmp_path):
    run = save_run(tmp_path / "relu2", GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=1, n_head=2, n_embd=32,
                                                      mlp="relu2")))
    with pytest.raises(UserError, match="mlp=relu2 cannot be exported as GGUF"):
        export(f"--out_dir={run}", "--format=gguf")
    run = save_run(tmp_path / "softcap", GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=1, n_head=2,
                                                        n_embd=32, logit_softcap=30.0)))
    with pytest.raises(UserError, match="no llama.cpp architecture computes this model"):
        export(f"--out_dir={run}", "--format=gguf")
    chars = sorted(set("ROMEO: hi\n"))
    run = save_run(tmp_path / "char", GPT(GPTConfig(block_size=32, vocab_size=len(chars), n_layer=1, n_head=2,
                                                     n_embd=32)))
    with open(run / "meta.pkl", "wb") as f:
        pickle.dump(dict(vocab_size=len(chars), stoi={c: i for i, c in enumerate(chars)}, itos=dict(enumerate(chars))), f)
    with pytest.raises(UserError, match="character-level"):
        export(f"--out_dir={run}", "--format=gguf")
    # a file export.py did not write is never replaced, --overwrite or not; nothing is left behind
    mine = tmp_path / "notes.gguf"
    mine.write_text("my notes")
    for extra in ([], ["--overwrite=True"]):
        with pytest.raises(UserError, match="not a GGUF file export.py wrote"):
            export(f"--out_dir={tmp_path / 'softcap'}", "--format=gguf", f"--gguf_file={mine}", *extra)
    assert mine.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["char", "notes.gguf", "relu2", "softcap"]


def test_export_replaces_an_earlier_gguf_export_only_with_overwrite(trained_run, exported):
    before = exported["q8_0"].read_bytes()
    with pytest.raises(UserError, match="already exists"):
        export(f"--out_dir={trained_run}", "--format=gguf", "--gguf_type=q8_0")
    assert exported["q8_0"].read_bytes() == before


# -----------------------------------------------------------------------------
# Llama, Qwen2, Qwen3 and Mistral folders (test_hf_models' tiny random models and tokenizers), and runs on a
# tokenizer trained for their data: each file checked against the source files themselves, not this project's
# model, and against what llama.cpp's convert_hf_to_gguf.py writes for the same folder

FAMILY_ARCH = {"llama-tied-rope-scaled": "llama", "llama-untied": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
               "mistral": "llama"}


def converter_permute(w, n_head):
    """The converter's reordering of a llama query or key projection: within each head, the two halves'
    rows interleaved (llama.cpp's llama rotates adjacent pairs, transformers' Llama the halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(rope, dim):
    """The converter's rope_freqs for Llama 3's scaling, written here wavelength by wavelength."""
    import math
    base, factor = rope["rope_theta"], rope["factor"]
    low, high, context = rope["low_freq_factor"], rope["high_freq_factor"], rope["original_max_position_embeddings"]
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def read_tensors(reader):
    """{name: float32 array in the source's (rows, columns) shape} of a GGUF file's f32 tensors."""
    return {t.name: np.asarray(t.data).reshape(tuple(reversed([int(n) for n in t.shape]))) for t in reader.tensors}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """test_hf_models' folders (one tiny random model of each class with its tokenizer), made once here."""
    import test_hf_models
    return test_hf_models.folders.__wrapped__(tmp_path_factory)


@pytest.mark.parametrize("name", list(FAMILY_ARCH))
def test_a_hugging_face_model_exports_as_the_converter_would_write_it(folders, name, tmp_path):
    import json

    from safetensors.numpy import load_file

    from gptkit import gguf_vocab, hf_tokenizer
    from gptkit.gguf_export import write_gguf
    folder = folders[name]
    model, _ = loading.load_pretrained(str(folder))
    tok = hf_tokenizer.load(str(folder))
    vocab = gguf_vocab.of_tokenizer(tok, model.config.vocab_size, str(folder))
    assert write_gguf(model, tmp_path / "m.gguf", "f32", vocab) == FAMILY_ARCH[name]
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    arch = FAMILY_ARCH[name]
    c = json.loads((folder / "config.json").read_text())
    hs = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    rope = c.get("rope_parameters") or {"rope_theta": c.get("rope_theta", 10000.0), **(c.get("rope_scaling") or {})}
    assert field(r, "general.architecture") == arch
    expected = {"context_length": c["max_position_embeddings"], "embedding_length": c["hidden_size"],
                "block_count": c["num_hidden_layers"], "feed_forward_length": c["intermediate_size"],
                "attention.head_count": c["num_attention_heads"], "attention.head_count_kv": c["num_key_value_heads"],
                "attention.key_length": hs, "attention.value_length": hs, "rope.dimension_count": hs}
    assert {k: field(r, f"{arch}.{k}") for k in expected} == expected
    assert field(r, f"{arch}.rope.freq_base") == pytest.approx(rope["rope_theta"])
    assert field(r, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(c["rms_norm_eps"])

    # the weights: transformers' own files, renamed; q and k permuted for llama alone
    theirs = load_file(str(folder / "model.safetensors"))
    ours = read_tensors(r)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
    want = {"token_embd.weight": theirs["model.embed_tokens.weight"], "output_norm.weight": theirs["model.norm.weight"]}
    if not c["tie_word_embeddings"]:
        want["output.weight"] = theirs["lm_head.weight"]
    for key, w in theirs.items():
        if key.startswith("model.layers."):
            _, _, i, rest = key.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
                w = converter_permute(w, c["num_attention_heads"] if "q_proj" in module else c["num_key_value_heads"])
            want[f"blk.{i}.{names[module]}.{kind}"] = w
    if rope.get("rope_type") == "llama3":
        want["rope_freqs.weight"] = llama3_rope_factors(rope, hs)
    assert ours.keys() == want.keys()
    for key in want:
        if key == "rope_freqs.weight":  # computed in float32 both ways, in another order
            assert np.allclose(ours[key], want[key], rtol=1e-5), key
        else:
            assert np.array_equal(ours[key], want[key]), key
    if name == "qwen2":
        assert "blk.0.attn_q.bias" in ours and "blk.0.attn_output.bias" not in ours

    # the tokenizer: tokenizer.json's tokens, types, merges; tokenizer_config.json's BOS and EOS
    spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    tc = json.loads((folder / "tokenizer_config.json").read_text())
    by_id = {i: t for t, i in spec["model"]["vocab"].items()} | {a["id"]: a["content"] for a in spec["added_tokens"]}
    tokens = field(r, "tokenizer.ggml.tokens")
    assert tokens == [by_id.get(i, f"[PAD{i}]") for i in range(c["vocab_size"])]
    types = field(r, "tokenizer.ggml.token_type")
    special = {a["id"] for a in spec["added_tokens"] if a["special"]}
    assert types == [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL if i in by_id
                     else gguf.TokenType.UNUSED for i in range(c["vocab_size"])]
    merges = spec["model"]["merges"]
    assert field(r, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert field(r, "tokenizer.ggml.pre") == ("qwen2" if arch.startswith("qwen") else "llama-bpe")
    ids = {t: i for i, t in by_id.items()}
    assert field(r, "tokenizer.ggml.eos_token_id") == ids[tc["eos_token"]]
    assert field(r, "tokenizer.ggml.bos_token_id") == ids[tc["bos_token"] or "<|endoftext|>"]
    assert field(r, "tokenizer.ggml.add_bos_token") == (tc["bos_token"] is not None)  # Llama 3's post-processor
    assert field(r, "tokenizer.chat_template") == (folder / "chat_template.jinja").read_text(encoding="utf-8")


def test_a_pre_tokenizer_llama_cpp_does_not_know_is_refused(folders):
    import json

    from gptkit import gguf_vocab
    text = (folders["qwen2"] / "tokenizer.json").read_text(encoding="utf-8")
    spec = json.loads(text)
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    with pytest.raises(UserError, match="not one llama.cpp knows by name.*--format=hf"):
        gguf_vocab.from_tokenizer_json(json.dumps(spec), 400, "tokenizer.json")
    with pytest.raises(UserError, match="320 tokens and the model 100 embedding rows"):
        gguf_vocab.from_tokenizer_json(text, 100, "tokenizer.json")
    # the shapes of GPT-2's and SmolLM's tokenizer.json, whose patterns live inside their ByteLevel step
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    assert gguf_vocab.pre_tokenizer_name(byte_level, "gpt2") == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert gguf_vocab.pre_tokenizer_name(smollm, "smollm") == "smollm"


def test_a_run_on_a_trained_tokenizer_exports_its_own_vocabulary(tmp_path):
    """The trained tokenizer's tokens, merges and special tokens go into the file; export.py reads the
    tokenizer.json the run keeps."""
    import json

    from conftest import CORPUS
    from gptkit.tokenizer import SPECIAL_TOKENS, train_bpe
    tok = train_bpe([CORPUS.read_text(encoding="utf-8")[:20000]], 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=300, n_layer=1, n_head=2, n_embd=32, pos_emb="rope",
                          norm="rmsnorm", mlp="swiglu", bias=False))
    run = save_run(tmp_path / "run", model)
    (run / "tokenizer.json").write_text(tok.json, encoding="utf-8")
    with open(run / "meta.pkl", "wb") as f:
        pickle.dump(tok.meta(), f)
    export(f"--out_dir={run}", "--format=gguf", "--gguf_type=f32")
    r = gguf.GGUFReader(run / "model-f32.gguf")
    spec = json.loads(tok.json)
    assert field(r, "tokenizer.ggml.tokens") == [tok.tok.id_to_token(i) for i in range(300)]
    merges = spec["model"]["merges"]
    assert field(r, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert field(r, "tokenizer.ggml.token_type")[:4] == [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL]
    assert field(r, "tokenizer.ggml.pre") == "llama-bpe"  # GPT-4's split, which llama.cpp runs as Llama 3's
    assert field(r, "tokenizer.ggml.eos_token_id") == field(r, "tokenizer.ggml.bos_token_id") == tok.eot == 0
    assert not field(r, "tokenizer.ggml.add_bos_token")
    assert tok.tok.id_to_token(tok.eot) == SPECIAL_TOKENS[0]
    assert np.array_equal(read_tensors(r)["token_embd.weight"], model.transformer.wte.weight.detach().numpy())
    with pytest.raises(UserError, match="drop --tokenizer_dir"):
        export(f"--out_dir={run}", "--format=gguf", "--gguf_file=" + str(tmp_path / "x.gguf"), f"--tokenizer_dir={run}")


def test_a_hugging_face_folder_exports_as_it_is(folders, tmp_path, monkeypatch):
    """export.py --init_from=FOLDER --format=gguf: the folder's model and tokenizer, no run needed; the file
    goes to the working directory under the folder's name; a run folder given there is answered with --out_dir."""
    monkeypatch.chdir(tmp_path)
    export(f"--init_from={folders['qwen2']}", "--format=gguf", "--gguf_type=q8_0")
    r = gguf.GGUFReader(tmp_path / f"{folders['qwen2'].name}-q8_0.gguf")
    assert field(r, "general.architecture") == "qwen2" and field(r, "tokenizer.ggml.pre") == "qwen2"
    assert {t.name: t.tensor_type for t in r.tensors}["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32
    run = save_run(tmp_path / "run", random_model())
    with pytest.raises(UserError, match="--out_dir"):
        export(f"--init_from={run}", "--format=gguf")
    with pytest.raises(UserError, match="already a Hugging Face model"):
        export(f"--init_from={folders['qwen2']}", f"--export_dir={tmp_path / 'hf'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{folders['qwen2'].name}-q8_0.gguf", "run"]


def test_the_split_a_trained_tokenizer_uses_cuts_text_as_llama3s_which_llama_cpp_runs_for_it():
    """A trained tokenizer's file is named llama-bpe: llama.cpp then cuts text with Llama 3's pattern, which
    must give the same pieces as GPT-4's, the one the tokenizer was trained with (tokenizer.SPLIT_PATTERN)."""
    import random

    regex = pytest.importorskip("regex")
    from gptkit.gguf_vocab import SPLIT_NAMES
    from gptkit.tokenizer import SPLIT_PATTERN
    llama3 = regex.compile(next(p for p, name in SPLIT_NAMES.items() if name == "llama-bpe" and p != SPLIT_PATTERN))
    ours = regex.compile(SPLIT_PATTERN)
    rng = random.Random(0)
    alphabet = "aZé 1\n\r\t.'\"日🙂-_sLLdVE"
    texts = ["Hello  world!\n\n  tabs\tand   runs   ", "I'LL don't WE'RE 12345 3.14159", "\r\n\r\n  \n x\n\n\ny  "]
    texts += ["".join(rng.choice(alphabet) for _ in range(40)) for _ in range(3000)]
    for text in texts:
        assert llama3.findall(text) == ours.findall(text), repr(text)

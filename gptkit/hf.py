"""
Hugging Face weights in and out: GPT-2 folders and hub names read straight from their files, and this
project's models written in transformers' layout: GPT-2, or Llama / Qwen3 for the models built with
their architecture options (rope + rmsnorm + swiglu, with qk_norm for Qwen3).

Reading does not go through transformers: config.json is plain JSON and model.safetensors is memory-
mapped, so loading costs the read and not an import of transformers plus two random initialisations.
Hub files are found through gptkit.hub.
"""

import json
import os
import pickle

import torch

from gptkit.errors import UserError
from gptkit.tokenizer import GPT2_EOT, GPT2_VOCAB
from gptkit.hub import local_or_hub, weight_shards
from model import CONV1D, GPT, from_gpt2_state_dict, gpt2_config


# -----------------------------------------------------------------------------
# reading the files

def load_file(path):
    """A safetensors file's tensors, each memory-mapped through a map of its own. GPT.with_weights copies
    them one by one and lets each go, its map with it, so the file's pages never all count against the
    process at once: a process loading GPT-2 medium's 1.4 GB peaks at 1.8 GB this way, at 3.0 GB with
    safetensors' load_file (one map; max RSS on a 2-core AMD EPYC)."""
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        names = list(f.keys())
    out = {}
    for name in names:
        with safe_open(path, "pt") as f:
            out[name] = f.get_tensor(name)
    return out


def read_weights(name_or_path):
    """A folder's (or hub repository's) tensors, by name: model.safetensors (memory-mapped, possibly
    sharded with an index) or pytorch_model.bin (weights_only; memory-mapped when it is in torch's zip
    format, read whole when it is in the format torch wrote before 1.6). A damaged file is one sentence."""
    shards = weight_shards(name_or_path)
    if shards:
        sd = {}
        for shard in shards:
            sd.update(_read_file(shard))
        return sd
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = local_or_hub(name_or_path, name, required=False)
        if path:
            return _read_file(path)
    raise UserError(f"{name_or_path} has no model.safetensors or pytorch_model.bin")


def _read_file(path):
    try:
        if path.endswith(".safetensors"):
            return load_file(path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # the format before torch 1.6
    except pickle.UnpicklingError:
        raise UserError(f"{path} holds more than tensors (loading it could run code), or is damaged, so it was not "
                        f"loaded; use a model.safetensors, or a pytorch_model.bin of tensors only") from None
    except Exception as e:  # safetensors, zip and torch errors of a truncated or damaged file: many types
        if isinstance(e, UserError):
            raise
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"{path} cannot be read: it is truncated or damaged ({reason}); download or copy it "
                        f"again") from None


# -----------------------------------------------------------------------------
# GPT-2 in

def load_gpt2(name_or_path, dropout=0.0, dtype=torch.float32):
    """A GPT with the weights of a Hugging Face GPT-2: a hub name (gpt2, gpt2-medium, gpt2-large,
    gpt2-xl) or a local folder with config.json and model.safetensors or pytorch_model.bin. Only
    dropout may differ from the source; the weights are stored in dtype."""
    where = name_or_path if os.path.isdir(name_or_path) else repr(name_or_path)
    config_path = local_or_hub(name_or_path, "config.json")
    if config_path is None:
        raise UserError(f"{where} is not a Hugging Face GPT-2 folder: it has no config.json "
                        f"(it needs config.json and model.safetensors or pytorch_model.bin)")
    try:
        with open(config_path) as f:
            config = gpt2_config(json.load(f), dropout)
        return GPT.with_weights(config, from_gpt2_state_dict(read_weights(name_or_path)), dtype=dtype)
    except (ValueError, json.JSONDecodeError) as e:
        raise UserError(f"{where} is not a GPT-2 this tool can load ({e}); it needs a GPT-2 config.json and "
                        f"model.safetensors or pytorch_model.bin") from None


# -----------------------------------------------------------------------------
# out: the transformers architecture that computes what the model computes

# The files tiktoken builds its gpt2 encoding from: encoder.json is transformers' vocab.json, and
# vocab.bpe is merges.txt (the same merges; only the version line differs). sample.py has already
# fetched them once, so the tokenizer of an export needs no other download.
TIKTOKEN_GPT2 = {"vocab.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                 "merges.txt": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"}


def gpt2_bpe_files(tokenizer_dir=None):
    """GPT-2's vocab.json and merges.txt, as {name: bytes}: from tokenizer_dir, or tiktoken's files (its
    cache, else downloaded as tiktoken downloads them)."""
    if tokenizer_dir:
        if not all(os.path.isfile(os.path.join(tokenizer_dir, f)) for f in TIKTOKEN_GPT2):
            raise UserError(f"--tokenizer_dir={tokenizer_dir} must hold vocab.json and merges.txt (GPT-2's, as "
                            f"on huggingface.co/openai-community/gpt2)")
        files = {}
        for name in TIKTOKEN_GPT2:
            with open(os.path.join(tokenizer_dir, name), "rb") as f:
                files[name] = f.read()
        check_gpt2_ids(files["vocab.json"], tokenizer_dir)
        return files
    from tiktoken.load import read_file_cached
    try:
        return {name: read_file_cached(url) for name, url in TIKTOKEN_GPT2.items()}
    except Exception as e:  # network errors come in several types
        raise UserError(f"could not get GPT-2's tokenizer files ({type(e).__name__}: the same files "
                        f"sample.py downloads once); connect to the internet once, or point "
                        f"TIKTOKEN_CACHE_DIR at tiktoken's files, or pass --tokenizer_dir=FOLDER with "
                        f"vocab.json and merges.txt, or export the weights alone with "
                        f"--skip_tokenizer") from None


def check_gpt2_ids(vocab_json, tokenizer_dir):
    """One sentence unless a folder's vocab.json numbers its tokens as GPT-2's, whose ids the model's
    embedding rows mean: 50,257 tokens, <|endoftext|> last, and, where tiktoken's copy of GPT-2's file is
    at hand (its cache), the very same id for every token. A tokenizer of the same size whose ids differ
    would turn the exported model's output into other text without a word."""
    where = f"--tokenizer_dir={tokenizer_dir}"
    try:
        vocab = json.loads(vocab_json)
    except ValueError as e:
        raise UserError(f"{where}: vocab.json is not JSON ({e}); give GPT-2's vocab.json and merges.txt") from None
    ids = sorted(vocab.values()) if isinstance(vocab, dict) else None
    if ids != list(range(GPT2_VOCAB)) or vocab.get("<|endoftext|>") != GPT2_EOT:
        raise UserError(f"{where}: vocab.json numbers {len(vocab) if isinstance(vocab, dict) else 0:,} tokens "
                        f"(<|endoftext|> = {vocab.get('<|endoftext|>') if isinstance(vocab, dict) else None}), and "
                        f"the model's ids are GPT-2's {GPT2_VOCAB:,} (<|endoftext|> = {GPT2_EOT}), so its text would "
                        f"come out as other text; give GPT-2's vocab.json and merges.txt, or leave --tokenizer_dir out")
    from tiktoken.load import read_file_cached
    try:
        reference = json.loads(read_file_cached(TIKTOKEN_GPT2["vocab.json"]))
    except Exception:  # offline without tiktoken's cache: the structure checked above is all there is
        return
    differ = [(token, i) for token, i in vocab.items() if reference.get(token) != i]
    if differ:
        token, i = min(differ, key=lambda d: d[1])
        raise UserError(f"{where}: vocab.json gives id {i} to {token!r}, which GPT-2 (the model's vocabulary) numbers "
                        f"{reference.get(token)}, and {len(differ):,} tokens in all differ, so the exported model's "
                        f"text would come out as other text; give GPT-2's vocab.json and merges.txt, or leave "
                        f"--tokenizer_dir out")


def gpt2_tokenizer(tokenizer_dir=None, model_max_length=1024):
    """transformers' GPT2TokenizerFast for GPT-2's BPE: from a folder with vocab.json and merges.txt, or
    made from tiktoken's files (gpt2_bpe_files)."""
    import tempfile

    from transformers import GPT2TokenizerFast
    with tempfile.TemporaryDirectory() as folder:
        for name, data in gpt2_bpe_files(tokenizer_dir).items():
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        tok = GPT2TokenizerFast.from_pretrained(folder, model_max_length=model_max_length)
    if len(tok) != GPT2_VOCAB:
        raise UserError(f"the tokenizer files in {tokenizer_dir or 'tiktoken cache'} hold {len(tok)} tokens, not "
                        f"GPT-2's {GPT2_VOCAB}; use GPT-2's vocab.json and merges.txt")
    return tok


def fast_tokenizer(tok, model_max_length=1024):
    """transformers' PreTrainedTokenizerFast for a trained tokenizer (tokenizer.TrainedTokenizer): the same
    tokenizer.json, its end of text as BOS/EOS, the chat markers as special tokens, and no clean-up of
    spaces on decoding (byte-level BPE decodes to the exact text)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from gptkit.tokenizer import SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.json), bos_token=SPECIAL_TOKENS[0],
                                   eos_token=SPECIAL_TOKENS[0], additional_special_tokens=list(SPECIAL_TOKENS[1:]),
                                   clean_up_tokenization_spaces=False, model_max_length=model_max_length)


def export_architecture(config, target="transformers class"):
    """'gpt2', 'llama' or 'qwen3': the transformers model (GPT2LMHeadModel, LlamaForCausalLM,
    Qwen3ForCausalLM), or llama.cpp architecture of the same names, that computes exactly what a model
    with this config computes. Any other combination is refused with a sentence naming the option
    (and `target`, what cannot compute it), rather than exported as something that computes a
    different function."""
    c = config

    def refuse(option, why):
        return UserError(f"{option} cannot be exported: {why}, so no {target} computes this model "
                         f"(export takes GPT-2's architecture, or pos_emb=rope with norm=rmsnorm and mlp=swiglu)")

    if c.logit_softcap:
        raise refuse(f"logit_softcap={c.logit_softcap}", "GPT-2, Llama and Qwen3 do not cap their logits")
    if c.pos_emb == "learned":  # GPT-2's shape, whose activation, width and epsilon transformers lets us set
        if c.norm != "layernorm":
            raise refuse(f"norm={c.norm} with pos_emb=learned", "GPT-2 has LayerNorm, and Llama rotary positions")
        if c.qk_norm:
            raise refuse("qk_norm=True with pos_emb=learned", "GPT-2 has no QK-norm, and Qwen3 has rotary positions")
        if c.mlp == "swiglu":
            raise refuse("mlp=swiglu with pos_emb=learned", "GPT-2 has no gated MLP, and Llama rotary positions")
        if c.kv_heads != c.n_head:
            raise refuse(f"n_kv_head={c.n_kv_head} with pos_emb=learned",
                         "GPT-2 has a key/value head per query head, and Llama rotary positions")
        return "gpt2"
    if c.norm != "rmsnorm":
        raise refuse(f"norm={c.norm} with pos_emb=rope", "Llama and Qwen3 have RMSNorm, and GPT-2 learned positions")
    if c.mlp != "swiglu":
        raise refuse(f"mlp={c.mlp} with pos_emb=rope", "Llama and Qwen3 have SwiGLU MLPs, and GPT-2 learned positions")
    if c.qk_norm and c.bias:
        raise refuse("qk_norm=True with bias=True", "Qwen3's MLP has no biases, and Llama no QK-norm")
    if c.qkv_bias and (c.qk_norm or c.bias):
        raise refuse("qkv_bias=True with qk_norm or bias", "Qwen2 has biases on q, k and v alone, and no QK-norm")
    return "qwen3" if c.qk_norm else "qwen2" if c.qkv_bias else "llama"


def to_transformers(model, vocab_size=None, eot=GPT2_EOT, family=None):
    """A transformers model holding the model's weights and computing the same function: the
    architecture export_architecture picks, the vocabulary cropped to vocab_size, `eot` (the
    tokenizer's end of text) as its BOS and EOS. family="mistral": a model that came from a
    MistralForCausalLM goes back as one (it computes what the Llama export computes)."""
    vocab_size = vocab_size or model.config.vocab_size
    arch = export_architecture(model.config)
    if family == "mistral" and arch == "llama" and not model.config.bias:
        arch = "mistral"
    if arch == "gpt2":
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel(gpt2_config_for(model, vocab_size, eot))
        sd = gpt2_state_dict(model, vocab_size)
    else:
        import transformers
        cls = dict(qwen3=transformers.Qwen3ForCausalLM, qwen2=transformers.Qwen2ForCausalLM,
                   llama=transformers.LlamaForCausalLM, mistral=transformers.MistralForCausalLM)[arch]
        hf = cls(llama_config_for(model, vocab_size, eot, mistral=arch == "mistral"))
        sd = llama_state_dict(model, vocab_size)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    # older transformers keep GPT-2's causal mask as an 'attn.bias' buffer; it is not a weight
    missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    assert not missing and not unexpected, (missing, unexpected)
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def special_tokens(vocab_size, eot=GPT2_EOT):
    # <|endoftext|> exists in GPT-2's vocabulary and in a trained one; a character vocabulary has no such token
    return dict(bos_token_id=eot, eos_token_id=eot) if eot is not None and vocab_size > eot else \
        dict(bos_token_id=None, eos_token_id=None)


def gpt2_state_dict(model, vocab_size=None):
    """The model's weights in transformers' GPT2LMHeadModel layout: Conv1D weights transposed, zero
    biases where the model has none, the vocabulary cropped to vocab_size (padding rows dropped). A
    tied head stays the same tensor as wte."""
    vocab_size = vocab_size or model.config.vocab_size
    out = {}
    for k, v in model.state_dict().items():
        if k in ("transformer.wte.weight", "lm_head.weight"):
            continue
        v = v.detach()
        out[k] = (v.t() if k.endswith(CONV1D) else v).contiguous()
    wte = model.transformer.wte.weight.detach()[:vocab_size].contiguous()
    out["transformer.wte.weight"] = wte
    out["lm_head.weight"] = wte if model.config.tie_embeddings else \
        model.lm_head.weight.detach()[:vocab_size].contiguous()
    if not model.config.bias:  # transformers' GPT-2 always has biases: add zeros
        C = model.config.n_embd
        zeros = {"ln_1.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C, "ln_2.bias": C,
                 "mlp.c_fc.bias": model.config.mlp_width, "mlp.c_proj.bias": C}
        for i in range(model.config.n_layer):
            for name, n in zeros.items():
                out[f"transformer.h.{i}.{name}"] = torch.zeros(n, dtype=wte.dtype)
        out["transformer.ln_f.bias"] = torch.zeros(C, dtype=wte.dtype)
    return out


def gpt2_config_for(model, vocab_size=None, eot=GPT2_EOT):
    """The transformers GPT2Config that computes what the model computes."""
    from transformers import GPT2Config
    c = model.config
    vocab_size = vocab_size or c.vocab_size
    act = "relu2" if c.mlp == "relu2" else "gelu_new" if c.gelu_approximate == "tanh" else "gelu"
    return GPT2Config(
        vocab_size=vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
        n_layer=c.n_layer, n_head=c.n_head, n_inner=c.mlp_width, activation_function=act,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=c.norm_eps,
        tie_word_embeddings=c.tie_embeddings, **special_tokens(vocab_size, eot),
    )


def llama_config_for(model, vocab_size=None, eot=GPT2_EOT, mistral=False):
    """The transformers LlamaConfig (Qwen3Config with qk_norm, Qwen2Config with qkv_bias, MistralConfig if
    asked) that computes what the model computes."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config
    c = model.config
    vocab_size = vocab_size or c.vocab_size
    args = dict(
        vocab_size=vocab_size, hidden_size=c.n_embd, intermediate_size=c.mlp_width, num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.kv_heads, head_dim=c.head_size, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.norm_eps,
        rope_parameters=dict(rope_type="default", rope_theta=c.rope_theta) if not c.rope_scale else dict(
            rope_type="llama3", rope_theta=c.rope_theta, factor=c.rope_scale, low_freq_factor=c.rope_scale_low,
            high_freq_factor=c.rope_scale_high, original_max_position_embeddings=c.rope_scale_context),
        attention_dropout=c.dropout, tie_word_embeddings=c.tie_embeddings, **special_tokens(vocab_size, eot),
    )
    if c.qk_norm:
        return Qwen3Config(**args, attention_bias=c.bias)  # its MLP has no biases (export_architecture refuses bias)
    if c.qkv_bias:
        return Qwen2Config(**args)  # biases on q, k, v alone, always
    if mistral:  # no window: every position sees the whole context, as here (a shorter window became the context)
        return MistralConfig(**args, sliding_window=None)
    return LlamaConfig(**args, attention_bias=c.bias, mlp_bias=c.bias)


def llama_state_dict(model, vocab_size=None):
    """The model's weights in transformers' Llama / Qwen3 names: the fused c_attn split into q, k, v
    projections and the fused c_fc into gate and up (rows in that order); the same layout otherwise
    (nn.Linear both, and the rotation needs no permutation: model.rope_tables)."""
    c = model.config
    vocab_size = vocab_size or c.vocab_size
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    kv = c.kv_heads * c.head_size
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"][:vocab_size],
           "model.norm.weight": sd["transformer.ln_f.weight"],
           "lm_head.weight": sd["lm_head.weight"][:vocab_size]}
    for i in range(c.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        out[theirs + "input_layernorm.weight"] = sd[ours + "ln_1.weight"]
        out[theirs + "post_attention_layernorm.weight"] = sd[ours + "ln_2.weight"]
        if c.qk_norm:
            out[theirs + "self_attn.q_norm.weight"] = sd[ours + "attn.q_norm.weight"]
            out[theirs + "self_attn.k_norm.weight"] = sd[ours + "attn.k_norm.weight"]
        for kind in ("weight", "bias") if c.bias or c.qkv_bias else ("weight",):
            q, k, v = sd[f"{ours}attn.c_attn.{kind}"].split([c.n_head * c.head_size, kv, kv])
            out.update({f"{theirs}self_attn.q_proj.{kind}": q, f"{theirs}self_attn.k_proj.{kind}": k,
                        f"{theirs}self_attn.v_proj.{kind}": v})
            if kind == "bias" and not c.bias:
                continue  # Qwen2: the o_proj and the MLP have none
            gate, up = sd[f"{ours}mlp.c_fc.{kind}"].chunk(2)
            out.update({f"{theirs}self_attn.o_proj.{kind}": sd[f"{ours}attn.c_proj.{kind}"],
                        f"{theirs}mlp.gate_proj.{kind}": gate, f"{theirs}mlp.up_proj.{kind}": up,
                        f"{theirs}mlp.down_proj.{kind}": sd[f"{ours}mlp.c_proj.{kind}"]})
    return {k: v.contiguous() for k, v in out.items()}


# -----------------------------------------------------------------------------
# LoRA adapters out, in PEFT's format for the model to_transformers writes

# where each adapted layer of ours sits in transformers' Llama / Qwen3 (GPT-2 keeps our names)
LLAMA_LORA = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
              "attn.c_proj": ("self_attn.o_proj",), "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj"),
              "mlp.c_proj": ("mlp.down_proj",)}


def peft_adapter(model, vocab_size=None, base_name=None):
    """(adapter_config.json as a dict, adapter_model.safetensors' tensors) of an adapted model
    (gptkit.lora): PEFT's LoRA format for the transformers model to_transformers writes of its base, so
    that peft.PeftModel.from_pretrained(that model, folder) computes what the adapted model computes.
    A fused layer's adapter splits exactly: q, k and v (gate and up with swiglu) share its A, each takes
    its own rows of B. base_name: the base's hub name or folder, recorded for PEFT (None: not known)."""
    from gptkit import lora
    c = model.config
    vocab_size = vocab_size or c.vocab_size
    arch = export_architecture(c)
    settings = model.lora
    kv = c.kv_heads * c.head_size
    tensors, targets = {}, []

    def add(name, A, B):
        targets.append(name.rsplit(".", 1)[-1])
        tensors[f"base_model.model.{name}.lora_A.weight"] = A.detach().clone().contiguous()  # (r, in)
        tensors[f"base_model.model.{name}.lora_B.weight"] = B.detach().clone().contiguous()  # (out, r)

    for name, m in lora.adapted(model):
        A, B = m.lora_A, m.lora_B
        if name == "lm_head":
            add(name, A, B[:vocab_size])  # the padding rows' adapters: no token maps to them
            continue
        _, _, i, kind = name.split(".", 3)  # transformer.h.{i}.{kind}
        if arch == "gpt2":
            add(name, A, B)
            continue
        rows = {"attn.c_attn": [c.n_head * c.head_size, kv, kv], "mlp.c_fc": [c.mlp_width] * 2}.get(kind, [B.size(0)])
        for theirs, part in zip(LLAMA_LORA[kind], B.split(rows)):
            add(f"model.layers.{i}.{theirs}", A, part)
    # PEFT adapts every module whose name ends with a target: GPT-2's attention and MLP both have a
    # c_proj, so one of them alone is named with its parent
    kinds = settings["targets"]
    names = sorted(set(targets))
    if arch == "gpt2" and "c_proj" in names and not {"attn.c_proj", "mlp.c_proj"} <= set(kinds):
        names = sorted(n if n != "c_proj" else next(k for k in kinds if k.endswith("c_proj")) for n in names)
    alpha = settings["alpha"]
    config = dict(
        peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=base_name, inference_mode=True,
        r=settings["rank"], lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        lora_dropout=settings["dropout"], target_modules=names, bias="none", modules_to_save=None,
        # transformers' GPT-2 stores its block matrices as Conv1D, (in, out): PEFT must transpose their update
        fan_in_fan_out=arch == "gpt2" and any(k != "lm_head" for k in kinds),
        init_lora_weights=True, use_rslora=False, use_dora=False,
    )
    return config, tensors


def save_peft(folder, config, tensors):
    """Write a PEFT adapter folder: adapter_config.json and adapter_model.safetensors."""
    from safetensors.torch import save

    from gptkit import fileio
    os.makedirs(folder, exist_ok=True)
    with fileio.atomic_open(os.path.join(folder, "adapter_model.safetensors"), "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    with fileio.atomic_open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=1)


def peft_usage(path, iteration, folder, base, adapter):
    """What export.py says after writing a PEFT adapter: what it wrote, and the line that loads it over
    its base (a run of this project must be exported first: say how)."""
    n = sum(t.numel() for t in adapter[1].values())
    lines = [f"exported the LoRA adapters of {path} (iteration {iteration}, {n:,} parameters) in PEFT's format "
             f"to {folder}: {', '.join(sorted(os.listdir(folder)))}"]
    base_dir = base
    if os.path.isfile(base):  # a checkpoint of this project: its transformers export is the base
        base_dir = os.path.join(os.path.dirname(base), "hf")
        lines.append(f"their base is the run {base}: export it first with python export.py --out_dir="
                     f"{os.path.dirname(base)} --ckpt_name={os.path.basename(base)} (it writes {base_dir})")
    lines.append(f"try: python -c \"from peft import PeftModel; from transformers import AutoModelForCausalLM; "
                 f"m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained('{base_dir}'), '{folder}'); "
                 f"print(sum(p.numel() for n, p in m.named_parameters() if 'lora_' in n), 'adapter parameters')\"")
    return "\n".join(lines)

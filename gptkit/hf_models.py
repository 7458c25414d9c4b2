"""
Today's small open models in: a Hugging Face folder or hub id of LlamaForCausalLM (SmolLM, TinyLlama,
Llama 3.x), Qwen2ForCausalLM (Qwen2 and 2.5), Qwen3ForCausalLM or MistralForCausalLM, read straight
from config.json and the safetensors files, as this project's GPT; GPT-2 goes to hf.load_gpt2.

The network already computes these classes: rotary positions in transformers' layout, RMSNorm,
SwiGLU, grouped-query attention, QK-norm (Qwen3), biases on q, k, v alone (Qwen2), untied heads,
Llama 3's rope scaling. Every config.json field that changes what they compute is read here; a value
this network cannot compute is refused with a sentence naming the field, never ignored.
"""

import hashlib
import json
import os

import torch

from gptkit import hf, hub
from gptkit.errors import UserError
from model import GPT, GPTConfig

# config.json's `architectures` entry -> the name used here (its model_type)
CLASSES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3",
           "MistralForCausalLM": "mistral", "GPT2LMHeadModel": "gpt2"}
SUPPORTED = "GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM and MistralForCausalLM"


def read_config(name_or_path):
    """config.json of a folder or hub repository, as a dict; a sentence when there is none."""
    where = name_or_path if os.path.isdir(name_or_path) else repr(name_or_path)
    path = hub.local_or_hub(name_or_path, "config.json")
    if path is None:
        raise UserError(f"{where} is not a Hugging Face model folder: it has no config.json (it needs config.json "
                        f"and model.safetensors)")
    try:
        with open(path) as f:
            c = json.load(f)
        assert isinstance(c, dict)
    except (OSError, ValueError, AssertionError):
        raise UserError(f"{path} is not a readable config.json; download the model again") from None
    return c


def architecture(c, where="the model"):
    """'gpt2', 'llama', 'qwen2', 'qwen3' or 'mistral' for a config.json dict; any other class is refused."""
    names = c.get("architectures") or []
    kind = CLASSES.get(names[0]) if names else {v: v for v in CLASSES.values()}.get(c.get("model_type", "gpt2"))
    if kind is None:
        found = names[0] if names else f"model_type={c.get('model_type')!r}"
        raise UserError(f"{where} is a {found}, which this project cannot load; it loads {SUPPORTED}")
    return kind


def gpt_config(c, kind, dropout=0.0):
    """The GPTConfig of a Llama / Qwen2 / Qwen3 / Mistral config.json dict. Reads every field that changes
    what the network computes; one whose value it cannot compute raises UserError naming it."""
    def get(key, default):
        return c[key] if c.get(key) is not None else default

    def refuse(field, why):
        return UserError(f"config.json sets {field}={json.dumps(c.get(field))}, which this network cannot compute "
                         f"({why}); it loads {SUPPORTED} as transformers defines them")

    if c.get("quantization_config") is not None:
        raise refuse("quantization_config", "its weights are quantized; use the model's unquantized release")
    if get("hidden_act", "silu") != "silu":
        raise refuse("hidden_act", "the gated MLP here is SwiGLU, silu")
    # transformers 5 writes rope_parameters (theta included); earlier versions rope_theta and rope_scaling
    rope = dict(get("rope_parameters", None) or {})
    scaling = dict(get("rope_scaling", None) or {})
    theta = rope.get("rope_theta", get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    rope = {**scaling, **rope}
    field = "rope_parameters" if c.get("rope_parameters") else "rope_scaling"
    if rope_type not in ("default", "llama3"):
        raise refuse(field, "rotary scaling is computed for the llama3 type only")
    if get("partial_rotary_factor", 1.0) != 1.0:
        raise refuse("partial_rotary_factor", "every dimension of a head is rotated here")
    if kind == "llama" and get("attention_bias", False) != get("mlp_bias", False):
        raise refuse("attention_bias", f"with mlp_bias={json.dumps(get('mlp_bias', False))}: biases come on every "
                                       f"projection or none")
    if kind in ("qwen3", "mistral") and get("attention_bias", False):
        raise refuse("attention_bias", "the MLP of this class has no biases, and biases come on every projection "
                                       "or on q, k and v alone")
    n_embd, n_head = c["hidden_size"], c["num_attention_heads"]
    n_layer = c["num_hidden_layers"]
    context = get("max_position_embeddings", 2048)
    window = sliding_window(c, kind, n_layer)
    if window and window < context:
        # A window covering the whole context is plain causal attention: the model is used at contexts up
        # to its window, where it computes exactly what transformers computes.
        context = window
    args = dict(
        vocab_size=c["vocab_size"], n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=context,
        dropout=dropout, bias=kind == "llama" and get("attention_bias", False), qkv_bias=kind == "qwen2",
        pos_emb="rope", rope_theta=float(theta), norm="rmsnorm", norm_eps=get("rms_norm_eps", 1e-6),
        qk_norm=kind == "qwen3", mlp="swiglu", mlp_hidden=c["intermediate_size"],
        n_kv_head=get("num_key_value_heads", n_head), tie_embeddings=get("tie_word_embeddings", False),
        head_dim=0 if get("head_dim", n_embd // n_head) * n_head == n_embd else c["head_dim"],
    )
    if rope_type == "llama3":
        args.update(rope_scale=float(rope["factor"]), rope_scale_low=float(rope["low_freq_factor"]),
                    rope_scale_high=float(rope["high_freq_factor"]),
                    rope_scale_context=int(rope["original_max_position_embeddings"]))
    try:
        return GPTConfig(**args)
    except ValueError as e:
        raise UserError(f"config.json describes a network this project cannot build ({e})") from None


def sliding_window(c, kind, n_layer):
    """The attention window of a config, or None when every layer attends to the whole context. Mistral's
    sliding_window applies to every layer; Qwen2's and Qwen3's only with use_sliding_window (or layer_types
    naming sliding layers, as transformers 5 writes them)."""
    if kind == "mistral":
        return c.get("sliding_window")
    types = c.get("layer_types") or []
    if c.get("use_sliding_window") or "sliding_attention" in types:
        return c.get("sliding_window")
    return None


# safetensors' dtype names
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class Safetensors:
    """The tensors of a folder's model.safetensors (or its shards, listed by model.safetensors.index.json),
    read from the files' headers: name -> (file, dtype, shape, where the bytes lie). read_into copies one
    tensor's bytes from the file straight into the caller's tensor, so the weights are held once, in the
    caller's memory, with no file page kept mapped or copied twice."""

    def __init__(self, name_or_path):
        files = hub.weight_shards(name_or_path) or [hub.local_or_hub(name_or_path, "model.safetensors", required=False)]
        self.entries = {}
        for path in files:
            if path is None:
                raise UserError(f"{name_or_path} has no model.safetensors; it needs the weights as safetensors")
            try:
                with open(path, "rb") as f:
                    n = int.from_bytes(f.read(8), "little")
                    header = json.loads(f.read(n))
                for name, e in header.items():
                    if name != "__metadata__":
                        begin, end = e["data_offsets"]
                        self.entries[name] = (path, DTYPES[e["dtype"]], tuple(e["shape"]), 8 + n + begin, end - begin)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise UserError(f"{path} cannot be read: it is truncated or damaged ({type(e).__name__}); download it "
                                f"again") from None

    def __contains__(self, name):
        return name in self.entries

    def shape(self, name):
        return self.entries[name][2]

    def read_into(self, name, out):
        """The tensor's values into out (contiguous, of its shape; converted where out's dtype differs)."""
        path, dtype, shape, offset, size = self.entries[name]
        buf = out if out.dtype == dtype else torch.empty(shape, dtype=dtype)
        with open(path, "rb") as f:
            f.seek(offset)
            got = f.readinto(memoryview(buf.view(-1).view(torch.uint8).numpy()))
        if got != size:
            raise UserError(f"{path} is truncated ({name} is cut short); download it again")
        if buf is not out:
            out.copy_(buf)
        return out

    def read(self, name, dtype):
        return self.read_into(name, torch.empty(self.shape(name), dtype=dtype))


def state_dict(files, config, dtype):
    """The tensors of transformers' Llama / Qwen / Mistral files (a Safetensors) in this model's names and
    dtype, each read once into its place: q, k and v into the rows of one fused c_attn, gate and up into
    c_fc's."""
    out = {}

    def fuse(names):
        fused = torch.empty((sum(files.shape(n)[0] for n in names), *files.shape(names[0])[1:]), dtype=dtype)
        row = 0
        for n in names:
            rows = files.shape(n)[0]
            files.read_into(n, fused[row:row + rows])  # a block of whole rows: contiguous
            row += rows
        return fused

    renamed = {"input_layernorm.weight": "ln_1.weight", "post_attention_layernorm.weight": "ln_2.weight",
               "self_attn.q_norm.weight": "attn.q_norm.weight", "self_attn.k_norm.weight": "attn.k_norm.weight",
               "self_attn.o_proj.weight": "attn.c_proj.weight", "self_attn.o_proj.bias": "attn.c_proj.bias",
               "mlp.down_proj.weight": "mlp.c_proj.weight", "mlp.down_proj.bias": "mlp.c_proj.bias"}
    fused = {"attn.c_attn": [f"self_attn.{p}_proj" for p in "qkv"], "mlp.c_fc": ["mlp.gate_proj", "mlp.up_proj"]}
    taken = set()
    for i in range(config.n_layer):
        theirs, ours = f"model.layers.{i}.", f"transformer.h.{i}."
        for mine, parts in fused.items():
            for kind in ("weight", "bias"):
                names = [f"{theirs}{p}.{kind}" for p in parts]
                if all(n in files for n in names):
                    out[f"{ours}{mine}.{kind}"] = fuse(names)
                    taken.update(names)
        for name, mine in renamed.items():
            if theirs + name in files:
                out[ours + mine] = files.read(theirs + name, dtype)
                taken.add(theirs + name)
    for name, mine in (("model.embed_tokens.weight", "transformer.wte.weight"), ("model.norm.weight", "transformer.ln_f.weight")):
        if name in files:
            out[mine] = files.read(name, dtype)
            taken.add(name)
    if config.tie_embeddings:
        out["lm_head.weight"] = out.get("transformer.wte.weight")
        if "lm_head.weight" in files:  # some tied models store the head too: it must be the embedding
            if not torch.equal(files.read("lm_head.weight", dtype), out["lm_head.weight"]):
                raise UserError("config.json sets tie_word_embeddings=true but lm_head.weight differs from the "
                                "embedding; the files do not belong together")
            taken.add("lm_head.weight")
    buffers = ("rotary_emb.inv_freq",)  # a buffer some older files hold, recomputed here
    for name in files.entries:
        if name not in taken and not name.endswith(buffers):
            out[name] = files.read(name, dtype) if name == "lm_head.weight" else torch.empty(0)  # unexpected: named
    return out


def family_of_run(ckpt):
    """'llama', 'qwen2', 'qwen3', 'mistral' or 'gpt2': the class of the Hugging Face model a run's checkpoint
    started from, as the run recorded it (hf_family in its settings, carried through resumes and new runs
    from its checkpoints), else as its LoRA base's or init_from's folder (or the hub id's cached config.json)
    still says; None otherwise. Read without the network."""
    if "hf_family" in (ckpt.get("config") or {}):
        return ckpt["config"]["hf_family"]
    base = (ckpt.get("lora") or {}).get("base") or {}
    source = base.get("source") or (ckpt.get("config") or {}).get("init_from")
    if not isinstance(source, str) or source in ("scratch", "resume") or os.path.isfile(source):
        return None
    path = os.path.join(source, "config.json")
    if not os.path.isdir(source):
        try:
            from huggingface_hub import try_to_load_from_cache
            path = try_to_load_from_cache(source, "config.json")
        except Exception:  # not a repository id, or no huggingface_hub: nothing to say
            return None
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            c = json.load(f)
        # (a run folder's config.json holds the run's settings, not a model class)
        return architecture(c, source) if "architectures" in c or "model_type" in c else None
    except (OSError, ValueError, UserError, AttributeError):
        return None


def tokenizer_sha256(name_or_path):
    """sha256 of a model's tokenizer.json, what data prepared in it records; None for GPT-2 (whose data is in
    tiktoken's GPT-2 BPE), "" when the folder has none."""
    if architecture(read_config(name_or_path), name_or_path) == "gpt2":
        return None
    path = hub.local_or_hub(name_or_path, "tokenizer.json", required=False)
    if path is None:
        return ""
    with open(path, encoding="utf-8") as f:
        return hashlib.sha256(f.read().encode("utf-8")).hexdigest()


def load(name_or_path, dropout=0.0, dtype=torch.float32):
    """(GPT, description) of a Hugging Face folder or hub id of any class in SUPPORTED, its weights in dtype."""
    where = name_or_path if os.path.isdir(name_or_path) else repr(name_or_path)
    c = read_config(name_or_path)
    kind = architecture(c, where)
    if kind == "gpt2":
        return hf.load_gpt2(name_or_path, dropout=dropout, dtype=dtype), f"{name_or_path} (GPT-2)"
    config = gpt_config(c, kind, dropout)
    try:
        model = GPT.with_weights(config, state_dict(Safetensors(name_or_path), config, dtype), dtype=dtype, owned=True)
    except (ValueError, KeyError) as e:
        raise UserError(f"the weights of {where} do not fit its config.json ({e}); download the model "
                        f"again") from None
    desc = f"{name_or_path} ({c.get('architectures', [kind])[0]}"
    if config.block_size < c.get("max_position_embeddings", config.block_size):
        desc += (f"; used at contexts up to its sliding_window={config.block_size}, where its attention is the "
                 f"whole context's, as computed here")
    return model, desc + ")"

"""
GGUF files for llama.cpp: a model's weights under llama.cpp's tensor names, its hyperparameters and its
tokenizer (gguf_vocab) in one file, as f32, f16 or Q8_0 (blocks of 32 int8 weights with one fp16 scale).

The architecture is the one that computes what the model computes (hf.export_architecture's choice), under
the names and keys llama.cpp's convert_hf_to_gguf.py writes: llama.cpp's gpt2 for GPT-2's network, llama for
pos_emb=rope + norm=rmsnorm + mlp=swiglu (Llama, SmolLM, Mistral; Llama 3's rope scaling as its rope_freqs
tensor), qwen2 for that with biases on q, k and v, qwen3 for that with qk_norm. llama.cpp's gpt2 computes
GELU in its tanh form, the form GPT-2's own weights were trained with; a model trained with the exact GELU
(nanoGPT's default) differs by < 1e-3 per activation there.
"""

import os

import numpy as np
import torch

from gptkit import fileio, gguf_vocab, hf
from gptkit.errors import USAGE, UserError
from model import llama3_scaled

TYPES = ("f32", "f16", "q8_0")
# a key in every file export.py writes: the checkpoint it was made from, and that --overwrite may replace it
MARKER = "export.checkpoint"


def architecture(config):
    """'gpt2', 'llama', 'qwen2' or 'qwen3', or a sentence naming the option llama.cpp cannot compute."""
    arch = hf.export_architecture(config, target="llama.cpp architecture")
    if arch == "gpt2" and config.mlp != "gelu":
        raise UserError(f"mlp={config.mlp} cannot be exported as GGUF: llama.cpp's GPT-2 computes a GELU MLP, so no "
                        f"llama.cpp architecture computes this model (export it with --format=hf instead)",
                        status=USAGE)
    return arch


def rotary_to_interleaved(w, n_head):
    """Rows of a query or key projection (n_head * hs, ...) reordered from the rotate-half layout (this
    model's, transformers' Llama) to the adjacent-pairs layout llama.cpp's llama rotates: within each
    head, row i of the first half and row i of the second become rows 2i and 2i + 1."""
    hs = w.shape[0] // n_head
    return w.reshape(n_head, 2, hs // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model, vocab_size):
    """{llama.cpp tensor name: float32 numpy array} of the model, the vocabulary cropped to vocab_size."""
    c = model.config
    arch = architecture(c)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["transformer.wte.weight"][:vocab_size],
           "output_norm.weight": sd["transformer.ln_f.weight"]}
    if not c.tie_embeddings:  # tied: llama.cpp reads token_embd as the output head too
        out["output.weight"] = sd["lm_head.weight"][:vocab_size]
    C, L = c.n_embd, c.n_layer
    if arch == "gpt2":
        # llama.cpp's gpt2 requires every bias; a model without them gets zeros (as GPT-2 export does)
        zero = lambda n: torch.zeros(n)  # noqa: E731
        out["position_embd.weight"] = sd["transformer.wpe.weight"]
        out["output_norm.bias"] = sd.get("transformer.ln_f.bias", zero(C))
        for i in range(L):
            p, b = f"transformer.h.{i}.", f"blk.{i}."
            for ours, theirs, n in (("ln_1", "attn_norm", C), ("attn.c_attn", "attn_qkv", 3 * C),
                                    ("attn.c_proj", "attn_output", C), ("ln_2", "ffn_norm", C),
                                    ("mlp.c_fc", "ffn_up", c.mlp_width), ("mlp.c_proj", "ffn_down", C)):
                out[f"{b}{theirs}.weight"] = sd[f"{p}{ours}.weight"]
                out[f"{b}{theirs}.bias"] = sd.get(f"{p}{ours}.bias", zero(n))
    else:
        q_rows, kv = c.n_head * c.head_size, c.kv_heads * c.head_size
        for i in range(L):
            p, b = f"transformer.h.{i}.", f"blk.{i}."
            out[f"{b}attn_norm.weight"] = sd[f"{p}ln_1.weight"]
            out[f"{b}ffn_norm.weight"] = sd[f"{p}ln_2.weight"]
            if c.qk_norm:
                out[f"{b}attn_q_norm.weight"] = sd[f"{p}attn.q_norm.weight"]
                out[f"{b}attn_k_norm.weight"] = sd[f"{p}attn.k_norm.weight"]
            for kind in ("weight", "bias") if c.bias or c.qkv_bias else ("weight",):
                q, k, v = sd[f"{p}attn.c_attn.{kind}"].split([q_rows, kv, kv])
                if arch == "llama":  # qwen2 and qwen3 rotate halves as this model does; llama adjacent pairs
                    q, k = rotary_to_interleaved(q, c.n_head), rotary_to_interleaved(k, c.kv_heads)
                out.update({f"{b}attn_q.{kind}": q, f"{b}attn_k.{kind}": k, f"{b}attn_v.{kind}": v})
                if kind == "bias" and not c.bias:
                    continue  # qwen2: biases on q, k and v alone
                gate, up = sd[f"{p}mlp.c_fc.{kind}"].chunk(2)
                out.update({f"{b}attn_output.{kind}": sd[f"{p}attn.c_proj.{kind}"],
                            f"{b}ffn_gate.{kind}": gate, f"{b}ffn_up.{kind}": up,
                            f"{b}ffn_down.{kind}": sd[f"{p}mlp.c_proj.{kind}"]})
        if c.rope_scaling:  # llama.cpp divides each rotary frequency by its entry here (Llama 3's scaling)
            inv_freq = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_size, 2).float() / c.head_size))
            out["rope_freqs.weight"] = inv_freq / llama3_scaled(inv_freq, *c.rope_scaling)
    return arch, {k: v.contiguous().numpy() for k, v in out.items()}


def write_gguf(model, path, gguf_type, vocab=None, name="gptkit", source="", tokenizer_dir=None):
    """Write model as a GGUF file at path (atomically): llama.cpp's architecture for it, the tokenizer
    `vocab` (a gguf_vocab.Vocabulary; None: GPT-2's BPE, from tokenizer_dir's files if given), weights as
    gguf_type (f32; f16; q8_0 for every matrix whose rows are whole 32-weight blocks, f16 for the others).
    The embedding and head keep a row per token of vocab (rows padding the vocabulary further are never
    produced). Vectors (norms, biases, rope factors) stay f32, as llama.cpp's converter keeps them."""
    import gguf
    if gguf_type not in TYPES:
        raise UserError(f"gguf_type={gguf_type!r} is not one of {', '.join(TYPES)}", status=USAGE)
    c = model.config
    vocab = vocab or gguf_vocab.gpt2(tokenizer_dir)
    n_vocab = len(vocab.tokens)
    if n_vocab > c.vocab_size:
        raise UserError(f"the tokenizer has {n_vocab} tokens and the model {c.vocab_size} embedding rows: they do not "
                        f"belong together")
    arch, tensors = gguf_tensors(model, n_vocab)
    with fileio.atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_name(name)
        w.add_string(MARKER, source)
        w.add_context_length(c.block_size)
        w.add_embedding_length(c.n_embd)
        w.add_block_count(c.n_layer)
        w.add_feed_forward_length(c.mlp_width)
        w.add_head_count(c.n_head)
        w.add_head_count_kv(c.kv_heads)
        if arch == "gpt2":
            w.add_layer_norm_eps(c.norm_eps)
        else:
            w.add_layer_norm_rms_eps(c.norm_eps)
            w.add_rope_freq_base(c.rope_theta)
            w.add_rope_dimension_count(c.head_size)
            w.add_key_length(c.head_size)
            w.add_value_length(c.head_size)
            w.add_vocab_size(n_vocab)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[gguf_type])
        vocab.write(w)
        for tensor_name, data in tensors.items():
            if data.ndim == 1 or gguf_type == "f32":
                w.add_tensor(tensor_name, data)
            elif gguf_type == "q8_0" and data.shape[-1] % 32 == 0:
                q8 = gguf.GGMLQuantizationType.Q8_0
                w.add_tensor(tensor_name, gguf.quants.quantize(data, q8), raw_dtype=q8)
            else:
                w.add_tensor(tensor_name, data.astype(np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return arch


def written_by_export(path):
    """Whether path is a GGUF file this module wrote: the only file --overwrite replaces. write_gguf
    writes MARKER among the first keys, so its first 64 KiB say so (gguf.GGUFReader would parse the
    whole vocabulary, seconds, to tell)."""
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    return head[:4] == b"GGUF" and MARKER.encode() in head

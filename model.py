"""
The GPT network (GPT-2's, with the architecture options of later models), and nothing about files or
training loops.

Parameter names follow the GPT-2 checkpoint (wte, wpe, c_attn, c_proj, ln_f) so that importing
weights from Hugging Face, and loading nanoGPT's checkpoints, is a key-by-key copy. Every option
defaults to GPT-2's behaviour; the others are rotary positions, RMSNorm, QK-norm, ReLU^2 and SwiGLU
MLPs, an untied output head, logit soft-capping and grouped-query attention, each with its
reference where it is built. A model with rope + rmsnorm + swiglu is the network of transformers'
Llama (Qwen3 with qk_norm), down to the rotation convention, so hf.py exports it weight for weight.
References: GPT-2 paper (Radford et al. 2019), openai/gpt-2 model.py, karpathy/nanoGPT model.py.

This file imports only torch and the standard library: copied alone into another project,
`from model import GPT, GPTConfig` works, and so do GPT.from_pretrained (with transformers installed)
and GPT.generate.
"""

import math
import operator
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
from torch.nn import functional as F


def norm_layer(config, dim):
    """LayerNorm (GPT-2) or RMSNorm (Zhang & Sennrich 2019: no mean subtraction and no bias, only
    the scale; Llama's and most later models' choice, a little cheaper)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def rope_tables(head_size, theta, start, length, device, scaling=None):
    """cos and sin, each (length, head_size), of rotary position embeddings (Su et al. 2021, RoFormer)
    for positions start .. start + length - 1; with start a (B,) tensor, each row from its own start,
    (B, 1, length, head_size). Frequency i of head_size / 2 turns by theta^(-2i / hs) per position.
    The layout is the one of transformers' Llama ("rotate half": frequency i rotates the pair (x[i],
    x[i + hs/2]), not neighbouring pairs), so exported weights need no permutation.
    Computed afresh for each forward, in fp32: a few tiny ops, and no buffer that loading weights on
    the meta device (GPT.with_weights) would leave empty. scaling: Llama 3's (factor, low_freq_factor,
    high_freq_factor, original context), or None."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, device=device, dtype=torch.int64).float() / head_size))
    if scaling is not None:
        inv_freq = llama3_scaled(inv_freq, *scaling)
    if torch.is_tensor(start):  # each row of a batch at its own position (a batch of independent requests)
        pos = (start[:, None] + torch.arange(length, device=device)).float()  # (B, T)
        emb = torch.cat((pos[..., None] * inv_freq, pos[..., None] * inv_freq), dim=-1)[:, None]
        return emb.cos(), emb.sin()
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
    freqs = torch.outer(pos, inv_freq)  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
    return emb.cos(), emb.sin()


def llama3_scaled(inv_freq, factor, low, high, context):
    """Llama 3.1's longer context (Meta's llama3 reference code, "apply_scaling"): frequencies whose
    wavelength exceeds context / low turn `factor` times slower, those shorter than context / high keep
    their speed, and those between are blended linearly in context / wavelength."""
    wavelen = 2 * math.pi / inv_freq
    smooth = ((context / wavelen - low) / (high - low)).clamp(0, 1)  # 0: long wavelengths, 1: short ones
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def apply_rope(x, cos, sin):
    """x (B, nh, T, hs) with each pair (x[i], x[i + hs/2]) rotated by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)  # (B, nh, T, hs)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_size = config.n_head, config.kv_heads, config.head_size
        # q, k, v fused: n_head query heads, then n_kv_head key and as many value heads
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_size,
                                bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(self.n_head * self.head_size, config.n_embd, bias=config.bias)
        # QK-norm (Henry et al. 2020; Dehghani et al. 2023 for its stability at scale): each head's
        # query and key RMS-normalised, with a learnt scale, before the rotation, as Qwen3 does it.
        # The attention logits stay bounded however large the weights grow.
        self.q_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_size, eps=config.norm_eps) if config.qk_norm else None
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        # SDPA dispatches to flash / memory-efficient kernels; the manual path is the reference
        # it is tested against, and the fallback when a kernel misbehaves.
        self.sdpa = True

    def forward(self, x, rope=None, cache=None, layer=0):
        B, T, C = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_size
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs)
        k = k.view(B, T, nkv, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.transpose(1, 2)  # (B, nh, T, hs)
        k = k.transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)  # keys are cached rotated
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nkv, past + T, hs)
        S = k.size(2)
        dropout = self.dropout if self.training else 0.0
        # With no past, plain causal masking. A single new query may see every cached key. Several
        # new queries after a past need the causal mask shifted by `past`, given explicitly
        # (SDPA's is_causal aligns the mask to the top-left corner, not the bottom-right).
        # (Decided by branches, so that under torch.compile with dynamic shapes is_causal is a plain
        # bool, which SDPA requires, rather than a symbolic one.)
        mask, causal = None, False
        if torch.is_tensor(past):  # each row at its own position (a batch of independent requests):
            # row b's query i sees keys 0 .. past[b] + i; keys past a row's length belong to nothing
            mask = (torch.arange(S, device=x.device) <= past[:, None, None]
                    + torch.arange(T, device=x.device)[:, None])[:, None]  # (B, 1, T, S)
        elif T > 1 and past > 0:
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
        elif T > 1:
            causal = True
        if self.sdpa:
            # grouped-query attention (Ainslie et al. 2023): query head i reads key/value head i // (nh / nkv)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal, enable_gqa=nkv < nh)
        else:
            if nkv < nh:  # each key/value head repeated for its group of query heads
                k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)  # (B, nh, S, hs)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            if mask is None and T > 1:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.kind, hidden = config.mlp, config.mlp_width
        # swiglu: the gate and the up projection fused in one matrix, gate rows first
        self.c_fc = nn.Linear(config.n_embd, (2 if self.kind == "swiglu" else 1) * hidden, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new" in transformers), so
        # imported weights use it; nanoGPT trains with the exact form, which stays the default so
        # its checkpoints behave as they did. The two differ by < 1e-3.
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "relu2":
            h = F.relu(h).square()  # ReLU^2, So et al. 2021 (Primer): cheaper than GELU, and trained better there
        elif self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up  # SwiGLU, Shazeer 2020 (GLU variants), as in Llama
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm_layer(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm_layer(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


def option(default, help, choices=None, **bounds):
    """A GPTConfig field with its help and the values it may take (choices; bounds min, above, max, below).
    gptkit/keys.py reads these from this file's text: write `name: type = option(literal, "help", ...)`."""
    return field(default=default, metadata=dict(help=help, choices=choices, **bounds))


BOUNDS = dict(min=(operator.ge, "at least"), above=(operator.gt, "greater than"), max=(operator.le, "at most"),
              below=(operator.lt, "less than"))


@dataclass
class GPTConfig:
    block_size: int = option(1024, "context length in tokens", min=1)
    vocab_size: int = option(50304, "vocabulary size (GPT-2's 50257 padded to a multiple of 64: faster matmuls)", min=1)
    n_layer: int = option(12, "transformer blocks", min=1)
    n_head: int = option(12, "attention heads (must divide n_embd, unless head_dim is set)", min=1)
    n_embd: int = option(768, "embedding width", min=1)
    dropout: float = option(0.0, "dropout probability (0 for pretraining, 0.1+ for fine-tuning)", min=0.0, below=1.0)
    bias: bool = option(True, "biases in Linear and LayerNorm layers, like GPT-2; False is a bit better and faster")
    gelu_approximate: str = option("none", "GELU: none (exact, as nanoGPT trains) or tanh (GPT-2's own weights)",
                                   choices=("none", "tanh"))
    # Architecture options after GPT-2, from pos_emb on (docs/architecture.md). Each default is GPT-2's,
    # so a checkpoint saved before they existed (nanoGPT's) builds the network it was trained as.
    pos_emb: str = option("learned", "positions: learned (GPT-2's table) or rope (rotary, as in Llama)",
                          choices=("learned", "rope"))
    rope_theta: float = option(10000.0, "RoPE's base period (Llama 2: 10000; long-context models use more)", above=0.0)
    norm: str = option("layernorm", "layernorm (GPT-2) or rmsnorm (Llama)", choices=("layernorm", "rmsnorm"))
    norm_eps: float = option(1e-5, "epsilon of every norm (GPT-2's LayerNorm: 1e-5)", above=0.0)
    qk_norm: bool = option(False, "RMS-normalise each head's queries and keys (as Qwen3)")
    mlp: str = option("gelu", "gelu (GPT-2), relu2 (ReLU squared) or swiglu (Llama)",
                      choices=("gelu", "relu2", "swiglu"))
    mlp_hidden: int = option(0, "MLP hidden width (0: 4 * n_embd; swiglu: 8/3 * n_embd, to a multiple of 32)", min=0)
    n_kv_head: int = option(0, "key/value heads, a divisor of n_head: grouped-query attention, a smaller KV cache "
                            "(0: n_head)", min=0)
    tie_embeddings: bool = option(True, "the output head is the token embedding (False: a separate matrix)")
    logit_softcap: float = option(0.0, "cap logits smoothly at +-this: cap * tanh(logits / cap) (0: off; Gemma 2 "
                                  "used 30)", min=0.0)
    head_dim: int = option(0, "size of each attention head (0: n_embd / n_head; Qwen3 sets its own, larger)", min=0)
    qkv_bias: bool = option(False, "biases on the query, key and value projections alone, as Qwen2 has them")
    rope_scale: float = option(0.0, "Llama 3.1's rotary frequency scaling, for longer contexts (0: none)", min=0.0)
    rope_scale_low: float = option(1.0, "rope_scale's low_freq_factor", above=0.0)
    rope_scale_high: float = option(4.0, "rope_scale's high_freq_factor (above rope_scale_low)", above=0.0)
    rope_scale_context: int = option(8192, "rope_scale's original_max_position_embeddings", min=1)

    def __post_init__(self):
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self):
        """A sentence saying what makes these settings impossible, or None."""
        for f in fields(self):
            value, allowed = getattr(self, f.name), f.metadata
            if allowed["choices"] is not None and value not in allowed["choices"]:
                return f"{f.name}={value!r} is not one of {', '.join(allowed['choices'])}"
            bounds = [(b, allowed[b]) for b in BOUNDS if b in allowed]
            if not all(BOUNDS[b][0](value, limit) for b, limit in bounds):
                return f"{f.name}={value!r} must be {' and '.join(f'{BOUNDS[b][1]} {limit}' for b, limit in bounds)}"
        if self.n_embd % self.n_head and not self.head_dim:
            return (f"n_embd={self.n_embd} does not divide into n_head={self.n_head} heads: each head takes n_embd "
                    f"/ n_head dimensions, so make n_embd a multiple of n_head (such as n_head=6 with n_embd=384)")
        if self.n_kv_head > self.n_head or self.n_head % self.kv_heads:
            return (f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (each key/value head serves an "
                    f"equal group of query heads); use a divisor such as 1, or 0 for one per query head")
        if self.pos_emb == "rope" and self.head_size % 2:
            return (f"pos_emb=rope rotates pairs of dimensions, but the head size n_embd / n_head = "
                    f"{self.head_size} is odd; choose n_embd and n_head with an even quotient")
        if self.rope_scale and self.rope_scale_low >= self.rope_scale_high:
            return (f"rope_scale_low={self.rope_scale_low} must be below rope_scale_high={self.rope_scale_high} "
                    f"(frequencies between them are blended)")
        return None

    def options(self):
        """The architecture options (the fields after gelu_approximate) that differ from GPT-2's."""
        names = MODEL_ARG_KEYS[MODEL_ARG_KEYS.index("pos_emb"):]
        return {k: getattr(self, k) for k in names if getattr(self, k) != getattr(GPTConfig, k)}

    @property
    def head_size(self):
        return self.head_dim or self.n_embd // self.n_head

    @property
    def rope_scaling(self):
        """rope_tables' scaling argument: None, or Llama 3's four numbers."""
        return (self.rope_scale, self.rope_scale_low, self.rope_scale_high, self.rope_scale_context) \
            if self.rope_scale else None

    @property
    def kv_heads(self):
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self):
        if self.mlp_hidden:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            # SwiGLU has three matrices where GELU has two: 8/3 * n_embd keeps the parameter count
            # of 4 * n_embd (Shazeer 2020), rounded up to a multiple of 32 (whole SIMD and tensor-core
            # tiles; at most 3% more for the 128-wide CPU recipe, exactly 2048 for n_embd=768)
            return 32 * math.ceil(8 * self.n_embd / 3 / 32)
        return 4 * self.n_embd


# what a checkpoint's model_args may hold: every setting of the network
MODEL_ARG_KEYS = tuple(f.name for f in fields(GPTConfig))


class GPT(nn.Module):

    def __init__(self, config, init_weights=True):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        def embedding(rows):
            # without init_weights (GPT.with_weights) the table is made empty: its N(0, 1) init would be
            # thrown away, and on the meta device it imports torch._dynamo (a second of start-up)
            empty = {} if init_weights else {"_weight": torch.empty(rows, config.n_embd)}
            return nn.Embedding(rows, config.n_embd, **empty)

        modules = dict(wte=embedding(config.vocab_size))
        if config.pos_emb == "learned":
            modules["wpe"] = embedding(config.block_size)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=norm_layer(config, config.n_embd),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # weight tying (Press & Wolf 2017): the input embedding is the output projection. Untied
            # (most models since Llama), the head is a matrix of its own and AdamW's, not Muon's.
            self.transformer.wte.weight = self.lm_head.weight

        if not init_weights:
            return
        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer):
        # each block adds two of them, and the sum's variance should not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @classmethod
    def with_weights(cls, config, state_dict, dtype=torch.float32, owned=False):
        """A GPT holding state_dict's tensors (this project's names), built without the random
        initialisation that would be thrown away: loading costs the read, not an init of every weight
        (seconds for GPT-2 124M, minutes for 1.5B). Raises ValueError naming what does not fit.
        state_dict is emptied as its tensors are copied: a dict freshly read from a file and handed over
        is released tensor by tensor, so loading never holds the weights twice. Floating-point weights are
        stored in dtype: float32 to train (autocast picks the compute dtype), bfloat16 to run a large model
        in half the memory. owned: the tensors are memory of the caller's, already in dtype (read straight
        from a file into place), taken as they are rather than copied."""
        # made on the meta device (shapes without memory), then given the tensors, as transformers does
        with torch.device("meta"):
            model = cls(config, init_weights=False)
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if missing or unexpected:
            raise ValueError(f"the weights do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for k, v in state_dict.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{k} has shape {tuple(v.shape)} in the weights but {tuple(own[k].shape)} in the "
                                 f"model (a different vocabulary or size?)")
        # Owned copies in dtype, whatever the file holds (fp16/bf16 files; autocast picks compute dtypes), in
        # the tensors' own memory order: memory-mapped weights would be read from the file page by page
        # during the first steps (skewing every timing there), and training must never write into a file.
        tied = {"lm_head.weight": "transformer.wte.weight"} if config.tie_embeddings else {}
        given = {}
        for k in sorted(state_dict, key=lambda k: k in tied):  # a tied head last: it is the embedding's copy
            v = state_dict.pop(k)
            given[k] = given[tied[k]] if k in tied else v if owned and (v.dtype == dtype or not v.is_floating_point()) \
                else torch.empty_like(v, dtype=dtype if v.is_floating_point() else v.dtype).copy_(v)
        model.load_state_dict(given, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.transformer.wte.weight  # assign made two parameters of the tied pair
        return model

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; embedding tables (looked up, never multiplied) are left out by default, as
        in the GPT-2 paper's counts: position embeddings, and the token embedding only when it is not
        also the output layer."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n_params -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n_params -= self.transformer.wte.weight.numel()
        return n_params

    def crop_vocab(self, vocab_size):
        """Drop the embedding (and head) rows past vocab_size: the padding (50257 -> 50304) that no
        tokenizer produces, so generation can never sample an id the tokenizer cannot decode."""
        assert vocab_size <= self.config.vocab_size
        w = nn.Parameter(self.transformer.wte.weight.detach()[:vocab_size].clone())
        if self.config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight = w  # still tied
        else:
            self.transformer.wte.weight = w
            self.lm_head.weight = nn.Parameter(self.lm_head.weight.detach()[:vocab_size].clone())
        self.config.vocab_size = vocab_size

    def set_attention(self, impl):
        """'sdpa' (default, fused kernels) or 'manual' (the plain masked softmax)."""
        assert impl in ("sdpa", "manual")
        for block in self.transformer.h:
            block.attn.sdpa = impl == "sdpa"

    def forward(self, idx, targets=None, cache=None):
        """nanoGPT's (logits, loss). With targets (-1 where not counted), every position's logits and the
        mean cross-entropy; without, only the last position's logits (b, 1, vocab_size), all that sampling
        needs, and loss None. With a cache, idx continues the cached sequence (hidden_states). Training
        calls this one, through the module, so that DDP and FSDP wrappers see every pass."""
        x = self.hidden_states(idx, cache)
        if targets is None:
            return self.logits(x[:, [-1], :]), None  # list index keeps the time dim
        logits = self.logits(x)  # (b, t, vocab_size)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def all_logits(self, idx, cache=None):
        """Every position's logits (b, t, vocab_size), without a loss: to score a whole text."""
        return self.logits(self.hidden_states(idx, cache))

    def hidden_states(self, idx, cache=None):
        """The final hidden states (b, t, n_embd), for a caller that runs the head (self.logits) only where it
        needs logits. With a cache, idx continues the cached sequence from cache.pos, and the cache advances by
        t; cache.pos is an int, or a (b,) tensor of each row's own length (a batch of independent requests)."""
        device = idx.device
        b, t = idx.size()
        start = cache.pos if cache is not None else 0
        longest = int(start.max()) if torch.is_tensor(start) else start
        assert longest + t <= self.config.block_size, (
            f"cannot forward a sequence of length {longest + t}, block size is only {self.config.block_size}"
        )
        rope = None
        if self.config.pos_emb == "rope":
            # positions go on where the cache left off; the same tables serve every layer
            rope = rope_tables(self.config.head_size, self.config.rope_theta, start, t, device, self.config.rope_scaling)
            x = self.transformer.drop(self.transformer.wte(idx))  # (b, t, n_embd)
        else:
            pos = (start[:, None] if torch.is_tensor(start) else start) \
                + torch.arange(t, dtype=torch.long, device=device)  # (t,), or (b, t) for per-row starts
            x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (b, t, n_embd)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, rope, cache, layer)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += t
        return x

    def logits(self, x):
        """Logits of the final hidden states; soft-capped to (-cap, cap) with logit_softcap, as in
        Gemma 2 (Gemma Team 2024) and modded-nanogpt: a smooth bound on how sure the model can get,
        which keeps the loss from pushing a few logits ever higher."""
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to fine-tune GPT-2 (1024) with a smaller block."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        if "wpe" in self.transformer:  # rotary positions have no table
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls forward and backward (Kaplan et al. 2020,
        appendix B) plus attention's 12 * L * H * Q * T (PaLM paper, appendix B; the same with fewer
        key/value heads, which only shrink c_attn, counted in N). A frozen weight (LoRA) costs 4, not 6:
        its forward and its input's gradient, but no gradient of its own."""
        cfg = self.config
        N = self.get_num_params()
        tables = [self.transformer.wpe.weight] if "wpe" in self.transformer else []  # what N leaves out
        if not cfg.tie_embeddings:
            tables.append(self.transformer.wte.weight)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad and all(p is not t for t in tables))
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.head_size, cfg.block_size
        return 6 * N - 2 * frozen + 12 * L * H * Q * T

    # -------------------------------------------------------------------------
    # nanoGPT's entry points: GPT-2's weights, and sampling by recomputing the context

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """GPT-2's weights from Hugging Face: a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a
        local folder. Only dropout may be overridden. This goes through transformers, so model.py works
        copied alone; the scripts read the files directly instead (gptkit.hf, no transformers model built)."""
        dropout = (override_args or {}).get("dropout", 0.0)
        from transformers import GPT2LMHeadModel
        source = GPT2LMHeadModel.from_pretrained(model_type)
        return cls.with_weights(gpt2_config(source.config.to_dict(), dropout), from_gpt2_state_dict(source.state_dict()))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """idx (B, T) extended by max_new_tokens tokens, each sampled from the logits of the whole
        context (cropped to block_size): simple and slow, the reference that gptkit.generate's KV cache
        is tested against. temperature 0 takes the most likely token."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :]  # (B, vocab_size)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)  # (B, 1)
            idx = torch.cat((idx, nxt), dim=1)
        return idx


# -----------------------------------------------------------------------------
# GPT-2 as Hugging Face stores it, in this model's terms

# transformers stores these as Conv1D, whose weight is the transpose of nn.Linear's
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_config(c, dropout=0.0):
    """The GPTConfig of a transformers GPT-2 config (config.json as a dict). Settings this network
    does not implement are refused (ValueError) rather than computed differently."""
    get = lambda key, default: c.get(key, default) if c.get(key) is not None else default  # noqa: E731
    if c.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"model_type={c.get('model_type')!r} is not GPT-2")
    act = get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise ValueError(f"activation_function={act!r} is not GELU")
    n_embd = get("n_embd", 768)
    if get("n_inner", 4 * n_embd) != 4 * n_embd or get("layer_norm_epsilon", 1e-5) != 1e-5:
        raise ValueError(f"n_inner={c.get('n_inner')} or layer_norm_epsilon={c.get('layer_norm_epsilon')} "
                         f"differs from GPT-2's")
    if get("scale_attn_by_inverse_layer_idx", False) or get("reorder_and_upcast_attn", False) \
            or not get("scale_attn_weights", True):
        raise ValueError("the attention scaling differs from GPT-2's")
    if not get("tie_word_embeddings", True):
        raise ValueError("the output head is not tied to the token embedding")
    return GPTConfig(n_layer=get("n_layer", 12), n_head=get("n_head", 12), n_embd=n_embd,
                     block_size=get("n_positions", 1024), vocab_size=get("vocab_size", 50257), bias=True,
                     dropout=dropout, gelu_approximate="tanh" if act in ("gelu_new", "gelu_pytorch_tanh") else "none")


def from_gpt2_state_dict(hf_sd):
    """A transformers GPT-2 state dict (with or without the 'transformer.' prefix, the head stored or
    left out as tied) in this model's names and layout."""
    out = {}
    for k, v in hf_sd.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of older transformers versions, not weights
        if k != "lm_head.weight" and not k.startswith("transformer."):
            k = "transformer." + k
        out[k] = v.t() if k.endswith(CONV1D) else v
    wte = out.get("transformer.wte.weight")
    head = out.pop("lm_head.weight", None)
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ValueError("the output head is not tied to the token embedding")
    if wte is not None:
        out["lm_head.weight"] = wte
    return out

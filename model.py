"""
The GPT-2 network, and nothing about files or training loops.

Parameter names follow the GPT-2 checkpoint (wte, wpe, c_attn, c_proj, ln_f) so that importing
weights from Hugging Face, and loading nanoGPT's checkpoints, is a key-by-key copy.
References: GPT-2 paper (Radford et al. 2019), openai/gpt-2 model.py, karpathy/nanoGPT model.py.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F

from tokenizer import GPT2_PADDED_VOCAB


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v fused
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        # SDPA dispatches to flash / memory-efficient kernels; the manual path is the reference
        # it is tested against, and the fallback when a kernel misbehaves.
        self.sdpa = hasattr(F, "scaled_dot_product_attention")

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
        S = k.size(2)
        dropout = self.dropout if self.training else 0.0
        # With no past, plain causal masking. A single new query may see every cached key. Several
        # new queries after a past need the causal mask shifted by `past`, given explicitly
        # (SDPA's is_causal aligns the mask to the top-left corner, not the bottom-right).
        mask = None
        if past > 0 and T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=past)
        if self.sdpa:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=(past == 0 and T > 1)
            )
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            if mask is None and past == 0:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril()
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2 was trained with the tanh approximation of GELU ("gelu_new" in transformers), so
        # imported weights use it; nanoGPT trains with the exact form, which stays the default so
        # its checkpoints behave as they did. The two differ by < 1e-3.
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = GPT2_PADDED_VOCAB
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    gelu_approximate: str = "none"  # "none" (exact, nanoGPT) or "tanh" (GPT-2's own weights)


# what a checkpoint's model_args may hold: every setting of the network
MODEL_ARG_KEYS = tuple(f.name for f in fields(GPTConfig))


class GPT(nn.Module):

    def __init__(self, config, init_weights=True):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (Press & Wolf 2017): the input embedding is the output projection
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
    def with_weights(cls, config, state_dict):
        """A GPT holding state_dict's tensors (this project's names), built without the random
        initialisation that would be thrown away: loading costs the read, not an init of every weight
        (seconds for GPT-2 124M, minutes for 1.5B). Raises ValueError naming what does not fit."""
        # nn.Linear and nn.Embedding initialise their weights as they are made; here those weights are
        # replaced at once, so they are made uninitialised (torch.empty), as transformers does. (The meta
        # device would avoid the allocation too, but its init path imports torch._dynamo: 1-3 s.)
        saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
        nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda module: None
        try:
            model = cls(config, init_weights=False)
        finally:
            nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if missing or unexpected:
            raise ValueError(f"the weights do not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for k, v in state_dict.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{k} has shape {tuple(v.shape)} in the weights but {tuple(own[k].shape)} in the "
                                 f"model (a different vocabulary or size?)")
        # Owned fp32 copies, whatever the file holds (fp16/bf16 files; autocast picks compute dtypes), in
        # the tensors' own memory order: memory-mapped weights would be read from the file page by page
        # during the first steps (skewing every timing there), and training must never write into a file.
        state_dict = {k: torch.empty_like(v, dtype=torch.float32 if v.is_floating_point() else v.dtype).copy_(v)
                      for k, v in state_dict.items()}
        model.load_state_dict(state_dict, assign=True)
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
        """Parameter count; position embeddings are left out by default, as in the GPT-2 paper's
        counts (token embeddings stay in: they are the tied output layer)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def crop_vocab(self, vocab_size):
        """Drop the embedding rows past vocab_size: the padding (50257 -> 50304) that no tokenizer
        produces, so generation can never sample an id the tokenizer cannot decode."""
        assert vocab_size <= self.config.vocab_size
        w = nn.Parameter(self.transformer.wte.weight.detach()[:vocab_size].clone())
        self.transformer.wte.weight = self.lm_head.weight = w  # still tied
        self.config.vocab_size = vocab_size

    def set_attention(self, impl):
        """'sdpa' (default, fused kernels) or 'manual' (the plain masked softmax)."""
        assert impl in ("sdpa", "manual")
        for block in self.transformer.h:
            block.attn.sdpa = impl == "sdpa"

    def forward(self, idx, targets=None, cache=None, all_logits=False):
        """Logits and loss. Without targets, only the last position's logits are computed (the
        only ones generation needs) unless all_logits. With a cache, idx continues the cached
        sequence: positions start at cache.pos, and the cache advances by idx's length."""
        device = idx.device
        b, t = idx.size()
        start = cache.pos if cache is not None else 0
        assert start + t <= self.config.block_size, (
            f"cannot forward a sequence of length {start + t}, block size is only {self.config.block_size}"
        )
        pos = torch.arange(start, start + t, dtype=torch.long, device=device)  # (t,)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (b, t, n_embd)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += t

        if targets is not None:
            logits = self.lm_head(x)  # (b, t, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        elif all_logits:
            logits, loss = self.lm_head(x), None
        else:
            logits, loss = self.lm_head(x[:, [-1], :]), None  # list index keeps the time dim
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to fine-tune GPT-2 (1024) with a smaller block."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls forward and backward (Kaplan et al. 2020,
        appendix B) plus attention's 12 * L * H * Q * T (PaLM paper, appendix B)."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    # -------------------------------------------------------------------------
    # nanoGPT's entry points, kept for code written against it; the work is done elsewhere

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """A GPT with a Hugging Face GPT-2's weights (hf.py)."""
        import hf
        return hf.load_gpt2(name_or_path, dropout=(override_args or {}).get("dropout", 0.0))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                 use_cache=True):
        """idx extended by max_new_tokens sampled tokens (generate.py)."""
        import generate
        return generate.generate(self, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache)

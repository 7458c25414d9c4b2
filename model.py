"""
The GPT-2 network, and nothing about files or training loops.

Parameter names follow the GPT-2 checkpoint (wte, wpe, c_attn, c_proj, ln_f) so that importing
weights from Hugging Face, and loading nanoGPT's checkpoints, is a key-by-key copy.
References: GPT-2 paper (Radford et al. 2019), openai/gpt-2 model.py, karpathy/nanoGPT model.py.
"""

import inspect
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


class KVCache:
    """Keys and values of every layer for positions [0, pos), preallocated up to block_size."""

    def __init__(self, n_layer, batch_size, n_head, block_size, head_size, device, dtype):
        shape = (n_layer, batch_size, n_head, block_size, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hs) at the next T positions; return the keys and values so far."""
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        end = self.pos + T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


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
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    gelu_approximate: str = "none"  # "none" (exact, nanoGPT) or "tanh" (GPT-2's own weights)


class GPT(nn.Module):

    def __init__(self, config):
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

        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer):
        # each block adds two of them, and the sum's variance should not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

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

    # -------------------------------------------------------------------------
    # Hugging Face GPT-2 weights in and out

    # transformers stores these as Conv1D, whose weight is the transpose of nn.Linear's
    HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """A GPT with the weights of a Hugging Face GPT-2: a hub name (gpt2, gpt2-medium,
        gpt2-large, gpt2-xl) or a local folder with config.json and model.safetensors or
        pytorch_model.bin. Only dropout may be overridden: every other architecture setting comes
        from the source. Raises OSError when the weights cannot be fetched or read."""
        override_args = dict(override_args or {})
        assert set(override_args) <= {"dropout"}, "only dropout can be overridden"
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel.from_pretrained(name_or_path)
        c = hf.config
        # settings this network does not implement: refuse rather than compute something else
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
            raise ValueError(f"activation_function={c.activation_function!r} is not GELU")
        if c.n_inner not in (None, 4 * c.n_embd) or c.layer_norm_epsilon != 1e-5:
            raise ValueError(f"n_inner={c.n_inner} or layer_norm_epsilon={c.layer_norm_epsilon} differs from GPT-2's")
        if c.scale_attn_by_inverse_layer_idx or c.reorder_and_upcast_attn or not c.scale_attn_weights:
            raise ValueError("the attention scaling differs from GPT-2's")
        if not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight):
            raise ValueError("the output head is not tied to the token embedding")
        config = GPTConfig(
            n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions,
            vocab_size=c.vocab_size, bias=True, dropout=override_args.get("dropout", 0.0),
            gelu_approximate="tanh" if c.activation_function in ("gelu_new", "gelu_pytorch_tanh") else "none",
        )
        model = cls(config)
        model.load_hf_state_dict(hf.state_dict())
        return model

    def load_hf_state_dict(self, hf_sd):
        """Copy a transformers GPT2LMHeadModel state dict into this model, key by key."""
        sd = self.state_dict()
        hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        missing = [k for k in sd if k not in hf_sd]
        unexpected = [k for k in hf_sd if k not in sd]
        if missing or unexpected:
            raise OSError(f"not a GPT-2 state dict: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for k, v in hf_sd.items():
                v = v.t() if k.endswith(self.HF_TRANSPOSED) else v
                if v.shape != sd[k].shape:
                    raise OSError(f"{k} has shape {tuple(v.shape)} in the source but {tuple(sd[k].shape)} here")
                sd[k].copy_(v)

    def hf_state_dict(self, vocab_size=None):
        """This model's weights in transformers' GPT2LMHeadModel layout: Conv1D weights
        transposed, zero biases where this model has none, the vocabulary cropped to vocab_size
        (padding rows dropped). The head stays the same tensor as wte, so it remains tied."""
        vocab_size = vocab_size or self.config.vocab_size
        out = {}
        for k, v in self.state_dict().items():
            v = v.detach()
            if k.endswith(self.HF_TRANSPOSED):
                v = v.t()
            if k in ("transformer.wte.weight", "lm_head.weight"):
                continue
            out[k] = v.contiguous()
        wte = self.transformer.wte.weight.detach()[:vocab_size].contiguous()
        out["transformer.wte.weight"] = out["lm_head.weight"] = wte
        if not self.config.bias:  # transformers' GPT-2 always has biases: add zeros
            C = self.config.n_embd
            zeros = {"ln_1.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C, "ln_2.bias": C,
                     "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C}
            for i in range(self.config.n_layer):
                for name, n in zeros.items():
                    out[f"transformer.h.{i}.{name}"] = torch.zeros(n, dtype=wte.dtype)
            out["transformer.ln_f.bias"] = torch.zeros(C, dtype=wte.dtype)
        return out

    def hf_config(self, vocab_size=None):
        """The matching transformers GPT2Config."""
        from transformers import GPT2Config
        c = self.config
        return GPT2Config(
            vocab_size=vocab_size or c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
            n_layer=c.n_layer, n_head=c.n_head, n_inner=4 * c.n_embd,
            activation_function="gelu_new" if c.gelu_approximate == "tanh" else "gelu",
            resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=1e-5,
            tie_word_embeddings=True,
            # <|endoftext|> only exists in GPT-2's vocabulary; a character vocabulary has no such token
            **({} if (vocab_size or c.vocab_size) > 50256 else dict(bos_token_id=None, eos_token_id=None)),
        )

    # -------------------------------------------------------------------------
    # optimisation and speed accounting

    def configure_optimizers(self, weight_decay, learning_rate, betas, fused=False, optimizer="adamw",
                             muon_lr=0.02, muon_momentum=0.95, muon_ns_steps=5):
        """AdamW; weight decay only on >= 2-D tensors (matmul weights and embeddings), none on
        biases and LayerNorm gains. fused=True only where the device has the fused kernel.

        optimizer="muon": Muon (Jordan et al. 2024, kellerjordan.github.io/posts/muon) for the 2-D
        weights inside the blocks, AdamW as above for everything else (embeddings and the tied
        head, position embeddings, biases, norms), which Muon is not meant for."""
        params = [p for p in self.parameters() if p.requires_grad]
        muon_params = []
        if optimizer == "muon":
            muon_params = [p for p in self.transformer.h.parameters() if p.requires_grad and p.dim() == 2]
        muon_ids = {id(p) for p in muon_params}
        rest = [p for p in params if id(p) not in muon_ids]
        decay = [p for p in rest if p.dim() >= 2]
        no_decay = [p for p in rest if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        extra = {"fused": True} if fused and "fused" in inspect.signature(torch.optim.AdamW).parameters else {}
        adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)
        if optimizer == "adamw":
            return adamw
        assert optimizer == "muon", optimizer
        # "original" scales each update by sqrt(max(1, rows / cols)), as Keller Jordan's Muon does,
        # so muon_lr means the same for the square and the 4x-wide matrices. No weight decay:
        # torch's Muon multiplies it by muon_lr (~10x AdamW's lr), so weight_decay would shrink
        # these weights ~10x harder than AdamW does. Whether some decay helps long runs is untested.
        muon = Muon(muon_params, lr=muon_lr, momentum=muon_momentum, weight_decay=0.0, adjust_lr_fn="original",
                    ns_steps=muon_ns_steps)
        # the lr schedule multiplies each group's lr_scale: it shapes both learning rates alike
        for g in muon.param_groups:
            g["lr_scale"] = muon_lr / learning_rate
        return MuonAdamW(muon, adamw)

    def flops_per_token(self):
        """Training FLOPs per token: 6N for the matmuls forward and backward (Kaplan et al. 2020,
        appendix B) plus attention's 12 * L * H * Q * T (PaLM paper, appendix B)."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, tokens_per_iter, dt, peak_flops):
        """Model FLOPs utilisation: achieved training FLOP/s over the device's peak."""
        if not peak_flops or dt <= 0:
            return None
        return self.flops_per_token() * tokens_per_iter / dt / peak_flops

    # -------------------------------------------------------------------------
    # generation

    def new_cache(self, batch_size, device=None, dtype=None):
        cfg = self.config
        ref = self.lm_head.weight
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head,
                       device or ref.device, dtype or ref.dtype)

    def decode_layout(self):
        """Store every Linear weight column-major (the transpose contiguous), in place, on CPU.
        Decoding one position multiplies a vector by each weight; this CPU BLAS streams the
        column-major layout about 1.5x faster (bench.py --mode=generate measures it). The values,
        parameter names, shapes and the code path stay the same; only the memory order changes."""
        # ordinary tensors even when called under inference mode, so the model can still be trained
        with torch.inference_mode(False), torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear) and module.weight.device.type == "cpu" and module.weight.is_contiguous():
                    module.weight.data = module.weight.data.t().contiguous().t()  # also wte: the head is tied to it

    # inference mode rather than no_grad: it also skips view and version-counter bookkeeping, about
    # 2 ms of a ~40 ms decode step for the 124M model on a 2-core CPU
    @torch.inference_mode()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        generator=None, stop_tokens=()):
        """Yield the next token of every row, shape (B,), one step at a time.

        The prompt is prefilled once into a KV cache; each new token then costs one forward of a
        single position through the same attention code as training. When the sequence outgrows
        block_size the window slides: the cache is rebuilt from the last block_size tokens, which
        makes each token past that point cost one prefill (learned absolute positions move with
        the window, so cached keys cannot be reused) and keeps the result identical to full
        recomputation. Stops early once every row has produced one of stop_tokens."""
        block = self.config.block_size
        if idx.device.type == "cpu" and not self.training:
            self.decode_layout()
        cache = self.new_cache(idx.size(0))
        logits, _ = self(idx[:, -block:], cache=cache)
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
        threads = DecodeThreads(idx.device)
        try:
            for _ in range(max_new_tokens):
                nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
                yield nxt
                idx = torch.cat((idx, nxt[:, None]), dim=1)
                if len(stops):
                    done |= torch.isin(nxt, stops)
                    if bool(done.all()):
                        return
                if cache.pos < block:
                    with threads.step():
                        logits, _ = self(nxt[:, None], cache=cache)
                else:  # slide the window
                    cache.pos = 0
                    logits, _ = self(idx[:, -block:], cache=cache)
        finally:
            threads.restore()

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
                 use_cache=True):
        """Return idx extended by max_new_tokens sampled tokens. use_cache=False recomputes the
        whole (cropped) context for every token, as nanoGPT does: the reference for the cache."""
        if use_cache:
            new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, generator))
            return torch.cat([idx] + [t[:, None] for t in new], dim=1)
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            idx = torch.cat((idx, nxt[:, None]), dim=1)
        return idx


def orthogonalize(G, coefficients, steps, eps, dtype):
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix U V^T of each G = U S V^T
    in a (n, rows, cols) batch with rows <= cols (Bernstein & Newhouse 2024; the quintic with these
    coefficients is Keller Jordan's: it gives singular values in roughly [0.7, 1.2] rather than
    exactly 1, which trains as well). Rows <= cols keeps the Gram matrix X X^T the smaller one."""
    a, b, c = coefficients
    X = G.to(dtype)
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    return X.to(G.dtype)


class Muon(torch.optim.Muon):
    """torch.optim.Muon (same hyperparameters, state layout and update), except that the
    Newton-Schulz iteration runs in bfloat16 only on CUDA. torch's runs it in bfloat16 everywhere,
    which a CPU without bf16 units does ~20x slower than fp32 (136 against 7 ms for one 512x128
    matrix on this project's 2-core EPYC): it made a Muon step cost more than the whole forward and
    backward. tests/test_optim.py checks it against torch's within bf16 rounding."""

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "closures are not supported"
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            # Same-shaped updates (a layer's weights repeat in every block) are orthogonalized as one
            # batch: one chain of batched matmuls instead of one per matrix. On the CPU recipe's
            # 16 small matrices this made the optimizer step 1.7x faster.
            by_shape = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                tall = p.size(0) > p.size(1)
                update = update.mT if tall else update
                by_shape.setdefault(tuple(update.shape), []).append((p, tall, update))
            for items in by_shape.values():
                dtype = torch.bfloat16 if items[0][0].is_cuda else torch.float32
                ortho = orthogonalize(torch.stack([u for _, _, u in items]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"], dtype)
                for (p, tall, _), update in zip(items, ortho):
                    A, B = p.shape
                    # "original" (the only one train.py uses): same update RMS for tall and square matrices
                    scale = math.sqrt(max(1, A / B)) if group["adjust_lr_fn"] in (None, "original") else 0.2 * math.sqrt(max(A, B))
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(update.mT if tall else update, alpha=-lr * scale)


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer: what train.py needs of one (param_groups for the
    lr schedule and the gradient scaler, step, zero_grad, and a state dict of plain tensors and
    numbers that torch.load(weights_only=True) reads back)."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw
        self.param_groups = muon.param_groups + adamw.param_groups  # the same dicts: lr changes reach both

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {"muon", "adamw"}:
            raise ValueError("the saved optimizer state is not Muon + AdamW")
        scales = [g["lr_scale"] for g in self.muon.param_groups]  # today's muon_lr, not the saved one
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])
        for g, scale in zip(self.muon.param_groups, scales):
            g["lr_scale"] = scale
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


class DecodeThreads:
    """Picks the CPU thread count for single-position decode steps by timing them. A decode step
    is a chain of small ops; when other processes keep the cores busy, every op's parallel region
    waits for a descheduled worker, and one thread measured 2-3x faster than two on a loaded
    2-core machine, while on an idle machine more threads stream the weights faster. So the first
    steps alternate between all threads and one, and the faster median wins."""

    TRIALS = 3  # steps timed per candidate

    def __init__(self, device):
        self.original = torch.get_num_threads()
        cpu = torch.device(device).type == "cpu"
        self.candidates = [self.original, 1] if cpu and self.original > 1 else []
        self.times = {n: [] for n in self.candidates}
        self.chosen = None if self.candidates else self.original

    @contextmanager
    def step(self):
        if self.chosen is not None:
            if torch.get_num_threads() != self.chosen:
                torch.set_num_threads(self.chosen)
            yield
            return
        n = min(self.candidates, key=lambda c: len(self.times[c]))  # take turns
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        yield
        self.times[n].append(time.perf_counter() - t0)
        if all(len(t) >= self.TRIALS for t in self.times.values()):
            self.chosen = min(self.candidates, key=lambda c: sorted(self.times[c])[self.TRIALS // 2])

    def restore(self):
        torch.set_num_threads(self.original)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from (B, vocab) logits. temperature 0 is greedy; top_k keeps the k most
    likely tokens; top_p keeps the smallest set of most likely tokens whose probability reaches p
    (nucleus sampling, Holtzman et al. 2019)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the set already reached p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]

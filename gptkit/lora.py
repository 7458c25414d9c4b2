"""
LoRA adapters (Hu et al. 2021, arxiv.org/abs/2106.09685): chosen Linear layers of a GPT keep their
weights frozen and learn a low-rank update beside them; what identifies the base they adapt; folding
them into the weights (merge).

A target layer y = x W^T + b becomes

    y = x W^T + b + (dropout(x) A^T B^T) * alpha / r      A: (r, in), B: (out, r)

with A drawn as nn.Linear draws its weights (Kaiming-uniform, as PEFT does) and B zero, so training
starts from the base model exactly. Every weight of the model is frozen, the adapters alone train: a
run keeps no gradient and no optimizer state for the base, and its checkpoint holds the adapters
(megabytes) with the source and a checksum of the base they belong to, not the base itself.

The wrapped layer keeps its own parameter names (`...attn.c_attn.weight` is still the base weight,
`...attn.c_attn.lora_A` and `.lora_B` sit beside it), so the base's state dict loads into an adapted
model unchanged, and a merged model is a plain GPT again.

A tied output head (tie_embeddings=True) shares its weight with the token embedding. An adapter on
`lm_head` changes the head only, not the embedding lookup (as PEFT does it); merging it therefore
gives the head a matrix of its own: the merged model is untied (tie_embeddings=False).
"""

import hashlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
from torch.nn import functional as F

from gptkit.errors import USAGE, UserError

# The layers an adapter can go around, by the name of the module within a block (or of the head).
# A name in lora_targets picks every module whose full name ends with it.
KINDS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")
NAMES = {
    "c_attn": ("attn.c_attn",),  # the fused query/key/value projection
    "attn.c_attn": ("attn.c_attn",),
    "attn.c_proj": ("attn.c_proj",),  # the attention's output
    "mlp.c_fc": ("mlp.c_fc",),  # the MLP's input (gate and up, fused, with swiglu)
    "c_fc": ("mlp.c_fc",),
    "mlp.c_proj": ("mlp.c_proj",),  # the MLP's output
    "c_proj": ("attn.c_proj", "mlp.c_proj"),
    "attn": ("attn.c_attn", "attn.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "all-linear": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),  # PEFT's name: every block matrix
    "lm_head": ("lm_head",),
    # PEFT's names for Llama, Qwen and Mistral; q, k and v (gate and up) are one fused matrix here, so they
    # come together (kinds refuses one without the others: its adapter would reach its neighbours)
    "q_proj": ("attn.c_attn",), "k_proj": ("attn.c_attn",), "v_proj": ("attn.c_attn",),
    "o_proj": ("attn.c_proj",), "gate_proj": ("mlp.c_fc",), "up_proj": ("mlp.c_fc",), "down_proj": ("mlp.c_proj",),
}
FUSED = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def kinds(targets):
    """The layer kinds (KINDS, in that order) a lora_targets value names: comma-separated names of
    NAMES. One sentence for a name that is not one."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [t for t in names if t not in NAMES]
    if unknown or not names:
        raise UserError(f"lora_targets={targets!r}: {', '.join(map(repr, unknown)) or 'nothing'} is not a layer "
                        f"LoRA can adapt; give comma-separated names from {', '.join(NAMES)} (e.g. "
                        f"--lora_targets=c_attn,c_proj)", status=USAGE)
    for group in FUSED:
        given = [t for t in group if t in names]
        if given and len(given) < len(group):
            raise UserError(f"lora_targets={targets!r}: {', '.join(group)} are one fused matrix in this model, so an "
                            f"adapter on {', '.join(given)} alone would reach the others too; name all of "
                            f"{', '.join(group)}", status=USAGE)
    chosen = {k for t in names for k in NAMES[t]}
    return tuple(k for k in KINDS if k in chosen)


class LoRALinear(nn.Module):
    """A frozen nn.Linear's weight and bias (the same Parameter objects: a tied head stays tied) with a
    trainable rank-r update B @ A beside it."""

    def __init__(self, base, rank, alpha, dropout):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        # nn.Linear's own init (a=sqrt(5): bound 1/sqrt(in)), which is PEFT's for A; B = 0 makes the
        # update zero, so step 0 computes the base model exactly
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)  # (B, T, out)
        # the scale applied to the (B, T, r) middle rather than the (B, T, out) result: the same
        # product, r / out as many multiplications
        return y + F.linear(F.linear(self.dropout(x), self.lora_A) * self.scale, self.lora_B)

    def delta(self):
        """The update the adapter adds to the weight: alpha / r * B @ A, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scale

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def adapted(model):
    """(name, LoRALinear) of every adapted layer of the model, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def _parent(model, name):
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def _targeted(model, chosen):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and any(n == k or n.endswith("." + k) for k in chosen)]


def check_rank(model, rank, targets):
    """One sentence when rank is not below the width of a layer it would adapt: a rank-r update B @ A of an
    m x n matrix with r >= min(m, n) is no longer low-rank, so the adapters would train as many numbers as
    the weight itself and save nothing."""
    for name, m in _targeted(model, kinds(targets)):
        width = min(m.in_features, m.out_features)
        if rank >= width:
            raise UserError(f"lora_rank={rank} is not below the width of the layers it adapts ({name} is "
                            f"{m.out_features} x {m.in_features}, so {width}): such an update is not low-rank and "
                            f"trains as many numbers as the weight; use a rank well below {width} (8 is common), or "
                            f"lora_rank=0 to train every weight", status=USAGE)


def apply(model, rank, alpha, dropout, targets, base):
    """Freeze every weight of the (plain) GPT and put a rank-`rank` adapter around each Linear layer
    that `targets` (a lora_targets value) names. base: what identifies the weights adapted (identify()).
    The settings travel with the model as model.lora, which checkpoints record."""
    assert not adapted(model), "the model already has adapters: merge() them first"
    chosen = kinds(targets)
    names = [n for n, _ in _targeted(model, chosen)]
    model.requires_grad_(False)
    for name in names:
        parent, attr = _parent(model, name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, dropout))
    model.lora = dict(rank=rank, alpha=alpha, dropout=dropout, targets=list(chosen), base=base)
    return model


def set_dropout(model, p):
    """Give every adapter dropout p (a resumed run may change it, as it may change the model's dropout)."""
    for _, m in adapted(model):
        m.dropout.p = p
    model.lora["dropout"] = p


def merge(model):
    """Fold each adapter into its weight, W + alpha / r * B @ A, and put a plain nn.Linear back in its
    place: the result is a GPT like any other (every parameter trainable again), computing what the
    adapted model computed up to float rounding. A model without adapters is returned as it is. An
    adapted tied head gets its own matrix (the embedding lookup never had the update): tie_embeddings
    becomes False."""
    layers = adapted(model)
    if not layers:
        return model
    with torch.no_grad():
        for name, m in layers:
            weight = m.weight
            if name == "lm_head" and model.config.tie_embeddings:
                weight = nn.Parameter(weight.detach().clone())  # the embedding keeps the base's rows
                model.config.tie_embeddings = False
            weight.add_(m.delta().to(weight.dtype))
            linear = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            linear.weight, linear.bias = weight, m.bias
            parent, attr = _parent(model, name)
            setattr(parent, attr, linear)
    del model.lora
    return model.requires_grad_(True)


def adapter_state(model):
    """The adapters' tensors by their names in the model (…c_attn.lora_A, …c_attn.lora_B): what a LoRA
    checkpoint holds as its 'model'."""
    return {f"{name}.{part}": getattr(m, part).detach() for name, m in adapted(model) for part in ("lora_A", "lora_B")}


def load_adapters(model, state, path):
    """Copy a checkpoint's adapter tensors into the model's adapters; a sentence if they do not fit."""
    own = adapter_state(model)
    if set(own) != set(state):
        extra, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
        raise UserError(f"{path} holds adapters that do not fit the layers its settings name (unexpected "
                        f"{extra[:2]}, missing {missing[:2]}); it was written by another version or edited")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise UserError(f"{path}: the adapter {k} has shape {tuple(v.shape)} where the model needs "
                            f"{tuple(own[k].shape)}; the base model differs from the one it was trained on")
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)


def checkpoint_entries(model):
    """What a checkpoint holds for an adapted model, in place of its weights: {'model': the adapters,
    'lora': the settings and the base's identity}; None for a model without adapters."""
    if not adapted(model):
        return None
    return dict(model=adapter_state(model), lora=dict(model.lora))


def describe(model):
    """One line: the adapters, and how many parameters train."""
    settings = model.lora
    layers = adapted(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"LoRA rank {settings['rank']} (alpha {settings['alpha']:g}, dropout {settings['dropout']:g}) on "
            f"{len(layers)} layers ({', '.join(settings['targets'])}): {trainable:,} trainable parameters of "
            f"{total / 1e6:.2f}M ({100 * trainable / total:.2f}%); the base's weights stay frozen")


# -----------------------------------------------------------------------------
# the base an adapter belongs to

def fingerprint(model):
    """sha256 of a model's network settings (dropout aside) and of every tensor, as loaded: the same
    weights give the same digest wherever they are loaded (an adapted model's are its base's and its
    adapters', never recomputed sums). Tensors are hashed in parallel (hashlib releases the GIL):
    GPT-2 medium's 1.4 GB fp32 take about a second on a 2-core CPU."""
    config = {k: v for k, v in sorted(vars(model.config).items()) if k != "dropout"}
    tensors = list(model.named_parameters()) + list(model.named_buffers())  # a tied weight once

    def digest(item):
        name, t = item
        h = hashlib.sha256(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy())
        return h.digest()

    h = hashlib.sha256(repr(config).encode())
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for d in pool.map(digest, tensors):
            h.update(d)
    return h.hexdigest()


def identify(model, source):
    """What identifies a base: where its weights come from (a checkpoint path, a Hugging Face folder
    or hub name) and the fingerprint of the model as loaded from there."""
    return dict(source=source, sha256=fingerprint(model))


"""
Optimizers and the learning-rate schedule: AdamW with weight decay on matrices only, Muon for the
hidden matrices (with AdamW for the rest), and linear warmup then cosine decay.
"""

import math

import torch


def lr_at(it, learning_rate, min_lr, warmup_iters, lr_decay_iters, decay_lr=True):
    """The learning rate of iteration `it`: linear warmup to learning_rate over warmup_iters, cosine
    decay to min_lr at lr_decay_iters, then min_lr (nanoGPT's schedule); learning_rate throughout
    without decay_lr."""
    if not decay_lr:
        return learning_rate
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 -> 0
    return min_lr + coeff * (learning_rate - min_lr)


def set_lr(optimizer, lr):
    """Give every parameter group lr, times the group's lr_scale (Muon's groups: muon_lr / learning_rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def configure_optimizers(model, weight_decay, learning_rate, betas, fused=False, optimizer="adamw",
                         muon_lr=0.02, muon_momentum=0.95, muon_ns_steps=5):
    """AdamW; weight decay only on >= 2-D tensors (matmul weights and embeddings), none on
    biases and LayerNorm gains. fused=True only where the device has the fused kernel.

    optimizer="muon": Muon (Jordan et al. 2024, kellerjordan.github.io/posts/muon) for the 2-D
    weights inside the blocks, AdamW as above for everything else (embeddings and the tied
    head, position embeddings, biases, norms), which Muon is not meant for."""
    params = [p for p in model.parameters() if p.requires_grad]
    muon_params = []
    if optimizer == "muon":
        muon_params = [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]
    muon_ids = {id(p) for p in muon_params}
    rest = [p for p in params if id(p) not in muon_ids]
    decay = [p for p in rest if p.dim() >= 2]
    no_decay = [p for p in rest if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"fused": True} if fused else {}
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


# Sharded parameters (parallel=fsdp, gptkit/sharding.py) are DTensors, each process holding some rows.
# Newton-Schulz needs whole matrices: each update is gathered whole (one all-gather per matrix), every
# process orthogonalizes all of them, as a DDP process does, and keeps its own rows of the result.
# Gradients, momentum and weights stay sharded.

def whole(t):
    """The whole matrix of a sharded tensor (a DTensor: gathered from every process); t if not sharded."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def like(p, t):
    """t (whole) as p is held: where p is sharded, this process's shard of t (cut here, no communication)."""
    if not hasattr(p, "device_mesh"):  # not a DTensor
        return t
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(t, p.device_mesh, p.placements, src_data_rank=None)


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
            # 16 small matrices this made the optimizer step 1.7x faster. Sharded ones go one at a time:
            # a batch of them would be held whole at once (every block's, for a model sharded to fit).
            batches = {}
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
                batch = id(p) if hasattr(p, "device_mesh") else tuple(update.shape)
                batches.setdefault(batch, []).append((p, tall, update))
            for items in batches.values():
                dtype = torch.bfloat16 if items[0][0].is_cuda else torch.float32
                ortho = orthogonalize(torch.stack([whole(u) for _, _, u in items]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"], dtype)
                for (p, tall, _), update in zip(items, ortho):
                    A, B = p.shape
                    # "original" (the only one train.py uses): same update RMS for tall and square matrices
                    scale = math.sqrt(max(1, A / B)) if group["adjust_lr_fn"] in (None, "original") else 0.2 * math.sqrt(max(A, B))
                    p.mul_(1 - lr * group["weight_decay"])
                    p.add_(like(p, update.mT if tall else update), alpha=-lr * scale)


class MuonAdamW:
    """Muon and AdamW stepped as one optimizer: what train.py needs of one (param_groups for the
    lr schedule and the gradient scaler, step, zero_grad, and a state dict of plain tensors and
    numbers that torch.load(weights_only=True) reads back)."""

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self):
        return self.muon.param_groups + self.adamw.param_groups  # the same dicts: lr changes reach both

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

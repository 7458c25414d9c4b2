"""
One optimizer step and one evaluation, exactly as train.py runs them: bench.py times the same Step, so
what it measures is what trains.
"""

import math
from dataclasses import dataclass

import torch

import runtime


@dataclass
class StepResult:
    loss: float        # the mean loss over every micro-batch of the step, all processes
    grad_norm: float   # before clipping
    flags: list        # the flags passed in, summed over all processes
    finite: bool       # loss and gradient norm finite; when False the weights were not touched


class Step:
    """One optimizer step: accum_local micro-steps per process (DDP synchronises gradients only on the
    last), each next micro-batch fetched while the device works on the current one, fp16 loss scaling
    where the plan has it, gradient clipping, then a single host sync that carries the loss, the
    gradient norm and any flags every process must agree on (a stop request, a failure on rank 0).
    The update happens only when the loss and the gradient norm are finite."""

    def __init__(self, model, train_model, optimizer, batches, plan, dist, accum_local, grad_clip):
        self.train_model, self.optimizer, self.batches = train_model, optimizer, batches
        self.plan, self.dist, self.accum_local, self.grad_clip = plan, dist, accum_local, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.scaler = torch.amp.GradScaler(plan.device_type if plan.grad_scaler else "cpu", enabled=plan.grad_scaler)
        self._ahead = None  # ((iteration, micro), batch) fetched during the previous micro-step

    def _batch(self, it, micro):
        """Micro-batch `micro` of this process at iteration `it`; micro-steps are numbered across
        processes, so the data of a step does not depend on how many processes share it."""
        if self._ahead is not None and self._ahead[0] == (it, micro):
            return self._ahead[1]
        return self.batches.train_batch(it, self.dist.rank * self.accum_local + micro)

    def __call__(self, it, flags=()):
        device = self.plan.device
        loss_sum = torch.zeros((), device=device)
        for micro in range(self.accum_local):
            X, Y = self._batch(it, micro)
            if self.dist.enabled:
                self.train_model.require_backward_grad_sync = micro == self.accum_local - 1
            with self.plan.autocast_context():
                _, loss = self.train_model(X, Y)
                # DDP averages gradients over processes, so each process divides by its own micro-step
                # count: the result is the mean over every micro-batch of the step
                loss = loss / self.accum_local
            # fetch the next micro-batch while the device works (async copies on CUDA)
            nxt = (it, micro + 1) if micro + 1 < self.accum_local else (it + 1, 0)
            self._ahead = (nxt, self.batches.train_batch(nxt[0], self.dist.rank * self.accum_local + nxt[1]))
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        if self.plan.grad_scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        # the one host sync of the step
        stats = torch.stack([loss_sum, *(torch.tensor(float(f), device=device) for f in flags)])
        if self.dist.enabled:
            import torch.distributed as tdist
            tdist.all_reduce(stats)
        loss, *summed = stats.tolist()
        loss /= self.dist.world_size  # the sum of the processes' means
        grad_norm = grad_norm.item()
        # with fp16 an infinite gradient norm is the scaler's business: it skips the step and lowers the scale
        finite = math.isfinite(loss) and (math.isfinite(grad_norm) or self.plan.grad_scaler)
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, grad_norm, summed, finite)


@torch.no_grad()
def evaluate(model, batches, eval_iters, plan, dist, stop=lambda: False):
    """Mean loss on the fixed evaluation batches of each split, shared out over all processes.
    Returns None, on every process alike, as soon as stop() is true on any of them: a stop request
    need not wait for a long evaluation."""
    model.eval()
    out = {}
    try:
        for split in ("train", "val"):
            total = torch.zeros(2, device=plan.device)  # loss sum, batch count
            for k in range(dist.rank, eval_iters + (-eval_iters) % dist.world_size, dist.world_size):
                if runtime.any_process(stop(), dist, plan.device):
                    return None
                if k >= eval_iters:
                    continue  # this process has no batch left but still votes, so the others never wait
                X, Y = batches.eval_batch(split, k)
                with plan.autocast_context():
                    _, loss = model(X, Y)
                total[0] += loss.float()
                total[1] += 1
            total = runtime.all_reduce_sum(total, dist)
            out[split] = (total[0] / total[1]).item()
    finally:
        model.train()
    return out

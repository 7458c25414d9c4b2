"""
One optimizer step and one evaluation, exactly as train.py runs them (bench.py times the same Step, so
what it measures is what trains), where a run stands (Progress), and what a run will cost.
"""

import math
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gptkit import runtime


@dataclass
class Progress:
    """Where a run stands: what a checkpoint holds besides weights, optimizer and random state, so that
    a resumed run continues exactly (and its clock too: plot.py --x=time)."""
    iter_num: int = 0
    best_val_loss: float = float("inf")
    tokens_seen: int = 0
    last_eval_iter: int = -1  # the iteration of the last evaluation done (not redone on resume)
    skipped_steps: int = 0  # non-finite steps skipped so far (max_skips counts across resumes)
    elapsed_before: float = 0.0  # wall time of the run's earlier sessions
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def of_checkpoint(cls, ckpt, tokens_per_iter):
        """The counters a checkpoint holds (nanoGPT's hold only iter_num and best_val_loss)."""
        it = int(ckpt["iter_num"])
        return cls(iter_num=it, best_val_loss=float(ckpt["best_val_loss"]),  # nanoGPT stored a tensor
                   tokens_seen=int(ckpt.get("tokens_seen", it * tokens_per_iter)),
                   last_eval_iter=ckpt.get("last_eval_iter", -1), skipped_steps=int(ckpt.get("skipped_steps", 0)),
                   elapsed_before=float(ckpt.get("elapsed_s", 0.0)))

    def start_clock(self):
        self.started = time.perf_counter()

    def elapsed(self):
        """Wall time of the run so far, resumed sessions included."""
        return round(self.elapsed_before + time.perf_counter() - self.started, 3)

    def state(self):
        return dict(iter_num=self.iter_num, best_val_loss=self.best_val_loss, tokens_seen=self.tokens_seen,
                    last_eval_iter=self.last_eval_iter, skipped_steps=self.skipped_steps, elapsed_s=self.elapsed())


@dataclass
class StepResult:
    loss: float        # the mean loss over every counted target of the step, all micro-batches and processes
    grad_norm: float   # before clipping
    flags: list        # the flags passed in, summed over all processes
    finite: bool       # loss and gradient norm finite; when False the weights were not touched
    overflow: bool = False  # fp16: the loss scaler found an inf/NaN gradient, skipped the update, lowered its scale


def sharded(model):
    """Whether model (under torch.compile or not) is sharded by FSDP2 (parallel=fsdp): then each forward
    and backward pass gathers weights from every process, so all of them must run it."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule
    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


class Step:
    """One optimizer step: accum_local micro-steps per process (DDP and FSDP synchronise gradients
    only on the last), each next micro-batch fetched while the device works on the current one, fp16
    loss scaling where the plan has it, gradient clipping, then a single host sync that carries the
    loss, the gradient norm and any flags every process must agree on (a stop request, a failure on rank 0).
    The update happens only when the loss and the gradient norm are finite.

    With masked targets (-1: a prompt, a user's turn) micro-batches count different numbers of
    targets, and the step's loss is the mean over all counted targets of the step, not a mean of
    per-micro-batch means: each micro-batch weighs by its share of the step's counted targets. The
    shares need the counts of every micro-batch of every process, which each process computes itself
    (batches are a function of seed, iteration and micro-step), so they cost no communication."""

    def __init__(self, model, train_model, optimizer, batches, plan, dist, accum_local, grad_clip):
        self.model, self.train_model, self.optimizer, self.batches = model, train_model, optimizer, batches
        self.plan, self.dist, self.accum_local, self.grad_clip = plan, dist, accum_local, grad_clip
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sharded = sharded(model)
        self.scaler = torch.amp.GradScaler(plan.device_type if plan.grad_scaler else "cpu", enabled=plan.grad_scaler)
        self._ahead = None  # ((iteration, micro), batch) fetched during the previous micro-step

    def _batch(self, it, micro):
        """Micro-batch `micro` of this process at iteration `it`; micro-steps are numbered across
        processes, so the data of a step does not depend on how many processes share it."""
        if self._ahead is not None and self._ahead[0] == (it, micro):
            return self._ahead[1]
        return self.batches.train_batch(it, self.dist.rank * self.accum_local + micro)

    def _weights(self, it):
        """The weight of each of this process's micro-batches: its count of targets over the step's
        mean count per micro-batch (1.0 when all count alike); None when the data masks nothing."""
        if self.batches.counted is None:
            return None
        counts = self.batches.target_counts(it, self.accum_local * self.dist.world_size)
        mean = sum(counts) / len(counts)
        mine = counts[self.dist.rank * self.accum_local:(self.dist.rank + 1) * self.accum_local]
        # a step without a single counted target has nothing to learn: every weight is 0, the gradient too
        return [c / mean if mean > 0 else 0.0 for c in mine]

    def __call__(self, it, flags=()):
        """flags: numbers every process must agree on (a stop request), or a function returning them."""
        device = self.plan.device
        loss_sum = torch.zeros((), device=device)
        weights = self._weights(it)
        for micro in range(self.accum_local):
            X, Y = self._batch(it, micro)
            last = micro == self.accum_local - 1
            if self.sharded:
                # FSDP2: the gradients are reduce-scattered, and the gathered weights freed, only after the
                # last micro-step's backward (until then each process holds them whole: memory for traffic)
                self.model.set_requires_gradient_sync(last)
                self.model.set_reshard_after_backward(last)
            elif self.dist.enabled:
                self.train_model.require_backward_grad_sync = last
            with self.plan.autocast_context():
                _, loss = self.train_model(X, Y)
                # DDP and FSDP average gradients over processes, so each process divides by its own micro-step
                # count: the result is the mean over every micro-batch of the step
                loss = loss / self.accum_local
                if weights is not None:
                    # sum over micro-steps and processes of mean_m * count_m / total: the mean over
                    # every counted target. With none counted the model's mean is 0/0 = NaN, and its
                    # gradient 0 (no target to pull on): keep the gradient, drop the NaN.
                    loss = loss * weights[micro] if weights[micro] > 0 else loss.nan_to_num(0.0) * 0.0
            # fetch the next micro-batch while the device works (async copies on CUDA)
            nxt = (it, micro + 1) if micro + 1 < self.accum_local else (it + 1, 0)
            self._ahead = (nxt, self.batches.train_batch(nxt[0], self.dist.rank * self.accum_local + nxt[1]))
            self.scaler.scale(loss).backward()
            loss_sum += loss.detach().float()
        if self.plan.grad_scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        if self.sharded:
            grad_norm = grad_norm.full_tensor()  # the norm over every process's shards of the gradients
        # the one host sync of the step; the flags are read now, so a stop requested during the step's
        # compute stops after this step, not the next one
        flags = flags() if callable(flags) else flags
        stats = torch.stack([loss_sum, *(torch.tensor(float(f), device=device) for f in flags)])
        if self.dist.enabled:
            import torch.distributed as tdist
            tdist.all_reduce(stats)
        loss, *summed = stats.tolist()
        loss /= self.dist.world_size  # DDP averages the processes' gradients; the loss likewise
        grad_norm = grad_norm.item()
        # with fp16 an infinite gradient norm is the scaler's business: it skips the step and lowers the
        # scale (the norm is of the unscaled gradients, non-finite exactly when the scaler found an inf/NaN)
        finite = math.isfinite(loss) and (math.isfinite(grad_norm) or self.plan.grad_scaler)
        if finite:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, grad_norm, summed, finite, overflow=finite and not math.isfinite(grad_norm))


@torch.no_grad()
def evaluate(model, batches, eval_iters, plan, dist, stop=lambda: False, token_bytes=None):
    """Mean loss on the fixed evaluation batches of each split, shared out over all processes: the
    mean over every counted target (of all batches) where the data masks targets, and each of the
    source's eval_figures as '<split>_<name>' (generated problems: the share of rows exactly right, as
    '<split>_accuracy'; source.DataSource). With token_bytes (the bytes of text each token
    id stands for, a tensor on the device), also bits per byte as '<split>_bpb': the counted targets'
    summed loss in bits over the bytes they stand for, comparable across tokenizers (a target that
    stands for no text, <|endoftext|>, counts in neither). Returns None, on every process alike, as
    soon as stop() is true on any of them: a stop request need not wait for a long evaluation."""
    model.eval()
    out = {}
    shards = sharded(model)
    try:
        for split in ("train", "val"):
            # weighted loss sum, weight sum, then for bits per byte: nats, bytes; then each of the source's
            # figures: hits, trials. A batch's weight is the share of its targets that count: exactly 1.0
            # for data that masks nothing, so its mean is the plain mean of the batches' means; the
            # weights' common denominator cancels.
            figures = batches.eval_figures
            total = torch.zeros(4 + 2 * len(figures), device=plan.device)
            for k in range(dist.rank, eval_iters + (-eval_iters) % dist.world_size, dist.world_size):
                if runtime.any_process(stop(), dist, plan.device):
                    return None
                if k >= eval_iters:  # this process has no batch left but still votes, so the others never wait
                    if shards:  # and their forward passes gather weights from this one too: it runs one, unused
                        with plan.autocast_context():
                            model(*batches.eval_batch(split, 0))
                    continue
                X, Y = batches.eval_batch(split, k)
                with plan.autocast_context():
                    logits, loss = model(X, Y)
                counted = Y >= 0
                weight = counted.sum() / Y.numel()
                total[0] += torch.where(weight > 0, loss.float() * weight, 0.0)  # no target: mean 0/0
                total[1] += weight
                if token_bytes is not None:
                    nbytes = torch.where(counted, token_bytes[Y.clamp(min=0)], 0)  # (B, T)
                    total[2] += F.cross_entropy(logits.flatten(0, 1).float(), Y.masked_fill(nbytes == 0, -1).flatten(),
                                                ignore_index=-1, reduction="sum")
                    total[3] += nbytes.sum()
                total[4:] += batches.eval_counts(logits, Y).flatten()
            total = runtime.all_reduce_sum(total, dist)
            out[split] = (total[0] / total[1]).item()
            for i, name in enumerate(figures):
                out[f"{split}_{name}"] = (total[4 + 2 * i] / total[5 + 2 * i]).item()
            if token_bytes is not None:
                out[f"{split}_bpb"] = (total[2] / total[3]).item() / math.log(2)
    finally:
        model.train()
    return out


def duration(seconds):
    return (f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
            else f"{seconds / 3600:.1f} h")


def first_evaluation(model, batches, plan, eval_iters, accum_local, world_size, threads, steps, evals):
    """Before a run's first evaluation (which on a GPU-sized config and a CPU alone can take half an
    hour), the lines that say what it costs, from timed forward passes of an evaluation batch, which
    also make `threads`' first choice (a ThreadChooser). None when an evaluation is short. The run's
    own forecast comes later, from its steps (Forecast)."""
    X, Y = batches.eval_batch("val", 0)
    model.eval()
    with torch.no_grad(), plan.autocast_context():
        forward = threads.probe(lambda: _synchronized(model, X, Y, plan.device))
    model.train()
    first_eval = 2 * eval_iters * forward / world_size
    lines = []
    if first_eval > 10:
        lines.append(f"the first evaluation takes ~{duration(first_eval)} ({2 * eval_iters} forward passes of "
                     f"{forward * 1000:,.0f} ms); the run's forecast follows its first steps")
    # a step costs about three forward passes (a backward about two): only to tell hours from minutes
    if plan.device_type == "cpu" and steps * 3 * forward * accum_local + evals * first_eval > 3600:
        smaller = ("config/sft_gpt2_cpu.py fine-tunes GPT-2 on conversations with steps a CPU can take"
                   if batches.chat_template else
                   "config/train_shakespeare_char_cpu.py trains a character model in about a minute")
        lines.append(f"note: this config is sized for a GPU; on a CPU, {smaller} (or lower eval_iters, batch_size "
                     f"and the model's size)")
    return lines


def _synchronized(model, X, Y, device):
    model(X, Y)
    runtime.synchronize(device)


def evaluations_left(iter_num, max_iters, eval_interval):
    """The evaluations a run does after iteration iter_num's: every eval_interval, and at max_iters."""
    every = len(range(iter_num // eval_interval * eval_interval + eval_interval, max_iters + 1, eval_interval))
    return every + (max_iters > iter_num and max_iters % eval_interval != 0)


class Forecast:
    """What the rest of a run will take, from its own steps and evaluations as they are timed: the median
    of the last `window` steps (a step slowed by a passing hiccup moves it little; a lasting change in
    pace within window/2 steps) and the last evaluation. The first step, which allocates, is not counted."""

    def __init__(self, window=20):
        self.window, self.steps, self.eval_time, self.first = window, [], 0.0, True

    def step(self, seconds):
        if self.first:
            self.first = False
            return
        self.steps = (self.steps + [seconds])[-self.window:]

    def evaluation(self, seconds):
        self.eval_time = seconds

    def step_time(self):
        return statistics.median(self.steps) if self.steps else None

    def remaining(self, steps_left, evals_left):
        """Seconds; None before a step was timed."""
        t = self.step_time()
        return None if t is None else steps_left * t + evals_left * self.eval_time

    def line(self, elapsed, steps_left, evals_left):
        """The forecast, once enough steps were timed."""
        total = elapsed + self.remaining(steps_left, evals_left)
        evals = f", each evaluation ~{duration(self.eval_time)}" if evals_left and self.eval_time else ""
        return (f"expect (from the first {len(self.steps)} steps): each step ~{self.step_time() * 1000:,.1f} ms"
                f"{evals}, the whole run ~{duration(total)}")

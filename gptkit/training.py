"""
One optimizer step and one evaluation with the saves it calls for, exactly as train.py runs them
(bench.py times the same Step, so what it measures is what trains), and where a run stands (Progress).
"""

import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gptkit import loggers, runtime
from gptkit.errors import UserError


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
    The update happens only when the loss and the gradient norm are finite; a step where they are not is
    skipped (on_nonfinite='skip', at most max_skips over the whole run, counted in progress) or stops the
    run with a sentence that names what is left to resume (last_good(): a checkpoint's path, or None).

    With masked targets (-1: a prompt, a user's turn) micro-batches count different numbers of
    targets, and the step's loss is the mean over all counted targets of the step, not a mean of
    per-micro-batch means: each micro-batch weighs by its share of the step's counted targets. The
    shares need the counts of every micro-batch of every process, which each process computes itself
    (batches are a function of seed, iteration and micro-step), so they cost no communication."""

    def __init__(self, model, train_model, optimizer, batches, plan, dist, accum_local, grad_clip,
                 on_nonfinite="stop", max_skips=0, progress=None, last_good=lambda: None, say=None):
        self.model, self.train_model, self.optimizer, self.batches = model, train_model, optimizer, batches
        self.plan, self.dist, self.accum_local, self.grad_clip = plan, dist, accum_local, grad_clip
        self.on_nonfinite, self.max_skips, self.last_good, self.say = on_nonfinite, max_skips, last_good, say
        self.progress = progress if progress is not None else Progress()
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
        if not finite:
            self._not_finite(it, loss, grad_norm)
        return StepResult(loss, grad_norm, summed, finite, overflow=finite and not math.isfinite(grad_norm))

    def _not_finite(self, it, loss, grad_norm):
        progress = self.progress
        if self.on_nonfinite == "skip" and progress.skipped_steps < self.max_skips:
            progress.skipped_steps += 1
            if self.say:
                self.say(f"iter {it}: non-finite loss {loss} or gradient norm {grad_norm}; step skipped "
                         f"({progress.skipped_steps} of at most {self.max_skips})")
            return
        why = (f"after {progress.skipped_steps} skipped steps (max_skips={self.max_skips})"
               if self.on_nonfinite == "skip" else "(on_nonfinite=skip would skip such steps)")
        last = self.last_good()
        saved = (f"the last good checkpoint, {last}, is intact: resume it with a lower learning_rate" if last
                 else "nothing was saved yet: start again with a lower learning_rate")
        raise UserError(f"iteration {it}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite, so "
                        f"training stopped before the update {why}; {saved}")


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
        lines.append(f"the first evaluation takes ~{loggers.duration(first_eval)} ({2 * eval_iters} forward passes of "
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


class EvalAndSave:
    """train.py's evaluation (every eval_interval, and at max_iters) and the saves it calls for: the losses and
    the figures the data and eval_tasks add, their line and metrics row, then best.pt when val improved and
    ckpt.pt when it improved, with always_save_checkpoint, or at the run's end (nanoGPT's rule; both: one
    file under two names). A stop request (stop()) during the evaluation saves at once and ends the run: the
    evaluation is redone on resume. say: print on the first process, None on the others."""

    def __init__(self, cfg, model, raw_model, batches, scoring, plan, dist, saver, metrics, picture, progress,
                 stop, over, say):
        self.cfg, self.model, self.raw_model, self.batches, self.scoring = cfg, model, raw_model, batches, scoring
        self.plan, self.dist, self.saver, self.metrics, self.picture = plan, dist, saver, metrics, picture
        self.progress, self.stop, self.over, self.say = progress, stop, over, say
        self.start_iter = progress.iter_num

    def due(self, iter_num):
        cfg = self.cfg
        return cfg.eval_only or ((iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters)
                                 and iter_num != self.progress.last_eval_iter)

    def __call__(self, iter_num, lr):
        """False when the run ends here: eval_only, or a stop requested during the evaluation."""
        cfg, progress = self.cfg, self.progress
        losses = evaluate(self.model, self.batches, cfg.eval_iters, self.plan, self.dist, stop=self.stop,
                          token_bytes=self.scoring.token_bytes)
        if losses is not None and self.scoring.sets:  # the uncompiled model: each batch of choices has its shape
            scores = self.scoring.score(self.raw_model, self.plan, self.dist, cfg.batch_size * cfg.block_size,
                                        self.stop)
            losses = None if scores is None else {**losses, **scores}
        if losses is None:
            self.stopped(during_evaluation=True)
            return False
        progress.last_eval_iter = iter_num
        improved = losses["val"] < progress.best_val_loss  # False for NaN: a NaN never becomes "best"
        if improved:
            progress.best_val_loss = losses["val"]
        if self.say:
            summary = self.batches.eval_summary(losses, cfg.eval_iters * cfg.batch_size)  # exact match of problems
            self.say(loggers.eval_line(iter_num, losses, self.over, improved, summary))
            figures = {k: v for k, v in losses.items() if k not in ("train", "val")}  # bits per byte, accuracies
            self.metrics.log(dict(iter=iter_num, train_loss=losses["train"], val_loss=losses["val"], **figures,
                                  lr=lr, elapsed_s=progress.elapsed()))
            if iter_num > self.start_iter:  # the first evaluation's picture would hold no step: no drawing
                self.picture.refresh()      # competes with the first steps (on a 2-core CPU that cost seconds)
        if cfg.eval_only:
            return False
        if math.isfinite(losses["val"]):
            best = improved and iter_num > 0
            latest = (improved or cfg.always_save_checkpoint or iter_num >= cfg.max_iters) and \
                iter_num > self.start_iter
            if best or latest:
                self.saver.save(progress, latest=latest, best=best)
        return True

    def stopped(self, during_evaluation=False):
        """A stop request (Ctrl-C, SIGTERM, a reader that left): save the run as it stands and say how to go on.
        Nothing is saved before the run's first step (there is nothing new), nor by an evaluation alone."""
        it, latest = self.progress.iter_num, self.saver.latest
        if it > self.start_iter and not self.cfg.eval_only:
            self.saver.save(self.progress)
        if not self.say:
            return
        resume = f"continue with: python train.py --init_from=resume --out_dir={self.cfg.out_dir}"
        if not during_evaluation:
            self.say(f"stopped at iteration {it} and saved {latest}; {resume}")
        elif os.path.exists(latest):
            self.say(f"stopped at iteration {it} during its evaluation; {latest} holds the run up to here: {resume}")
        else:
            self.say(f"stopped at iteration {it} during its evaluation, before any step: nothing was saved")

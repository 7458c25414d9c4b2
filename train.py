"""
Train a GPT: from scratch, from a checkpoint (init_from=resume) or from GPT-2 weights.

    python train.py config/train_shakespeare_char_cpu.py
    python train.py config/train_shakespeare_char.py --device=mps
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Defaults are nanoGPT's (GPT-2 124M on OpenWebText) so its config files mean what they meant there.
The keys are declared in gptkit/keys.py; python train.py --help lists them.
"""

from gptkit import errors

# first: a mistake a user can fix ends in one sentence, on every process, and Ctrl-C while the rest
# loads in one line and status 130
errors.install()

from gptkit import configurator  # noqa: E402
from gptkit import keys, runs  # noqa: E402
from gptkit.stopping import OutputGuard  # noqa: E402

# -----------------------------------------------------------------------------
# knobs: config files and --key=value, checked before anything heavy is imported
output = OutputGuard()  # `python train.py | head`: the run stops after the step and saves, not mid-print
cfg = configurator.configure(keys.KEYS)
runs.check_out_dir(cfg.out_dir)

import importlib  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

if cfg.omp_passive:  # read once, when torch loads OpenMP: so it must be set before the import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from gptkit import (checkpoint, curves, evaluation, fileio, init_from, loggers, optim,  # noqa: E402
                    runtime, sharding)
from gptkit.batches import open_source  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402
from gptkit.stopping import CLOSED_STATUS, StopRequests  # noqa: E402
from gptkit.threads import ThreadChooser  # noqa: E402
from gptkit.training import Forecast, Step, evaluate, evaluations_left, first_evaluation  # noqa: E402

# -----------------------------------------------------------------------------
# processes, device, precision
rt = runtime.setup(cfg.device, cfg.dtype, cfg.compile, cfg.fused_adamw, cfg.backend)
dist, plan, device = rt.dist, rt.plan, rt.device
master = dist.master


def everywhere(fn):  # fn() on every process; a UserError on any one ends them all, each with its status
    return runtime.everywhere(fn, dist, device)


# -----------------------------------------------------------------------------
# the run: what it continues or starts from, and its settings
start = everywhere(lambda: init_from.locate(cfg, keys.KEYS, keys.MACHINE_KEYS))
cfg = start.cfg
keys.check(cfg, dist.world_size)
for k, module in (("wandb", "wandb"), ("tensorboard", "torch.utils.tensorboard")):
    if getattr(cfg, f"{k}_log"):  # an optional logger that cannot start must fail the run now, not later
        try:
            importlib.import_module(module)
        except ImportError:
            raise UserError(f"{k}_log=True but {k} is not installed; pip install {k}, or leave {k}_log off",
                            status=USAGE) from None
accum_local = cfg.gradient_accumulation_steps // dist.world_size  # micro-steps this process runs
if master:
    print(rt.why)
if not start.resuming and not cfg.eval_only:
    remains = everywhere(lambda: runs.refuse_to_clobber(cfg.out_dir, cfg.overwrite))
    if master and remains and not cfg.overwrite:
        print(f"note: {cfg.out_dir} holds the remains of a run that saved no checkpoint ({', '.join(remains)}); "
              f"this run replaces them")
runtime.seed_everything(cfg.seed + dist.rank)  # dropout differs per process; the data schedule does not

# -----------------------------------------------------------------------------
# data
batches = everywhere(lambda: open_source(cfg.dataset, cfg.data_dir, cfg.block_size, cfg.batch_size, cfg.seed, device,
                                         plan.pin_memory, cfg.digits, cfg.reverse, cfg.sampling, cfg.align,
                                         cfg.gradient_accumulation_steps, cfg.scratchpad))
meta, data_dir = batches.meta, batches.origin  # (origin: its folder, or the generated problems, for messages)
# rows can be shorter than block_size (a generated problem is as long as it is)
tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * batches.seq_len
# where targets are masked, every loss figure is the mean over the counted ones only
over = f" (over {batches.counted})" if batches.counted else ""
if master:
    print(f"tokens per iteration: {tokens_per_iter:,}" + (f"; the loss counts only the {batches.counted}"
                                                          if batches.counted else "")
          + (f"; {batches.schedule}" if batches.schedule else ""))

# -----------------------------------------------------------------------------
# model, optimizer
model, said = start.build_model(meta, data_dir, device, sharding.shards(cfg.parallel, cfg.fsdp_shard_size,
                                                                        dist.world_size))
if master and said:
    print(said)
# on the device whole, or sharded over the processes (parallel=fsdp)
model, said = sharding.place(model, cfg.parallel, cfg.fsdp_shard_size, cfg.activation_checkpointing, dist, plan)
if master and said:
    print(said)
progress = start.progress(tokens_per_iter)

optimizer = optim.configure_optimizers(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                       fused=plan.fused_adamw, optimizer=cfg.optimizer, muon_lr=cfg.muon_lr,
                                       muon_momentum=cfg.muon_momentum, muon_ns_steps=cfg.muon_ns_steps)
raw_model = model
if rt.compile:
    if master:
        print("compiling the model (the first step takes a while)...")
    model = torch.compile(model)
train_model = model
if dist.enabled and cfg.parallel == "ddp":
    from torch.nn.parallel import DistributedDataParallel as DDP
    train_model = DDP(model, device_ids=[dist.local_rank] if plan.device_type == "cuda" else None)
step = Step(raw_model, train_model, optimizer, batches, plan, dist, accum_local, cfg.grad_clip)
# bits per byte and the eval_tasks sets, scored at each evaluation beside the loss (every set read and checked now)
scoring = everywhere(lambda: evaluation.DuringTraining(meta, cfg.eval_tasks, cfg.eval_tasks_limit,
                                                       model.config.block_size, model.config.vocab_size, device,
                                                       warn=print if master else None, folder=data_dir))
scaler = step.scaler if plan.grad_scaler else None
# a resumed run's random state is restored just before the loop: setup below (the timing probe) draws some
resume_rng, note = start.restore(optimizer, scaler, dist, raw_model)
if master and note:
    print(note)

peak_flops, peak_source = runtime.peak_flops(device, plan.dtype, cfg.peak_flops)
flops_per_token = raw_model.flops_per_token()
if master:
    print(f"{raw_model.get_num_params() / 1e6:.2f}M parameters; MFU against {peak_source}"
          + (f" ({peak_flops / 1e12:.2f} TFLOP/s)" if peak_flops else ""))
if progress.iter_num >= cfg.max_iters and not cfg.eval_only:
    if master:
        print(f"nothing to do: the run is at iteration {progress.iter_num} and max_iters={cfg.max_iters}; give a "
              f"larger --max_iters to train on")
        fileio.remove_stale_temps(cfg.out_dir)  # a run killed after its last save left a half-drawn loss.png
    runtime.shutdown(dist)
    sys.exit(0)

# -----------------------------------------------------------------------------
# committed: from here on the run writes to out_dir. Nothing in it changed before this point, so a
# run refused or failed above left the folder as it was; an evaluation alone (eval_only) writes nothing.
writes = master and not cfg.eval_only
lock = everywhere(lambda: runs.commit(cfg.out_dir, configurator.to_dict(cfg), meta, new_run=not start.resuming,
                                      overwrite=cfg.overwrite, data_dir=data_dir) if writes else None)
wandb = dict(project=cfg.wandb_project, name=cfg.wandb_run_name, config=configurator.to_dict(cfg)) \
    if master and cfg.wandb_log else None
metrics = loggers.MetricsLog(cfg.out_dir, progress.iter_num, resumed=start.resuming,
                             last_eval_iter=progress.last_eval_iter, files=writes, tensorboard=cfg.tensorboard_log,
                             wandb=wandb)
store = checkpoint.Store(cfg.out_dir)
saver = store.saver(cfg.parallel == "fsdp", raw_model, optimizer, scaler, configurator.to_dict(cfg),
                    batches.chat_template, cfg.keep_last, dist, device)
ckpt_path = saver.latest  # ckpt.pt, or the sharded ckpt.dcp
stop = StopRequests(dist, last_save=ckpt_path, output=output)  # SIGTERM, Ctrl-C: finish the step, save, exit
bar = loggers.progress_bar(total=cfg.max_iters, initial=progress.iter_num, enabled=writes)
picture = curves.LossPicture(cfg.out_dir, enabled=writes and cfg.loss_png, warn=bar.warn)  # drawn off the loop

# CPU threads: all cores, or fewer where timing the steps says so (a machine busy with other programs)
threads = ThreadChooser(cfg.threads, device, unit="step", say=print if master else None)
if master:
    print(threads.describe())
evals = len(range(progress.iter_num, cfg.max_iters + 1, cfg.eval_interval))
# timed on every process: a sharded model's forward pass needs them all
for line in first_evaluation(model, batches, plan, cfg.eval_iters, accum_local, dist.world_size, threads,
                             cfg.max_iters - progress.iter_num, evals):
    if master:
        print(line)
forecast, forecast_said = Forecast(), False  # the run's pace, from its own steps
if resume_rng is not None:
    checkpoint.set_rng_state(resume_rng)  # the random state saved after the last step, as if never stopped

# -----------------------------------------------------------------------------
# the loop
start_iter = progress.iter_num
t_log, iters_since_log, overflows = time.perf_counter(), 0, 0
progress.start_clock()
while True:
    iter_num = progress.iter_num
    lr = optim.lr_at(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters, cfg.decay_lr)
    optim.set_lr(optimizer, lr)

    if cfg.eval_only or ((iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters)
                         and iter_num != progress.last_eval_iter):
        t_eval = time.perf_counter()
        losses = evaluate(model, batches, cfg.eval_iters, plan, dist, stop=lambda: bool(stop),
                          token_bytes=scoring.token_bytes)
        if losses is not None and scoring.sets:  # the uncompiled model: every batch of choices has its own shape
            scores = scoring.score(raw_model, plan, dist, cfg.batch_size * cfg.block_size, lambda: bool(stop))
            losses = None if scores is None else {**losses, **scores}
        if losses is None:  # stopped during the evaluation: save now (it is redone on resume), don't make them wait
            if iter_num > start_iter and not cfg.eval_only:
                saver.save(progress)
            if master and os.path.exists(ckpt_path):
                print(f"stopped at iteration {iter_num} during its evaluation; {ckpt_path} holds the run up to "
                      f"here: continue with: python train.py --init_from=resume --out_dir={cfg.out_dir}")
            elif master:
                print(f"stopped at iteration {iter_num} during its evaluation, before any step: nothing was saved")
            break
        progress.last_eval_iter = iter_num
        improved = losses["val"] < progress.best_val_loss  # False for NaN: a NaN never becomes "best"
        if improved:
            progress.best_val_loss = losses["val"]
        if master:
            print(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{over}"
                  + (" (best)" if improved else "")
                  + (f", val {losses['val_bpb']:.4f} bits/byte" if "val_bpb" in losses else "")
                  + batches.eval_summary(losses, cfg.eval_iters * cfg.batch_size)  # exact match of problems
                  + "".join(f"; {k} {v:.4f}" for k, v in losses.items() if k.endswith("_acc_norm")))
            figures = {k: v for k, v in losses.items() if k not in ("train", "val")}  # bits per byte, accuracies
            metrics.log(dict(iter=iter_num, train_loss=losses["train"], val_loss=losses["val"], **figures, lr=lr,
                             elapsed_s=progress.elapsed()))
            if iter_num > start_iter:  # the first evaluation's picture would hold no step: no drawing competes
                picture.refresh()      # with the first steps (on a 2-core CPU that cost the recipe seconds)
        if cfg.eval_only:
            break
        if math.isfinite(losses["val"]):
            best = improved and iter_num > 0
            latest = (improved or cfg.always_save_checkpoint or iter_num >= cfg.max_iters) and iter_num > start_iter
            if best or latest:  # both: one file under two names
                saver.save(progress, latest=latest, best=best)
        t_log += time.perf_counter() - t_eval  # keep evaluation and saving out of ms/iter
        forecast.evaluation(time.perf_counter() - t_eval)
    if iter_num >= cfg.max_iters:
        break

    t_step = time.perf_counter()
    with threads.timed():
        result = step(iter_num, flags=lambda: (bool(stop), metrics.failure is not None))
    forecast.step(time.perf_counter() - t_step)
    stop_votes, failures = result.flags
    if failures:
        raise metrics.failure or UserError("rank 0 could not write the metrics (its error is in its output)")
    if not result.finite:
        if cfg.on_nonfinite == "skip" and progress.skipped_steps < cfg.max_skips:
            progress.skipped_steps += 1
            if master:
                print(f"iter {iter_num}: non-finite loss {result.loss} or gradient norm {result.grad_norm}; "
                      f"step skipped ({progress.skipped_steps} of at most {cfg.max_skips})")
        else:
            why = (f"after {progress.skipped_steps} skipped steps (max_skips={cfg.max_skips})"
                   if cfg.on_nonfinite == "skip" else "(on_nonfinite=skip would skip such steps)")
            saved = (f"the last good checkpoint, {ckpt_path}, is intact: resume it with a lower learning_rate"
                     if os.path.exists(ckpt_path) else "nothing was saved yet: start again with a lower learning_rate")
            raise UserError(f"iteration {iter_num}: the loss ({result.loss}) or gradient norm ({result.grad_norm}) "
                            f"is not finite, so training stopped before the update {why}; {saved}")
    progress.iter_num += 1
    progress.tokens_seen += tokens_per_iter
    iters_since_log += 1
    overflows += result.overflow  # fp16: updates the loss scaler skipped since the last log line
    bar.update(progress.iter_num, result.loss)

    steps_left = cfg.max_iters - progress.iter_num
    evals_left = evaluations_left(iter_num, cfg.max_iters, cfg.eval_interval)
    if master and not forecast_said and len(forecast.steps) >= 10 and steps_left >= 10:
        print(forecast.line(time.perf_counter() - progress.started, steps_left, evals_left))
        forecast_said = True
    if master and iter_num % cfg.log_interval == 0:
        now = time.perf_counter()
        dt = (now - t_log) / iters_since_log
        t_log, iters_since_log = now, 0
        # per device: each process computes its share of the step against one device's peak
        mfu = runtime.mfu(flops_per_token, tokens_per_iter // dist.world_size, dt, peak_flops)
        eta = forecast.remaining(steps_left, evals_left)
        print(loggers.step_line(iter_num, result.loss, over, lr, dt, tokens_per_iter, mfu,
                                dt * steps_left if eta is None else eta, overflows, scaler))
        overflows = 0
        metrics.log(dict(iter=iter_num, loss=result.loss, lr=lr, grad_norm=result.grad_norm, ms=dt * 1000,
                         tok_s=tokens_per_iter / dt, mfu=mfu, tokens=progress.tokens_seen,
                         elapsed_s=progress.elapsed()))

    if stop_votes > 0:
        saver.save(progress)
        if master:
            print(f"stopped at iteration {progress.iter_num} and saved {ckpt_path}; continue with: python train.py "
                  f"--init_from=resume --out_dir={cfg.out_dir}")
        break

# -----------------------------------------------------------------------------
# the end
runtime.raise_everywhere(metrics.failure, dist, device)  # a last metrics line that could not be written
kept_instead = saver.consolidate()  # parallel=fsdp: ckpt.pt (and best.pt) from the sharded ones, as fsdp_consolidate says
threads.close()
picture.close()  # the final picture, drawn before the process ends
metrics.close()
bar.close()
if master and cfg.eval_only:
    print("eval_only: nothing was written")
elif master:
    out = cfg.out_dir
    for line in kept_instead:
        print(line)
    kept = store.describe() + ["loss.png (the curves)"] * os.path.exists(os.path.join(out, "loss.png"))
    print(f"done in {time.perf_counter() - progress.started:.1f} s, best val loss {progress.best_val_loss:.4f}; the "
          f"run is in {out}/: {', '.join(kept)}")
    print("next: " + "  |  ".join(runs.next_commands(out, batches.prompt_format, batches.chat_template)))
stop.close()
output.close()
if lock:
    lock.release()
runtime.shutdown(dist)
if output.closed:
    sys.exit(CLOSED_STATUS)  # saved, but the reader of the output left before the end: not a success

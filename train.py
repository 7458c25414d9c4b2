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
from gptkit.training import EvalAndSave, Step, first_evaluation  # noqa: E402

# -----------------------------------------------------------------------------
# processes, device, precision
rt = runtime.setup(cfg.device, cfg.dtype, cfg.compile, cfg.fused_adamw, cfg.backend)
dist, plan, device = rt.dist, rt.plan, rt.device
master = dist.master
say = print if master else None  # what the run says, said once: by the first process


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
store = checkpoint.Store(cfg.out_dir)  # the run's checkpoints
# a non-finite loss or gradient norm: the step is skipped or the run stops, before the update touches the weights
step = Step(raw_model, train_model, optimizer, batches, plan, dist, accum_local, cfg.grad_clip, cfg.on_nonfinite,
            cfg.max_skips, progress, last_good=store.saved, say=say)
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
run_config = dict(configurator.to_dict(cfg), hf_family=start.hf_family)  # the settings, as the run records them
lock = everywhere(lambda: runs.commit(cfg.out_dir, run_config, meta, new_run=not start.resuming,
                                      overwrite=cfg.overwrite, data_dir=data_dir) if writes else None)
wandb = dict(project=cfg.wandb_project, name=cfg.wandb_run_name, config=run_config) \
    if master and cfg.wandb_log else None
metrics = loggers.MetricsLog(cfg.out_dir, progress.iter_num, resumed=start.resuming,
                             last_eval_iter=progress.last_eval_iter, files=writes, tensorboard=cfg.tensorboard_log,
                             wandb=wandb)
saver = store.saver(cfg.parallel == "fsdp", raw_model, optimizer, scaler, run_config,
                    batches.chat_template, cfg.keep_last, dist, device)
stop = StopRequests(dist, last_save=saver.latest, output=output)  # SIGTERM, Ctrl-C: finish the step, save, exit
bar = loggers.progress_bar(total=cfg.max_iters, initial=progress.iter_num, enabled=writes)
picture = curves.LossPicture(cfg.out_dir, enabled=writes and cfg.loss_png, warn=bar.warn)  # drawn off the loop

# CPU threads: all cores, or fewer where timing the steps says so (a machine busy with other programs)
threads = ThreadChooser(cfg.threads, device, unit="step", say=say)
if master:
    print(threads.describe())
evals = len(range(progress.iter_num, cfg.max_iters + 1, cfg.eval_interval))
# timed on every process: a sharded model's forward pass needs them all
for line in first_evaluation(model, batches, plan, cfg.eval_iters, accum_local, dist.world_size, threads,
                             cfg.max_iters - progress.iter_num, evals):
    if master:
        print(line)
if resume_rng is not None:
    checkpoint.set_rng_state(resume_rng)  # the random state saved after the last step, as if never stopped

# -----------------------------------------------------------------------------
# the loop
log = loggers.StepLog(metrics, progress, cfg.max_iters, cfg.eval_interval, cfg.log_interval, tokens_per_iter,
                      flops_per_token, peak_flops, dist.world_size, over, scaler, say)
evaluate_and_save = EvalAndSave(cfg, model, raw_model, batches, scoring, plan, dist, saver, metrics, picture,
                                progress, stop=lambda: bool(stop), over=over, say=say)
progress.start_clock()
while True:
    iter_num = progress.iter_num
    lr = optim.lr_at(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters, cfg.decay_lr)
    optim.set_lr(optimizer, lr)

    if evaluate_and_save.due(iter_num):
        with log.evaluation():  # kept out of ms/iter, timed for the forecast
            if not evaluate_and_save(iter_num, lr):
                break  # eval_only, or stopped during the evaluation (and saved)
    if iter_num >= cfg.max_iters:
        break

    with threads.timed(), log.timing():
        result = step(iter_num, flags=lambda: (bool(stop), metrics.failure is not None))
    stop_votes, failures = result.flags
    if failures:
        raise metrics.failure or UserError("rank 0 could not write the metrics (its error is in its output)")
    progress.iter_num += 1
    progress.tokens_seen += tokens_per_iter
    bar.update(progress.iter_num, result.loss)
    log.step(iter_num, result, lr)

    if stop_votes > 0:
        evaluate_and_save.stopped()  # saves, and says how to continue
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

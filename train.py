"""
Train a GPT: from scratch, from a checkpoint (init_from=resume) or from GPT-2 weights.

    python train.py config/train_shakespeare_char_cpu.py
    python train.py config/train_shakespeare_char.py --device=mps
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Defaults are nanoGPT's (GPT-2 124M on OpenWebText) so its config files mean what they meant there.
python train.py --help lists every key.
"""

import configurator
import errors
from configurator import Key

errors.install()  # a mistake a user can fix ends in one sentence, on every process

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    # I/O
    Key("out_dir", "out", "folder for ckpt.pt, best.pt, metrics.jsonl and config.json"),
    Key("eval_interval", 2000, "evaluate train/val loss (and save) every this many iterations"),
    Key("log_interval", 1, "print and record a training line every this many iterations"),
    Key("eval_iters", 200, "batches per split in each evaluation (fixed batches, same every time)"),
    Key("eval_only", False, "evaluate once and exit"),
    Key("always_save_checkpoint", True, "save ckpt.pt at every evaluation, not only when val loss improves"),
    Key("keep_last", 0, "also keep this many numbered copies ckpt_<iter>.pt of earlier saves (0: none)"),
    Key("init_from", "scratch", "scratch, resume (from out_dir/ckpt.pt), a GPT-2 name (gpt2, gpt2-medium, ...) or a Hugging Face folder"),
    # logging
    Key("wandb_log", False, "log to Weights & Biases (imported only then; WANDB_MODE=offline works)"),
    Key("wandb_project", "owt", "wandb project"),
    Key("wandb_run_name", "gpt2", "wandb run name"),
    # data
    Key("dataset", "openwebtext", "folder under data/ with train.bin, val.bin (and meta.pkl), or a generated task: "
        "addition, subtraction, multiplication"),
    Key("data_dir", "", "read the dataset from this folder instead of data/<dataset>"),
    Key("digits", 3, "generated arithmetic tasks: digits of each operand"),
    Key("reverse", True, "generated arithmetic tasks: the answer's digits least significant first, as carries go"),
    Key("gradient_accumulation_steps", 5 * 8, "micro-steps per optimizer step, summed over all processes"),
    Key("batch_size", 12, "sequences per micro-step per process"),
    Key("block_size", 1024, "context length in tokens"),
    Key("seed", 1337, "seed for initialisation, dropout and the batch schedule"),
    # model
    Key("n_layer", 12, "transformer blocks"),
    Key("n_head", 12, "attention heads"),
    Key("n_embd", 768, "embedding width"),
    Key("dropout", 0.0, "dropout probability (0 for pretraining, 0.1+ for fine-tuning)"),
    Key("bias", False, "biases in Linear and LayerNorm layers (GPT-2 had them)"),
    # optimizer
    Key("learning_rate", 6e-4, "peak learning rate"),
    Key("max_iters", 600000, "total optimizer steps"),
    Key("weight_decay", 1e-1, "AdamW weight decay, applied to 2-D weights only"),
    Key("beta1", 0.9, "AdamW beta1"),
    Key("beta2", 0.95, "AdamW beta2"),
    Key("grad_clip", 1.0, "clip the gradient norm to this (0: no clipping)"),
    Key("optimizer", "adamw", "adamw, or muon: Muon for the 2-D weights in the blocks, AdamW (the keys above) for the rest",
        choices=("adamw", "muon")),
    Key("muon_lr", 0.02, "Muon's peak learning rate (the schedule scales it like learning_rate)"),
    Key("muon_momentum", 0.95, "Muon's Nesterov momentum"),
    Key("muon_ns_steps", 5, "Newton-Schulz iterations per Muon update (4 trains as well for a fifth less work)"),
    Key("fused_adamw", None, "the fused AdamW kernel (default: on for CUDA and CPU; far faster than the per-tensor loop on CPU)",
        type=bool),
    # learning rate schedule
    Key("decay_lr", True, "linear warmup then cosine decay; False keeps learning_rate constant"),
    Key("warmup_iters", 2000, "warmup steps"),
    Key("lr_decay_iters", 600000, "cosine decay ends here (usually max_iters)"),
    Key("min_lr", 6e-5, "learning rate at the end of the decay (about learning_rate / 10)"),
    # failure handling
    Key("on_nonfinite", "stop", "a NaN/inf loss or gradient norm: stop, or skip the step", choices=("stop", "skip")),
    Key("max_skips", 10, "with on_nonfinite=skip, stop after this many skipped steps"),
    # system
    Key("backend", "auto", "distributed backend: auto (nccl on cuda, gloo on cpu), nccl or gloo"),
    Key("device", "auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps"),
    Key("dtype", "auto", "auto, float32, bfloat16 or float16 (float16 uses a gradient scaler)"),
    Key("compile", None, "torch.compile the model (default: on for CUDA, off elsewhere)", type=bool),
    Key("omp_passive", False, "OpenMP threads sleep instead of spinning when idle (OMP_WAIT_POLICY=PASSIVE; "
        "unless already set): only for a CPU shared with other busy work; 2-3x slower steps on an idle one"),
    Key("peak_flops", 0.0, "device peak FLOP/s for MFU (0: from the device's datasheet or a measured matmul)"),
]
cfg = configurator.configure(KEYS)

# the heavy imports come after the knobs so that --help and config errors answer at once
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

if cfg.omp_passive:  # read once, when torch loads OpenMP: so it must be set before the import
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import checkpoint  # noqa: E402
import dataset  # noqa: E402
import fileio  # noqa: E402
import loading  # noqa: E402
import optim  # noqa: E402
import runtime  # noqa: E402
import tasks  # noqa: E402
from dataset import Batches  # noqa: E402
from errors import USAGE, UserError  # noqa: E402
from model import GPT, MODEL_ARG_KEYS  # noqa: E402
from tokenizer import GPT2_PADDED_VOCAB, vocab_mismatch  # noqa: E402
from training import Step, evaluate  # noqa: E402

# -----------------------------------------------------------------------------
# processes, device, precision
rt = runtime.setup(cfg.device, cfg.dtype, cfg.compile, cfg.fused_adamw, cfg.backend)
dist, plan, device = rt.dist, rt.plan, rt.device
master = dist.master
if cfg.gradient_accumulation_steps % dist.world_size != 0:
    raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} does not divide among "
                    f"{dist.world_size} processes; make it a multiple of {dist.world_size}", status=USAGE)
accum_local = cfg.gradient_accumulation_steps // dist.world_size  # micro-steps this process runs
if master:
    print(rt.why)
runtime.seed_everything(cfg.seed + dist.rank)  # dropout differs per process; the data schedule does not

data_dir = cfg.data_dir or os.path.join(dataset.data_root(), cfg.dataset)
if cfg.dataset in tasks.TASKS and not cfg.data_dir:  # problems generated as they are drawn (tasks.py)
    batches = tasks.Arithmetic(cfg.dataset, cfg.digits, cfg.reverse, cfg.block_size, cfg.batch_size, cfg.seed,
                               device, plan.pin_memory)
else:
    batches = Batches(data_dir, cfg.dataset, cfg.block_size, cfg.batch_size, cfg.seed, device, plan.pin_memory)
meta = batches.meta
# rows can be shorter than block_size (a generated problem is as long as it is)
tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * batches.seq_len
# where targets are masked, every loss figure is the mean over the counted ones only
over = f" (over {batches.counted})" if batches.counted else ""
if master:
    print(f"tokens per iteration: {tokens_per_iter:,}" + (f"; the loss counts only the {batches.counted}"
                                                          if batches.counted else ""))

# -----------------------------------------------------------------------------
# model
ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
# every network setting that is a key here (the rest, such as vocab_size, come from the data or weights)
model_args = {k: getattr(cfg, k) for k in MODEL_ARG_KEYS if hasattr(cfg, k)}
iter_num, best_val_loss, tokens_seen, ckpt = 0, float("inf"), 0, None
if cfg.init_from == "scratch":
    model_args["vocab_size"] = meta["vocab_size"] if meta else GPT2_PADDED_VOCAB
    if master and os.path.exists(ckpt_path):
        print(f"note: {ckpt_path} from an earlier run will be replaced at the first save "
              f"(init_from=resume continues it instead)")
    model = GPT(loading.model_config(model_args))
elif cfg.init_from == "resume":
    if not os.path.exists(ckpt_path):
        raise UserError(f"init_from=resume but there is no checkpoint at {ckpt_path}; "
                        f"train with init_from=scratch first, or set out_dir to the run's folder")
    ckpt = checkpoint.load(ckpt_path, require=("optimizer", "iter_num", "best_val_loss"))
    # the architecture comes from the checkpoint; config keys cannot change it mid-run
    for k in MODEL_ARG_KEYS:
        if k in ckpt["model_args"] and k != "dropout":
            model_args[k] = ckpt["model_args"][k]
    problem = vocab_mismatch(model_args.get("vocab_size", GPT2_PADDED_VOCAB), meta)
    if problem:
        raise UserError(f"{ckpt_path} does not fit {data_dir}: the model has {problem}; "
                        f"resume with the dataset the run was trained on")
    model = loading.build_model(ckpt, ckpt_path, dropout=cfg.dropout)
    iter_num = int(ckpt["iter_num"])
    best_val_loss = float(ckpt["best_val_loss"])  # nanoGPT stored a tensor here
    tokens_seen = int(ckpt.get("tokens_seen", iter_num * tokens_per_iter))
    if master:
        print(f"resuming from {ckpt_path} at iteration {iter_num}")
        if "rng" not in ckpt:
            print("note: this checkpoint (nanoGPT layout) has no random-number or data state; "
                  "dropout randomness starts fresh from here")
        sampler_seed = (ckpt.get("sampler") or {}).get("seed", cfg.seed)
        if sampler_seed != cfg.seed:
            print(f"note: the run drew its batches with seed={sampler_seed} and this one uses seed={cfg.seed}, "
                  f"so the data order from here differs from the original run's")
else:
    model = loading.load_pretrained(cfg.init_from, dropout=cfg.dropout)
    # the architecture is the source's; a setting that contradicts it is a mistake, not a request
    for k in ("n_layer", "n_head", "n_embd", "bias"):
        if cfg.is_set(k) and getattr(cfg, k) != getattr(model.config, k):
            raise UserError(f"{k}={getattr(cfg, k)} conflicts with {cfg.init_from}, which has "
                            f"{k}={getattr(model.config, k)}; drop the setting (only dropout and a shorter "
                            f"block_size can differ from the weights)", status=USAGE)
    problem = vocab_mismatch(model.config.vocab_size, meta)
    if problem:
        raise UserError(f"{cfg.init_from} does not fit {data_dir}: the model has {problem}; prepare the data with "
                        f"the model's tokenizer (GPT-2's: data/corpus/prepare.py --tokenizer=gpt2)", status=USAGE)
    for k in MODEL_ARG_KEYS:
        model_args[k] = getattr(model.config, k)

if cfg.block_size < model.config.block_size:
    model.crop_block_size(cfg.block_size)  # e.g. fine-tune GPT-2 (1024) with a shorter context
    model_args["block_size"] = cfg.block_size
elif cfg.block_size > model.config.block_size:
    raise UserError(f"block_size={cfg.block_size} is longer than the model's context of {model.config.block_size}; "
                    f"use block_size <= {model.config.block_size}")
model.to(device)
batches.vocab_size = model.config.vocab_size  # an id past the embedding is refused when drawn

optimizer = optim.configure_optimizers(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                       fused=plan.fused_adamw, optimizer=cfg.optimizer, muon_lr=cfg.muon_lr,
                                       muon_momentum=cfg.muon_momentum, muon_ns_steps=cfg.muon_ns_steps)
raw_model = model
if rt.compile:
    if master:
        print("compiling the model (the first step takes a while)...")
    model = torch.compile(model)
train_model = model
if dist.enabled:
    from torch.nn.parallel import DistributedDataParallel as DDP
    train_model = DDP(model, device_ids=[dist.local_rank] if plan.device_type == "cuda" else None)
step = Step(raw_model, train_model, optimizer, batches, plan, dist, accum_local, cfg.grad_clip)

resume_rng = None  # restored just before the loop: setup below (e.g. the FLOPs probe) draws random numbers
if ckpt is not None:
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        saved = (ckpt.get("config") or {}).get("optimizer", "adamw")
        if saved != cfg.optimizer:
            raise UserError(f"{ckpt_path} holds an optimizer state for optimizer={saved}, which does not fit "
                            f"optimizer={cfg.optimizer}; resume with --optimizer={saved}") from None
        raise UserError(f"{ckpt_path} has an optimizer state that does not fit this model "
                        f"({fileio.reason(e)[:150]}); it was written by a different model or optimizer setup") from None
    if ckpt.get("scaler") and plan.grad_scaler:
        step.scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt.get("rng")
    if rng is not None:
        if len(rng) == dist.world_size:
            resume_rng = rng[dist.rank]
        elif master:
            print(f"note: the checkpoint was written by {len(rng)} processes and this run has "
                  f"{dist.world_size}; dropout randomness starts fresh (the data order does not change)")
last_eval_iter = ckpt.get("last_eval_iter", -1) if ckpt is not None else -1
skipped = int(ckpt.get("skipped_steps", 0)) if ckpt is not None else 0  # max_skips counts across resumes
ckpt = None  # free the memory

peak_flops, peak_source = runtime.peak_flops(device, plan.dtype, cfg.peak_flops)
flops_per_token = raw_model.flops_per_token()
if master:
    print(f"{raw_model.get_num_params() / 1e6:.2f}M parameters; MFU against {peak_source}"
          + (f" ({peak_flops / 1e12:.2f} TFLOP/s)" if peak_flops else ""))

# -----------------------------------------------------------------------------
# logging and saving


class Metrics:
    """out_dir/metrics.jsonl (one JSON object per line) plus wandb behind the same call, rank 0 only.
    A failure to write (a full disk) is kept in `failure` and raised on every process at the next
    step's sync, so no process is left waiting for one that stopped."""

    def __init__(self, path, start_iter, resumed, last_eval_iter=-1):
        self.path, self.wandb, self.failure = path, None, None
        if not master:
            return
        kept = []
        if resumed and os.path.exists(path):
            # drop what was logged after the checkpoint: those iterations are about to be redone
            with open(path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by a crash
                    if not isinstance(row, dict) or not isinstance(row.get("iter"), int):
                        continue
                    # the evaluation at the resume point stays only if the checkpoint says it was done
                    if row["iter"] < start_iter or ("val_loss" in row and row["iter"] == start_iter == last_eval_iter):
                        kept.append(line if line.endswith("\n") else line + "\n")
        with fileio.atomic_open(path, "w") as f:
            f.writelines(kept)
        if cfg.wandb_log:
            try:
                import wandb
            except ImportError:
                raise UserError("wandb_log=True but wandb is not installed; pip install wandb, or leave wandb_log "
                                "off") from None
            self.wandb = wandb
            wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=configurator.to_dict(cfg))

    def log(self, row):
        if not master or self.failure is not None:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            self.failure = UserError(f"could not append to {self.path} ({fileio.reason(e)}); the last checkpoint in "
                                     f"{cfg.out_dir} is intact: free some disk space, then resume")
        if self.wandb is not None:
            self.wandb.log(row, step=row["iter"])


def save_checkpoint(name):
    """Write out_dir/<name> atomically from the plain (unwrapped, uncompiled) model. Every process
    contributes its random state; only the first writes, and if it cannot, every process stops
    with its sentence."""
    rng = checkpoint.rng_state()
    if dist.enabled:
        import torch.distributed as tdist
        states = [None] * dist.world_size
        tdist.all_gather_object(states, rng)
    else:
        states = [rng]
    failure = None
    if master:
        state = dict(
            model=checkpoint.model_state(raw_model),
            optimizer=optimizer.state_dict(),
            model_args=model_args,
            iter_num=iter_num,
            best_val_loss=best_val_loss,
            config=configurator.to_dict(cfg),
            chat_template=batches.chat_template,  # the format chat.py must talk in, where the data has one
            scaler=step.scaler.state_dict() if plan.grad_scaler else None,
            tokens_seen=tokens_seen,
            last_eval_iter=last_eval_iter,
            skipped_steps=skipped,
            rng=states,
            # the data schedule is a function of (seed, iteration, micro-step); nothing else to keep
            sampler=dict(kind="stateless", seed=cfg.seed),
        )
        path = os.path.join(cfg.out_dir, name)
        try:
            checkpoint.save(state, path)
            if name == "ckpt.pt" and cfg.keep_last > 0:
                checkpoint.keep_copy(path, os.path.join(cfg.out_dir, f"ckpt_{iter_num:07d}.pt"), cfg.keep_last)
        except UserError as e:
            failure = e
    runtime.raise_everywhere(failure, dist, device)


# SIGTERM (schedulers, preemption) or Ctrl-C: finish the step, save, exit. A second Ctrl-C exits at once.
stop_signal, stop_time = None, 0.0


def _on_signal(signum, frame):
    global stop_signal, stop_time
    if stop_signal is not None and signum == signal.SIGINT:
        # under torchrun one Ctrl-C arrives twice, from the terminal and moments later forwarded by
        # the launcher; only a later press means quit
        if dist.enabled and time.monotonic() - stop_time < 3.0:
            return
        # at once: no atexit hooks (wandb, process groups) that could hang; a save cut short here
        # leaves only a temporary file, removed by the next save
        if master:
            print(f"\nsecond SIGINT: quitting without saving; {ckpt_path} holds the last save", file=sys.stderr, flush=True)
            sys.stdout.flush()
        os._exit(130)
    stop_signal, stop_time = signum, time.monotonic()
    if master:
        print(f"\n{signal.Signals(signum).name} received: finishing this step and saving "
              f"(Ctrl-C again to quit without saving)", flush=True)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)

# -----------------------------------------------------------------------------
# training loop
failure = None
if master:
    try:
        os.makedirs(cfg.out_dir, exist_ok=True)
        configurator.save(cfg, os.path.join(cfg.out_dir, "config.json"))
        if meta is not None:  # the vocabulary travels with the run, for sample.py and export
            dataset.write_meta(meta, cfg.out_dir)
    except (UserError, OSError) as e:
        failure = e if isinstance(e, UserError) else UserError(f"could not create {cfg.out_dir} ({fileio.reason(e)}); "
                                                               f"set out_dir to a writable folder")
runtime.raise_everywhere(failure, dist, device)
start_iter = iter_num
metrics = Metrics(os.path.join(cfg.out_dir, "metrics.jsonl"), start_iter, resumed=cfg.init_from == "resume",
                  last_eval_iter=last_eval_iter)
if resume_rng is not None:
    checkpoint.set_rng_state(resume_rng)  # the random state saved after the last step, as if never stopped
t_log, iters_since_log = time.perf_counter(), 0
t_start = time.perf_counter()
while True:
    lr = optim.lr_at(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters, cfg.decay_lr)
    optim.set_lr(optimizer, lr)

    if cfg.eval_only or ((iter_num % cfg.eval_interval == 0 or iter_num >= cfg.max_iters) and iter_num != last_eval_iter):
        t_eval = time.perf_counter()
        losses = evaluate(model, batches, cfg.eval_iters, plan, dist)
        last_eval_iter = iter_num
        improved = losses["val"] < best_val_loss  # False for NaN: a NaN never becomes "best"
        if improved:
            best_val_loss = losses["val"]
        if master:
            accuracy = {k: v for k, v in losses.items() if k.endswith("_accuracy")}  # generated problems
            print(f"eval {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}{over}"
                  + (" (best)" if improved else "")
                  + (f"; exact match (greedy): train {accuracy['train_accuracy']:.2%}, held-out "
                     f"{accuracy['val_accuracy']:.2%} of {cfg.eval_iters * cfg.batch_size:,}" if accuracy else ""))
            metrics.log(dict(iter=iter_num, train_loss=losses["train"], val_loss=losses["val"], **accuracy, lr=lr,
                             elapsed_s=round(time.perf_counter() - t_start, 3)))
        if cfg.eval_only:
            break
        if math.isfinite(losses["val"]):
            if improved and iter_num > 0:
                save_checkpoint("best.pt")
            if (improved or cfg.always_save_checkpoint or iter_num >= cfg.max_iters) and iter_num > start_iter:
                save_checkpoint("ckpt.pt")
        t_log += time.perf_counter() - t_eval  # keep evaluation and saving out of ms/iter
    if iter_num >= cfg.max_iters:
        break

    result = step(iter_num, flags=(stop_signal is not None, metrics.failure is not None))
    stop_votes, failures = result.flags
    if failures:
        raise metrics.failure or UserError("rank 0 could not write the metrics (its error is in its output)")
    if not result.finite:
        if cfg.on_nonfinite == "skip" and skipped < cfg.max_skips:
            skipped += 1
            if master:
                print(f"iter {iter_num}: non-finite loss {result.loss} or gradient norm {result.grad_norm}; "
                      f"step skipped ({skipped} of at most {cfg.max_skips})")
        else:
            why = (f"after {skipped} skipped steps (max_skips={cfg.max_skips})" if cfg.on_nonfinite == "skip"
                   else "(on_nonfinite=skip would skip such steps)")
            raise UserError(f"iteration {iter_num}: the loss ({result.loss}) or gradient norm ({result.grad_norm}) "
                            f"is not finite, so training stopped before the update {why}; the last good checkpoint "
                            f"in {cfg.out_dir} is intact, resume it with a lower learning_rate")
    iter_num += 1
    tokens_seen += tokens_per_iter
    iters_since_log += 1

    if master and (iter_num - 1) % cfg.log_interval == 0:
        now = time.perf_counter()
        dt = (now - t_log) / iters_since_log
        t_log, iters_since_log = now, 0
        # per device: each process computes its share of the step against one device's peak
        mfu = runtime.mfu(flops_per_token, tokens_per_iter // dist.world_size, dt, peak_flops)
        eta = (cfg.max_iters - iter_num) * dt
        print(f"iter {iter_num - 1}: loss {result.loss:.4f}{over}, lr {lr:.2e}, {dt * 1000:.1f} ms, "
              f"{tokens_per_iter / dt:,.0f} tok/s, mfu {f'{mfu * 100:.1f}%' if mfu is not None else '-'}, "
              f"eta {eta / 60:.1f} min")
        metrics.log(dict(iter=iter_num - 1, loss=result.loss, lr=lr, grad_norm=result.grad_norm, ms=dt * 1000,
                         tok_s=tokens_per_iter / dt, mfu=mfu, tokens=tokens_seen))

    if stop_votes > 0:
        save_checkpoint("ckpt.pt")
        if master:
            print(f"stopped at iteration {iter_num} and saved {ckpt_path}; continue with the same command "
                  f"and --init_from=resume")
        break

runtime.raise_everywhere(metrics.failure, dist, device)  # a last metrics line that could not be written
if master:
    print(f"done in {time.perf_counter() - t_start:.1f} s, best val loss {best_val_loss:.4f}")
runtime.shutdown(dist)

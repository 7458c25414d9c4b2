"""
Reinforcement learning from rewards a program computes (GRPO-style): sample a group of completions of each
prompt, score them, and push up the tokens of those that did better than their group (docs/rl.md).

    python train.py config/train_addition.py --max_iters=60 --out_dir=out-addition   # a model right half the time
    python rl.py config/rl_addition.py                                               # ... RL makes it right
    python rl.py --init_from=out-sft --prompts=data/gsm8k/train.jsonl --val_prompts=data/gsm8k/test.jsonl
    torchrun --standalone --nproc_per_node=8 rl.py config/rl_gsm8k.py

The rewards: exact answers of the generated arithmetic problems the starting run was trained on; for a
JSONL file of {"prompt", "answer"}, exact match or the last number of the completion; or your own
`def reward(prompt, completion, answer): ...` in a config file. python rl.py --help lists the keys.
"""

from gptkit import configurator
from gptkit import errors, keys, runs
from gptkit.stopping import OutputGuard

errors.install()

# -----------------------------------------------------------------------------
# knobs: train.py's where they mean the same, then the ones of this stage (gptkit/keys.py)
KEYS, MACHINE_KEYS = keys.RL_KEYS, keys.RL_MACHINE_KEYS

output = OutputGuard()  # `python rl.py | head`: the run stops after the step and saves, not mid-print
cfg = configurator.configure(KEYS)
runs.check_out_dir(cfg.out_dir)

import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from gptkit import checkpoint, curves, grpo, init_from, loading, loggers, lora, optim, runtime  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402
from gptkit.stopping import CLOSED_STATUS, StopRequests  # noqa: E402

# -----------------------------------------------------------------------------
# processes, device, precision
rt = runtime.setup(cfg.device, cfg.dtype, compile=False, backend=cfg.backend)
dist, plan, device = rt.dist, rt.plan, rt.device
master = dist.master
if plan.grad_scaler:
    raise UserError("rl.py does not scale float16 losses; use --dtype=bfloat16 or --dtype=float32", status=USAGE)


def everywhere(fn):  # fn() on every process; a UserError on any one ends them all, each with its status
    return runtime.everywhere(fn, dist, device)


# -----------------------------------------------------------------------------
# where the run starts, and what it is rewarded for
if cfg.init_from == "scratch":
    raise UserError("init_from=scratch has nothing to reward: RL improves a model that already answers sometimes; "
                    "give a run folder, a checkpoint, a GPT-2 name or a Hugging Face folder", status=USAGE)
if cfg.parallel != "ddp":
    raise UserError("rl.py runs parallel=ddp only (each process holds the whole model)", status=USAGE)
start = everywhere(lambda: init_from.locate(cfg, KEYS, MACHINE_KEYS))
cfg = start.cfg
if cfg.lora_rank:
    lora.kinds(cfg.lora_targets)  # a misspelt layer name: one sentence now, not after loading the weights
source = start.saved or {}  # the run resumed, or the one whose weights start this run (None: GPT-2's)
saved = source.get("config") or {}
if start.resuming and isinstance(saved.get("reward"), str) and cfg.reward is None:
    raise UserError(f"the run in {cfg.out_dir} was rewarded by {saved['reward']}; resume it with that config file "
                    f"so the same reward goes on", status=USAGE)
if start.kind == "checkpoint" and not cfg.is_set("block_size"):
    cfg.block_size = checkpoint.model_args(source)["block_size"]  # the run's own context
if cfg.gradient_accumulation_steps % dist.world_size:
    raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} does not divide among "
                    f"{dist.world_size} processes; make it a multiple of {dist.world_size}", status=USAGE)
accum_local = cfg.gradient_accumulation_steps // dist.world_size
# the tokenizer, carrying the chat template a chat model is asked in, or the problems' format
if start.saved:
    vocab_dir = cfg.out_dir if start.resuming else os.path.dirname(start.source)
    meta, meta_dir = loading.find_meta(source, vocab_dir)
    tok = loading.run_tokenizer(source, start.source, meta, meta_dir)
    chat_template = source.get("chat_template")  # as the checkpoint holds it, for this run's own
else:  # a Hugging Face model: its own tokenizer, recorded in the run as a prepared dataset's is
    tok, meta, meta_dir = loading.pretrained_vocabulary(cfg.init_from)
    chat_template = {"jinja": tok.template} if tok.chat_template else None
fmt = tok.prompt_format  # the generated problems the run was trained on, if any
if cfg.prompts:
    pairs = grpo.read_prompts(cfg.prompts)
    if cfg.val_prompts:
        held = grpo.read_prompts(cfg.val_prompts)
    elif len(pairs) <= cfg.eval_prompts:
        raise UserError(f"{cfg.prompts} has {len(pairs)} prompts, and without val_prompts its last eval_prompts="
                        f"{cfg.eval_prompts} are held out, leaving none to train on; lower eval_prompts or give "
                        f"--val_prompts=FILE.jsonl", status=USAGE)
    else:
        pairs, held = pairs[:-cfg.eval_prompts], pairs[-cfg.eval_prompts:]
    task = grpo.FilePrompts(pairs, held, grpo.builtin(cfg.answer_match), cfg.seed,
                            f"the prompts of {cfg.prompts} ({len(pairs):,} to train on, {len(held):,} held out)")
    everywhere(lambda: (grpo.encode_all(tok, pairs, cfg.prompts), grpo.encode_all(tok, held, "the held-out prompts")))
elif fmt is not None:
    task = everywhere(lambda: grpo.ArithmeticPrompts(fmt, cfg.block_size, cfg.seed))
    everywhere(lambda: grpo.encode_all(tok, task.held_out(cfg.eval_prompts), "the held-out problems"))
else:
    raise UserError(f"init_from={cfg.init_from} was not trained on generated arithmetic problems, so there is no "
                    f"built-in task: give --prompts=FILE.jsonl of {{\"prompt\", \"answer\"}} lines", status=USAGE)
reward = cfg.reward or task.reward
if cfg.reward:  # a function that fails on a right answer fails before the run writes anything
    everywhere(lambda: [grpo.score(reward, p, a, a) for p, a in task.held_out(min(cfg.eval_prompts, 8))])
asking = grpo.Asking(tok, cfg.block_size, cfg.stop)  # a chat model in its template, ending at its end of turn
encode, stops = asking.encode, asking.stops
max_new = cfg.max_new_tokens or (task.longest_answer + 1 if task.longest_answer else cfg.block_size)
if master:
    print(rt.why)
if not start.resuming:
    remains = everywhere(lambda: runs.refuse_to_clobber(cfg.out_dir, cfg.overwrite))
    if master and remains and not cfg.overwrite:
        print(f"note: {cfg.out_dir} holds the remains of a run that saved no checkpoint ({', '.join(remains)}); "
              f"this run replaces them")
runtime.seed_everything(cfg.seed + dist.rank)

# -----------------------------------------------------------------------------
# the model, the reference it may be held near, the optimizer
model, said = start.build_model(meta, meta_dir, device)
if master and said:
    print(said)
longest = max(len(encode(p)) for p, _ in task.held_out(cfg.eval_prompts) + (pairs if cfg.prompts else []))
if longest >= model.config.block_size:
    raise UserError(f"a prompt takes {longest} tokens, and the model's context is {model.config.block_size}: no room "
                    f"for an answer; leave such prompts out (or use a model with a longer context)", status=USAGE)
model.to(device)
# where the weights came from: the reference of the KL term, which a resumed run loads again
cfg.reference = saved.get("reference") if start.resuming else (
    os.path.abspath(start.source) if os.path.exists(start.source) else start.source)
reference = None
if cfg.kl > 0:  # the starting model, frozen
    reference = loading.load_weights(cfg.reference, dropout=0.0)
    reference.crop_block_size(model.config.block_size)
    reference = lora.merge(reference).to(device).eval().requires_grad_(False)
optimizer = optim.configure_optimizers(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                       fused=plan.fused_adamw)
raw_model = model
train_model = model
if dist.enabled:
    from torch.nn.parallel import DistributedDataParallel as DDP
    train_model = DDP(model, device_ids=[dist.local_rank] if plan.device_type == "cuda" else None)
progress = start.progress(0)
resume_rng, note = start.restore(optimizer, None, dist, raw_model)
if master and note:
    print(note)
source = None
if progress.iter_num >= cfg.max_iters:
    if master:
        print(f"nothing to do: the run is at iteration {progress.iter_num} and max_iters={cfg.max_iters}; give a "
              f"larger --max_iters to train on")
    runtime.shutdown(dist)
    sys.exit(0)
rows = cfg.gradient_accumulation_steps * cfg.batch_prompts * cfg.group_size
if master:
    whose = f"{cfg.reward.__name__}() of the config file" if cfg.reward else "built in"
    print(f"task: {task.describe}; reward: {whose}; {cfg.gradient_accumulation_steps * cfg.batch_prompts} prompts "
          f"x {cfg.group_size} completions = {rows} rollouts per step, at most {max_new} tokens each")

# -----------------------------------------------------------------------------
# committed: from here on the run writes to out_dir
run_config = {**configurator.to_dict(cfg), **checkpoint.model_entries(raw_model.config)["model_args"],
              "hf_family": start.hf_family,  # what export.py writes the model back as
              # a function cannot be saved safely (weights_only): its name and file stand for it
              "reward": f"{cfg.reward.__name__}() of {cfg.reward.__code__.co_filename}" if cfg.reward else None,
              # the problems' format travels with the run: sample.py, chat.py and a resume read it
              **({"dataset": fmt.task, **{f.name: getattr(fmt, f.name) for f in dataclasses.fields(fmt)
                                          if f.name != "task"}} if fmt and not cfg.prompts else {})}
lock = everywhere(lambda: runs.commit(cfg.out_dir, run_config, meta, new_run=not start.resuming,
                                      overwrite=cfg.overwrite, data_dir=meta_dir) if master else None)
wandb = dict(project=cfg.wandb_project, name=cfg.wandb_run_name, config=run_config) if master and cfg.wandb_log \
    else None
metrics = loggers.MetricsLog(cfg.out_dir, progress.iter_num, resumed=start.resuming,
                             last_eval_iter=progress.last_eval_iter, files=master, tensorboard=cfg.tensorboard_log,
                             wandb=wandb)
saver = checkpoint.Store(cfg.out_dir).saver(False, raw_model, optimizer, None, run_config,
                                             chat_template, cfg.keep_last, dist, device)
ckpt_path = saver.latest
stop = StopRequests(dist, last_save=ckpt_path, output=output)  # SIGTERM, Ctrl-C: finish the step, save, exit
picture = curves.LossPicture(cfg.out_dir, enabled=master and cfg.loss_png)
if resume_rng is not None:
    checkpoint.set_rng_state(resume_rng)


def rollouts(it):
    """This process's micro-batches of step `it`, [(X, Y, A) on the device], and the sums of their rewards,
    right answers, completion tokens and completions. Micro-batch m of the step (numbered over all
    processes) samples with a generator of (seed, it, m): the same rollouts on any number of processes."""
    batches, sums = [], torch.zeros(4)
    for j in range(accum_local):
        m = dist.rank * accum_local + j
        asked = task.train(it, m, cfg.batch_prompts)
        ids = [encode(p) for p, _ in asked]
        with plan.autocast_context():
            completions = grpo.rollout(raw_model, ids, cfg.group_size, max_new, cfg.temperature, cfg.top_k or None,
                                       stops, grpo.seeded(device, cfg.seed, 0, it, m))
        r = grpo.scored(reward, tok, asked, completions, stops)
        A = grpo.group_advantages(r, cfg.normalize_advantages)
        X, Y, A = grpo.policy_batch(ids, completions, A, pad=stops[0][0])
        batches.append((X.to(device), Y.to(device), A.to(device)))
        sums += torch.tensor([r.sum(), (r >= 1).sum(), (Y >= 0).sum(), r.numel()])
    return batches, sums


# -----------------------------------------------------------------------------
# the loop
start_iter = progress.iter_num
progress.start_clock()
while True:
    it = progress.iter_num
    lr = optim.lr_at(it, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters, cfg.decay_lr)
    optim.set_lr(optimizer, lr)

    if (it % cfg.eval_interval == 0 or it >= cfg.max_iters) and it != progress.last_eval_iter:
        t_eval = time.perf_counter()
        figures = everywhere(lambda: grpo.evaluate(raw_model, task, reward, tok, encode, cfg.eval_prompts,
                                                   cfg.eval_samples, cfg.batch_prompts, max_new, cfg.temperature,
                                                   cfg.top_k or None, stops, cfg.seed, it, plan, dist))
        progress.last_eval_iter = it
        if master:
            k = cfg.eval_samples
            print(f"eval {it}: held-out pass@1 (greedy) {figures['val_pass1']:.2%}, pass@{k} "
                  f"{figures['val_pass_k']:.2%}, mean reward {figures['val_reward']:.4f}, completion "
                  f"{figures['val_length']:.1f} tokens "
                  f"({len(task.held_out(cfg.eval_prompts)):,} prompts, {time.perf_counter() - t_eval:.1f} s)")
            metrics.log(dict(iter=it, **figures, lr=lr, elapsed_s=progress.elapsed()))
            if it > start_iter:
                picture.refresh()
        if it > start_iter:
            saver.save(progress)
    if it >= cfg.max_iters:
        break

    t0 = time.perf_counter()
    batches, sums = everywhere(lambda: rollouts(it))
    sums = runtime.all_reduce_sum(sums.to(device), dist).tolist()
    t_roll = time.perf_counter() - t0
    loss, grad_norm, finite, (stop_votes,) = grpo.update(
        raw_model, train_model, optimizer, batches, plan, dist, cfg.clip, cfg.kl, reference, cfg.temperature,
        cfg.grad_clip, cfg.updates_per_rollout, flags=lambda: (bool(stop),))
    if not finite:
        saved_note = (f"the last checkpoint, {ckpt_path}, is intact: resume it with a lower learning_rate"
                      if os.path.exists(ckpt_path) else "nothing was saved yet: start again with a lower learning_rate")
        raise UserError(f"iteration {it}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite, so the "
                        f"run stopped before the update; {saved_note}")
    progress.iter_num += 1
    dt = time.perf_counter() - t0
    if master and it % cfg.log_interval == 0:
        mean_reward, right, length = sums[0] / sums[3], sums[1] / sums[3], sums[2] / sums[3]
        print(f"iter {it}: reward {mean_reward:.4f}, right {right:.2%}, completion {length:.1f} tokens, loss "
              f"{loss:.4f}, lr {lr:.2e}, {dt * 1000:.0f} ms ({t_roll / dt:.0%} sampling)")
        metrics.log(dict(iter=it, loss=loss, reward=mean_reward, right=right, length=length, lr=lr,
                         grad_norm=grad_norm, ms=dt * 1000,
                         elapsed_s=progress.elapsed()))
    if stop_votes > 0:
        saver.save(progress)
        if master:
            print(f"stopped at iteration {progress.iter_num} and saved {ckpt_path}; continue with: python rl.py "
                  f"--init_from=resume --out_dir={cfg.out_dir}")
        break

# -----------------------------------------------------------------------------
# the end
picture.close()
metrics.close()
if master:
    print(f"done in {time.perf_counter() - progress.started:.1f} s; the run is in {cfg.out_dir}/ "
          f"({os.path.basename(ckpt_path)}, metrics.jsonl, loss.png)")
    # (the last of next_commands is train.py's "more steps")
    use = runs.next_commands(cfg.out_dir, fmt if not cfg.prompts else None, tok.chat_template)[:-1]
    print("next: " + "  |  ".join(use + [f"more steps: python rl.py --init_from=resume --out_dir={cfg.out_dir} "
                                         f"--max_iters=N"]))
stop.close()
output.close()
if lock:
    lock.release()
runtime.shutdown(dist)
if output.closed:
    sys.exit(CLOSED_STATUS)

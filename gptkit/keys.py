"""
The keys of a training run, declared once with their checks: train.py takes them all, bench.py and
the ablation the ones that shape a step, rl.py those that mean the same there beside its own (RL_KEYS).

Defaults are nanoGPT's (GPT-2 124M on OpenWebText), so its config files mean what they meant there.
The network's keys are model.GPTConfig's fields, declared there alone (name, default, help, range) and
read from model.py's text; each defaults to GPTConfig's, GPT-2's network. `python train.py --help`
lists them all. Nothing here imports torch, so --help and a mistyped key answer at once.
"""

import ast
import dataclasses
import importlib.util

from gptkit.configurator import FUNCTION, Key
from gptkit.errors import USAGE, UserError


def gptconfig_keys():
    """{name: Key} of model.GPTConfig's fields, in their order, from their declarations in model.py:
    `name: type = option(default, "help", choices=..., min=...)`. The file is read, not imported: importing
    it loads torch, which takes seconds, and must wait for the settings (omp_passive acts before it loads)."""
    with open(importlib.util.find_spec("model").origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    config = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "GPTConfig")
    keys = {}
    for node in config.body:
        if isinstance(node, ast.AnnAssign):
            default, help_ = (ast.literal_eval(arg) for arg in node.value.args)
            allowed = {kw.arg: ast.literal_eval(kw.value) for kw in node.value.keywords}
            name, kind = node.target.id, {"int": int, "float": float, "bool": bool, "str": str}[node.annotation.id]
            keys[name] = Key(name, default, help_, type=kind, **allowed)
    return keys


GPTCONFIG = gptconfig_keys()
# the network's keys: every GPTConfig field but vocab_size, which the data or the weights decide
NETWORK_KEYS = tuple(name for name in GPTCONFIG if name != "vocab_size")
# the architecture options after GPT-2's (GPTConfig's fields from pos_emb on; docs/architecture.md)
OPTION_KEYS = NETWORK_KEYS[NETWORK_KEYS.index("pos_emb"):]


def _pick(by_name, names, defaults=None, notes=None):
    defaults, notes = defaults or {}, notes or {}
    return [dataclasses.replace(by_name[n], default=defaults.get(n, by_name[n].default),
                                help=by_name[n].help + notes.get(n, "")) for n in names]


# what a script that reads a run (sample, chat, eval, serve, export) reads of it, declared once for them all
CKPT_NAME = Key("ckpt_name", "", "which checkpoint of out_dir's run to read: the latest by default; best.pt (best val "
                "loss), a numbered copy, or a sharded one by its folder's name (best.dcp)")
LORA_BASE = Key("lora_base", "", "a LoRA run's base model where it is now, if it moved, was renamed or survives as a "
                "numbered copy (a checkpoint file or a Hugging Face folder): used if its weights have the checksum "
                "the run recorded")

KEYS = [
    # I/O
    Key("out_dir", "out", "the run folder: ckpt.pt, best.pt, metrics.jsonl, config.json, loss.png"),
    Key("overwrite", False, "start from scratch in an out_dir that holds a run, deleting that run (else refused)"),
    Key("eval_interval", 2000, "evaluate train/val loss (and save) every this many iterations", min=1),
    Key("log_interval", 1, "print and record a training line every this many iterations", min=1),
    Key("eval_iters", 200, "batches per split in each evaluation (fixed batches, same every time)", min=1),
    Key("eval_only", False, "evaluate once, print the losses and exit; writes nothing"),
    Key("eval_tasks", "", "multiple-choice sets also scored at each evaluation, comma-separated: hellaswag, "
        "FILE.jsonl (docs/evaluation.md)"),
    Key("eval_tasks_limit", 0, "score only the first this many examples of each eval_tasks set (0: all)", min=0),
    Key("always_save_checkpoint", True, "save ckpt.pt at every evaluation, not only when val loss improves"),
    Key("keep_last", 0, "also keep this many numbered copies ckpt_<iter>.pt of earlier saves (0: none)", min=0),
    Key("init_from", "scratch", "scratch; resume (continue out_dir's run, with its saved settings); a ckpt.pt "
        "or run folder (its weights start a new run); a GPT-2 name (gpt2 ... gpt2-xl) or Hugging Face folder"),
    # logging
    Key("wandb_log", False, "log to Weights & Biases (imported only then; WANDB_MODE=offline works)"),
    Key("loss_png", True, "keep out_dir/loss.png drawn (after each evaluation and at the end, off the step's path)"),
    Key("tensorboard_log", False, "also write the metrics to out_dir/tb for TensorBoard (imported only then)"),
    Key("wandb_project", "owt", "wandb project"),
    Key("wandb_run_name", "gpt2", "wandb run name"),
    # data
    Key("dataset", "openwebtext", "folder under data/ with train.bin, val.bin (and meta.pkl), or a generated task: "
        "addition, subtraction, multiplication"),
    Key("data_dir", "", "read the dataset from this folder instead of data/<dataset>"),
    Key("digits", 3, "generated arithmetic tasks: digits of each operand", min=1, max=9),
    Key("reverse", True, "generated arithmetic tasks: the answer's digits least significant first, as carries go"),
    Key("scratchpad", False, "generated multiplication: the partial products (the first operand times each digit of "
        "the second) written before the answer, and counted in the loss and exact match with it"),
    Key("sampling", "random", "training rows: random (nanoGPT's windows at random offsets) or epoch (every row start "
        "once per epoch, shuffled: without replacement)", choices=("random", "epoch")),
    Key("align", "none", "where training rows start: none (any token) or doc (a document's first token, after "
        "<|endoftext|>)", choices=("none", "doc")),
    Key("gradient_accumulation_steps", 5 * 8, "micro-steps per optimizer step, summed over all processes", min=1),
    Key("batch_size", 12, "sequences per micro-step per process", min=1),
    GPTCONFIG["block_size"],
    Key("seed", 1337, "seed for initialisation, dropout and the batch schedule", min=0),
    # model: GPTConfig's fields (model.py), GPT-2's network by default; bias off, as nanoGPT's train.py has it
    *_pick(GPTCONFIG, [name for name in NETWORK_KEYS if name != "block_size"], defaults=dict(bias=False)),
    # LoRA (docs/lora.md): fine-tune weights brought by init_from through small adapters, the weights frozen
    Key("lora_rank", 0, "LoRA: train a rank-r update B @ A beside each target layer and freeze every weight; the "
        "checkpoint holds the adapters alone (0: off, every weight trains; 8 is common)", min=0),
    Key("lora_alpha", 16.0, "LoRA: the update is scaled by lora_alpha / lora_rank (16, as litgpt; PEFT's "
        "default is 8)", above=0.0),
    LORA_BASE,
    Key("lora_dropout", 0.05, "LoRA: dropout on each adapter's input (0.05, as litgpt; PEFT's default is 0)",
        min=0.0, below=1.0),
    Key("lora_targets", "c_attn", "LoRA: comma-separated layers to adapt: c_attn (the attention's query/key/value, "
        "PEFT's default for GPT-2), attn.c_proj, mlp.c_fc, mlp.c_proj, c_proj (both), attn, mlp, all-linear "
        "(every block matrix), lm_head; or PEFT's names for Llama and Qwen: q_proj,k_proj,v_proj (together), o_proj, "
        "gate_proj,up_proj (together), down_proj"),
    # optimizer
    Key("learning_rate", 6e-4, "peak learning rate", above=0.0),
    Key("max_iters", 600000, "total optimizer steps", min=0),
    Key("weight_decay", 1e-1, "AdamW weight decay, applied to 2-D weights only", min=0.0),
    Key("beta1", 0.9, "AdamW beta1", min=0.0, below=1.0),
    Key("beta2", 0.95, "AdamW beta2", min=0.0, below=1.0),
    Key("grad_clip", 1.0, "clip the gradient norm to this (0: no clipping)", min=0.0),
    Key("optimizer", "adamw", "adamw, or muon: Muon for the 2-D weights in the blocks, AdamW (the keys above) for "
        "the rest", choices=("adamw", "muon")),
    Key("muon_lr", 0.02, "Muon's peak learning rate (the schedule scales it like learning_rate)", above=0.0),
    Key("muon_momentum", 0.95, "Muon's Nesterov momentum", min=0.0, below=1.0),
    Key("muon_ns_steps", 5, "Newton-Schulz iterations per Muon update (4 trains as well for a fifth less work)", min=1),
    Key("fused_adamw", None, "the fused AdamW kernel (default: on for CUDA and CPU; far faster than the per-tensor "
        "loop on CPU)", type=bool),
    # learning rate schedule
    Key("decay_lr", True, "linear warmup then cosine decay; False keeps learning_rate constant"),
    Key("warmup_iters", 2000, "warmup steps", min=0),
    Key("lr_decay_iters", 600000, "cosine decay ends here (usually max_iters)", min=0),
    Key("min_lr", 6e-5, "learning rate at the end of the decay (about learning_rate / 10)", min=0.0),
    # failure handling
    Key("on_nonfinite", "stop", "a NaN/inf loss or gradient norm: stop, or skip the step", choices=("stop", "skip")),
    Key("max_skips", 10, "with on_nonfinite=skip, stop after this many skipped steps", min=0),
    # processes: how torchrun's share the work (docs/distributed.md, docs/fsdp.md)
    Key("parallel", "ddp", "ddp: every process holds the whole model; fsdp: each holds 1/N of the weights, gradients "
        "and optimizer state (models past one GPU's memory), and saves sharded checkpoints (ckpt.dcp)",
        choices=("ddp", "fsdp")),
    Key("fsdp_shard_size", 0, "parallel=fsdp: shard over groups of this many processes (e.g. one node's GPUs) and "
        "replicate across the groups; 0: shard over all processes", min=0),
    Key("fsdp_consolidate", "end", "parallel=fsdp: when the sharded checkpoints are also written whole, as the ckpt.pt "
        "and best.pt that sample.py, chat.py and export.py read: end (when the run stops or finishes), always "
        "(at every save) or never", choices=("end", "always", "never")),
    Key("activation_checkpointing", False, "recompute each block's activations in the backward pass instead of "
        "keeping them: less memory at long context for about a third more compute"),
    # system
    Key("backend", "auto", "distributed backend: auto (nccl on cuda, gloo on cpu), nccl or gloo"),
    Key("device", "auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps"),
    Key("dtype", "auto", "auto, float32, bfloat16 or float16 (float16 uses a gradient scaler)"),
    Key("compile", None, "torch.compile the model (default: on for CUDA, off elsewhere)", type=bool),
    Key("threads", 0, "CPU threads: 0 chooses by timing the first steps at all cores and at fewer, again now and "
        "then (fewer go faster while other programs keep the cores busy); N fixes them (docs/speed.md)", min=0),
    Key("omp_passive", False, "OpenMP threads sleep instead of spinning when idle (OMP_WAIT_POLICY=PASSIVE; "
        "unless already set): only for a CPU shared with other busy work; 2-3x slower steps on an idle one"),
    Key("peak_flops", 0.0, "device peak FLOP/s for MFU (0: the GPU's datasheet, or a matmul measured here)",
        min=0.0),
]

# settings of the machine rather than of the run: a resumed run takes them from today's command line
MACHINE_KEYS = ("out_dir", "init_from", "lora_base", "overwrite", "eval_only", "device", "dtype", "compile", "backend",
                "threads", "omp_passive", "peak_flops", "fused_adamw", "fsdp_shard_size",
                "activation_checkpointing")
# the keys that shape a training step (bench.py times a step from them)
STEP_KEYS = (*NETWORK_KEYS, "dataset", "batch_size",
             "gradient_accumulation_steps", "seed", "optimizer", "learning_rate", "weight_decay", "beta1", "beta2", "grad_clip", "muon_lr", "muon_momentum",
             "muon_ns_steps", "fused_adamw", "omp_passive", "device", "dtype", "compile")


def pick(names, defaults=None, notes=None):
    """The keys called `names`, in that order, for another script: `defaults` replaces some defaults,
    `notes` adds to some keys' help what they mean there."""
    return _pick({k.name: k for k in KEYS}, names, defaults, notes)


# rl.py's keys (docs/rl.md): train.py's where they mean the same, then the ones of the RL stage
RL_KEYS = pick(
    ["out_dir", "overwrite", "init_from", "eval_interval", "log_interval", "keep_last", "loss_png", "wandb_log",
     "tensorboard_log", "wandb_project", "wandb_run_name", "seed", "block_size", "dropout",
     "lora_rank", "lora_alpha", "lora_dropout", "lora_targets", "lora_base", "gradient_accumulation_steps",
     "learning_rate", "max_iters", "weight_decay", "beta1", "beta2", "grad_clip", "decay_lr", "warmup_iters",
     "lr_decay_iters", "min_lr", "parallel", "backend", "device", "dtype"],
    defaults=dict(out_dir="out-rl", init_from="out-addition", eval_interval=20, log_interval=1, wandb_project="rl",
                  wandb_run_name="rl", gradient_accumulation_steps=1, learning_rate=1e-4, max_iters=100,
                  weight_decay=0.0, decay_lr=False, warmup_iters=0, lr_decay_iters=100, min_lr=1e-5),
    notes=dict(init_from=" (rl.py: the supervised model to improve; a run folder's ckpt.pt by default)",
               block_size=" (rl.py: at most the model's; a run's own by default)",
               gradient_accumulation_steps=" (rl.py: micro-batches of batch_prompts prompts per step)",
               parallel=" (rl.py: ddp only)"),
) + [
    Key("prompts", "", "a JSONL file of {\"prompt\", \"answer\"} lines to train on; empty: the generated arithmetic "
        "problems the starting run was trained on (their training set)"),
    Key("val_prompts", "", "a JSONL file of held-out prompts for the evaluation; empty: the generated problems' "
        "held-out set, or the last eval_prompts lines of prompts (then not trained on)"),
    Key("answer_match", "exact", "the built-in reward for a prompts file: exact (the completion is the answer) or "
        "last_number (its last number equals the answer's, as GSM8K is scored)", choices=("exact", "last_number")),
    Key("reward", None, "your own reward, defined in a config file: def reward(prompt, completion, answer) "
        "returning a number, 1.0 for a right completion (pass@k counts rewards >= 1)", type=FUNCTION),
    Key("group_size", 8, "completions sampled per prompt; each is scored against its group's mean", min=2),
    Key("batch_prompts", 16, "prompts per micro-batch per process (each brings group_size completions)", min=1),
    Key("normalize_advantages", False, "divide each advantage by its group's reward std (GRPO's paper) instead "
        "of the reward minus the mean alone (Dr. GRPO, nanochat)"),
    Key("updates_per_rollout", 1, "optimizer steps taken on each batch of rollouts; past 1, PPO's ratio clipping "
        "bounds how far the later ones move", min=1),
    Key("clip", 0.2, "PPO's clipping range: the probability ratio counts within 1 +- clip", above=0.0),
    Key("kl", 0.0, "weight of the KL divergence to the starting model in the loss (0: none, as nanochat; "
        "GRPO used 0.04)", min=0.0),
    Key("temperature", 1.0, "sampling temperature of the rollouts (and of the log-probabilities trained)",
        above=0.0),
    Key("top_k", 0, "sample the rollouts from the k most likely tokens (0: all)", min=0),
    Key("max_new_tokens", 0, "longest completion in tokens (0: the generated problems' longest answer and its "
        "end, or what the context leaves for a prompts file)", min=0),
    Key("stop", "", "the text that ends a completion (empty: a chat model's end of turn, for a Hugging Face "
        "model's template its stop tokens; else the vocabulary's end of text, or a newline where it has none)"),
    Key("eval_prompts", 256, "held-out prompts scored at each evaluation: pass@1 greedy, and eval_samples "
        "sampled completions each for the mean reward and pass@k", min=1),
    Key("eval_samples", 8, "k of pass@k: sampled completions per held-out prompt", min=1),
]
RL_MACHINE_KEYS = ("out_dir", "init_from", "lora_base", "overwrite", "device", "dtype", "backend")


def model_args(cfg):
    """The network settings a config holds (the rest, such as vocab_size, come from the data or weights)."""
    return {k: getattr(cfg, k) for k in GPTCONFIG if hasattr(cfg, k)}


def model_config(cfg, **overrides):
    """The GPTConfig of a config's model keys, or one sentence saying what makes them impossible."""
    from model import GPTConfig
    try:
        return GPTConfig(**{**model_args(cfg), **overrides})
    except ValueError as e:
        raise UserError(f"{e}", status=USAGE) from None


def check(cfg, world_size=1):
    """The checks that involve several keys (each key's own range is checked as it is parsed)."""
    model_config(cfg)  # the network's keys together (GPTConfig's checks: n_head divides n_embd, ...)
    if cfg.lora_rank:
        from gptkit import lora
        lora.kinds(cfg.lora_targets)  # a misspelt layer name: one sentence now, not after loading the weights
        if cfg.init_from == "scratch":
            raise UserError(f"lora_rank={cfg.lora_rank} trains adapters over weights that exist, and init_from=scratch "
                            f"has none to adapt; give init_from a GPT-2 name, a Hugging Face folder, a checkpoint or a "
                            f"run folder, or leave lora_rank=0 to train every weight", status=USAGE)
        if cfg.optimizer == "muon":
            raise UserError("optimizer=muon orthogonalizes the updates of whole hidden matrices, and with lora_rank "
                            "> 0 the only matrices that train are the adapters' low-rank factors, which AdamW trains; "
                            "use --optimizer=adamw", status=USAGE)
        if cfg.parallel == "fsdp":
            raise UserError("parallel=fsdp saves sharded checkpoints of every weight, and a LoRA run saves its "
                            "adapters alone, over a base it does not shard; train adapters with --parallel=ddp "
                            "(the frozen base needs no gradient or optimizer state, so it fits where its forward "
                            "pass does)", status=USAGE)
    if cfg.decay_lr and cfg.min_lr > cfg.learning_rate:
        raise UserError(f"min_lr={cfg.min_lr:g} is above learning_rate={cfg.learning_rate:g}, so the decay would raise "
                        f"the learning rate {cfg.min_lr / cfg.learning_rate:.3g}x after the warmup; set min_lr to about "
                        f"learning_rate / 10 (--min_lr={cfg.learning_rate / 10:g}), or --decay_lr=False for a constant "
                        f"rate", status=USAGE)
    if cfg.fsdp_shard_size and cfg.parallel != "fsdp":
        raise UserError(f"fsdp_shard_size={cfg.fsdp_shard_size} shapes a parallel=fsdp run, and this run is "
                        f"parallel={cfg.parallel}, which would ignore it; add --parallel=fsdp, or leave "
                        f"fsdp_shard_size out", status=USAGE)
    if cfg.gradient_accumulation_steps % world_size != 0:
        raise UserError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} does not divide among "
                        f"{world_size} processes; make it a multiple of {world_size}", status=USAGE)
    if cfg.parallel == "fsdp" and cfg.eval_tasks and world_size > 1:
        # the sets are shared out over the processes, which a sharded model's forward pass needs all of
        raise UserError(f"eval_tasks is not scored during a parallel=fsdp run; score its ckpt.pt afterwards with "
                        f"eval.py --out_dir={cfg.out_dir} --tasks={cfg.eval_tasks}", status=USAGE)
    if cfg.parallel == "fsdp" and cfg.fsdp_shard_size and world_size % cfg.fsdp_shard_size:
        raise UserError(f"fsdp_shard_size={cfg.fsdp_shard_size} does not divide the {world_size} processes into equal "
                        f"groups; make it a divisor of {world_size} (such as the number of GPUs per node), or 0 to "
                        f"shard over all processes", status=USAGE)

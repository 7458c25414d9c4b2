"""
Where a training run starts from (init_from): random weights, the run in out_dir to resume, a
checkpoint's weights (a file, a run folder, a sharded checkpoint), or pretrained weights (GPT-2, a
Hugging Face folder or hub id); the run's settings each gives, the network each builds, and what each
refuses. The settings are resolved first, from what was given and the source, before any model is built.

    start = init_from.locate(cfg, keys.KEYS, keys.MACHINE_KEYS)  # the settings; the checkpoint read, if any
    model, said = start.build_model(meta, data_dir)              # once the data's vocabulary is known
    ... the optimizer ...; resume_rng, note = start.restore(optimizer, scaler, dist, model)
"""

import os
from dataclasses import dataclass, field

from gptkit import configurator
from gptkit import checkpoint, dcp, hf_models, keys, loading, lora, runtime
from gptkit.runs import LATEST, SHARDED
from gptkit.errors import USAGE, UserError
from gptkit.tokenizer import GPT2_PADDED_VOCAB, vocab_mismatch
from gptkit.training import Progress
from model import GPT, MODEL_ARG_KEYS, gpt2_config

HEAVY = ("model", "optimizer")  # the entries of a checkpoint that the model and the optimizer take over


@dataclass
class Start:
    """Where a run starts, with its settings resolved. The checkpoint's weights and optimizer state are held
    until build_model() and restore() hand them to the model and the optimizer, and not after."""
    kind: str  # "scratch", "resume", "checkpoint" (a ckpt.pt, run folder or sharded checkpoint) or "pretrained"
    cfg: configurator.Config  # the run's settings: for resume the saved ones with what was given now on top; for
    # weights, their network's
    changed: dict = field(default_factory=dict)  # resume: {key: (saved, now)} of what was given now and differs
    saved: dict = None  # the checkpoint resumed or started from, without its weights and optimizer state
    source: str = ""  # where the weights come from: a checkpoint path, a GPT-2 name or folder
    notes: list = field(default_factory=list)  # resume: what was adjusted to what was given now, and why
    sharded: bool = False  # resuming a parallel=fsdp run: source is its sharded checkpoint (a folder)
    heavy: dict = field(default_factory=dict, repr=False)  # its weights and optimizer state, until taken
    # the Hugging Face class the weights came from ('mistral', 'llama', ...; None for scratch or an unknown one),
    # which the run records so that export.py writes that class back after resumes too
    hf_family: str = None

    @property
    def resuming(self):
        return self.kind == "resume"

    def progress(self, tokens_per_iter):
        """Where the run stands: a resumed run's counters, or a fresh start."""
        return Progress.of_checkpoint(self.saved, tokens_per_iter) if self.resuming else Progress()

    def build_model(self, meta, data_dir, device="cpu", shards=1):
        """(the GPT to train on the device's CPU side, a line saying where it came from or None). meta is
        the data's vocabulary (None for GPT-2 BPE); every way refuses a model that does not fit it. shards:
        the processes the model will be sharded over (parallel=fsdp), for what must fit on the device."""
        ckpt = {**(self.saved or {}), "model": self.heavy.pop("model", None)}  # the weights go into the model
        if self.kind == "scratch":
            model, said = from_scratch(self.cfg, meta, device, shards)
        elif self.resuming:
            model, said = from_run(self.cfg, ckpt, self.source, self.sharded, self.changed, self.notes, meta,
                                   data_dir)
        elif self.kind == "checkpoint":
            model, said = from_checkpoint(self.cfg, ckpt, self.source, meta, data_dir)
        else:
            model, said = from_pretrained(self.cfg, self.source, meta, data_dir)
        return model, said

    def restore(self, optimizer, scaler, dist, model=None):
        """Give a resumed run back its optimizer and gradient-scaler state (and, from a sharded checkpoint,
        the weights of `model`, sharded or not). Returns (this process's saved random state to restore just
        before the first step, or None; a note to print, or None)."""
        if not self.resuming:
            return None, None
        return restore(self.cfg, self.saved, self.heavy.pop("optimizer", None), self.source, self.sharded,
                       optimizer, scaler, dist, model)


# -----------------------------------------------------------------------------
# the model of each source: (model, what to say)

def from_scratch(cfg, meta, device="cpu", shards=1):
    """Random weights of the network cfg describes, over the data's vocabulary."""
    config = keys.model_config(cfg, vocab_size=meta["vocab_size"] if meta else GPT2_PADDED_VOCAB)
    runtime.check_fits(config, device, f"n_layer={cfg.n_layer}, n_head={cfg.n_head}, n_embd={cfg.n_embd}", shards)
    return fit_context(GPT(config), cfg), None


def from_run(cfg, ckpt, source, sharded, changed, notes, meta, data_dir):
    """The run being resumed: its weights (a sharded run's come in restore(), once the model is sharded)."""
    # nanoGPT's checkpoints lack the newer settings: theirs are the defaults, whatever is given now
    problem = vocab_mismatch(checkpoint.model_args(ckpt)["vocab_size"], meta)
    if problem:
        raise UserError(f"{source} does not fit {data_dir}: the model has {problem}; resume with the "
                        f"dataset the run was trained on")
    refuse_other_vocabulary(loading.find_meta(ckpt, cfg.out_dir)[0], meta, data_dir, source, resuming=True)
    if sharded:
        model = GPT(checkpoint.model_config(checkpoint.model_args(ckpt), dropout=cfg.dropout))
    else:
        model = loading.build_model(ckpt, source, dropout=cfg.dropout, lora_dropout=cfg.lora_dropout,
                                    lora_base=cfg.lora_base)
    model = fit_context(model, cfg)
    described = ", ".join(f"{k} {before!r} -> {now!r}" for k, (before, now) in changed.items())
    said = (f"resuming from {source} at iteration {int(ckpt['iter_num'])}, with the run's saved settings"
            + (f": changed {described}" if described else ""))
    if "rng" not in ckpt:
        said += ("\nnote: this checkpoint (nanoGPT layout) has no random-number or data state; dropout "
                 "randomness starts fresh from here")
    said += "".join("\n" + note for note in notes)
    if hasattr(model, "lora"):
        said += "\n" + lora.describe(model)
    return model, said


def from_checkpoint(cfg, ckpt, source, meta, data_dir):
    """A new run from a checkpoint's weights (a LoRA run's: its base with its adapters folded in); its
    optimizer, iteration and random state stay behind."""
    source_meta, where = loading.find_meta(ckpt, os.path.dirname(source))
    if where is not None:  # a character run's weights: its characters, not only their number
        refuse_other_vocabulary(source_meta, meta, data_dir, source, resuming=False)
    model = loading.build_model(ckpt, source, dropout=cfg.dropout, lora_base=cfg.lora_base)
    said = f"starting a new run from the weights of {source} (iteration {int(ckpt.get('iter_num', 0))})"
    return new_run(model, cfg, source, meta, data_dir, said)


def from_pretrained(cfg, source, meta, data_dir):
    """A new run from a Hugging Face model's weights (GPT-2, Llama, Qwen, ...)."""
    refuse_other_tokenizer(meta, data_dir, source)  # before minutes of reading weights
    model, _ = loading.load_pretrained(source, dropout=cfg.dropout)
    return new_run(model, cfg, source, meta, data_dir, f"starting a new run from the weights of {source}")


def new_run(model, cfg, source, meta, data_dir, said):
    """Weights that start a new run: their adapters folded in, checked against the data, shortened to the
    run's context, with new LoRA adapters over them if the run trains some."""
    # a LoRA run's base: where its weights come from, and a checksum of them as loaded from there
    base = lora.identify(model, os.path.abspath(source) if os.path.exists(source) else source) \
        if cfg.lora_rank else None
    model = lora.merge(model)  # weights of a LoRA run: its base with its adapters folded in
    problem = vocab_mismatch(model.config.vocab_size, meta)
    if problem:
        raise UserError(f"{source} does not fit {data_dir}: the model has {problem}; prepare the data "
                        f"with the model's vocabulary (GPT-2's: data/corpus/prepare.py --tokenizer=gpt2)",
                        status=USAGE)
    model = fit_context(model, cfg)
    if cfg.lora_rank:
        lora.check_rank(model, cfg.lora_rank, cfg.lora_targets)
        lora.apply(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, base)
        said += "\n" + lora.describe(model)
    return model, said


def fit_context(model, cfg):
    """The model with the run's context: a shorter block_size crops it (e.g. fine-tune GPT-2's 1024 with
    256); a longer one is refused."""
    if cfg.block_size < model.config.block_size:
        model.crop_block_size(cfg.block_size)
    elif cfg.block_size > model.config.block_size:
        raise UserError(f"block_size={cfg.block_size} is longer than the model's context of "
                        f"{model.config.block_size}; use block_size <= {model.config.block_size}", status=USAGE)
    return model


def restore(cfg, saved, optimizer_state, source, sharded, optimizer, scaler, dist, model=None):
    """A resumed run's optimizer and gradient-scaler state into optimizer and scaler (and, from a sharded
    checkpoint, the weights into model). Returns (this process's saved random state, or None; a note, or None)."""
    try:
        if sharded:
            dcp.load(source, model, optimizer)
        else:
            optimizer.load_state_dict(optimizer_state)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        from gptkit.fileio import reason
        was = (saved.get("config") or {}).get("optimizer", "adamw")
        if was != cfg.optimizer:
            raise UserError(f"{source} holds an optimizer state for optimizer={was}, which does not fit "
                            f"optimizer={cfg.optimizer}; resume with --optimizer={was}") from None
        raise UserError(f"{source} has an optimizer state that does not fit this model ({reason(e)[:150]}); "
                        f"it was written by a different model or optimizer setup") from None
    if saved.get("scaler") and scaler is not None:
        scaler.load_state_dict(saved["scaler"])
    rng = saved.get("rng")
    if rng is None:
        return None, None
    if len(rng) == dist.world_size:
        return rng[dist.rank], None
    return None, (f"note: the checkpoint was written by {len(rng)} processes and this run has {dist.world_size}; "
                  f"dropout randomness starts fresh (the data order does not change)")


# -----------------------------------------------------------------------------
# what each source refuses

def refuse_other_vocabulary(weights_meta, data_meta, data_dir, source, resuming):
    """The weights' token ids must mean the same text in the data: the vocabulary itself is compared,
    not its size (a corpus prepared again can number the same count of characters otherwise)."""
    from gptkit.dataset import same_vocabulary
    if weights_meta is None or same_vocabulary(weights_meta, data_meta):
        return
    same_size = data_meta is not None and data_meta["vocab_size"] == weights_meta["vocab_size"]
    trained = data_meta is not None and data_meta.get("tokenizer")
    other = ("GPT-2's BPE" if data_meta is None else
             f"{'a trained tokenizer' if trained else 'a character vocabulary'} of {data_meta['vocab_size']}"
             + (f" (the same size, other {'tokens' if trained else 'characters'})" if same_size else ""))
    fix = ("resume with the dataset the run was trained on" if resuming else
           "prepare the data with the weights' vocabulary (data/corpus/prepare.py --vocab_from=THE_RUN'S_DATASET)")
    raise UserError(f"{data_dir} has {other}, not the vocabulary {source} was trained with, so its token ids "
                    f"would mean other text; {fix}", status=USAGE)


def refuse_other_tokenizer(data_meta, data_dir, source):
    """A Hugging Face model's token ids are those of its own tokenizer: data prepared in it (the very
    tokenizer.json, by hash) fits, other data does not; GPT-2's weights fit GPT-2's BPE (vocab_mismatch)."""
    theirs = hf_models.tokenizer_sha256(source)  # None: GPT-2's BPE; "": the folder has no tokenizer.json
    in_hf = bool(data_meta and data_meta.get("hf"))
    if (theirs is None and not in_hf) or (in_hf and theirs in ("", data_meta["tokenizer_sha256"])):
        return
    other = ("another model's tokenizer" if in_hf else "GPT-2's BPE" if data_meta is None else
             "a trained tokenizer" if data_meta.get("tokenizer") else "a character vocabulary")
    fix = ("prepare it with GPT-2's (data/corpus/prepare.py --tokenizer=gpt2)" if theirs is None else
           f"prepare it in the model's: data/corpus/prepare.py --tokenizer={source} (conversations: "
           f"data/chat/prepare.py --tokenizer={source})")
    raise UserError(f"{data_dir} was prepared in {other}, not in the tokenizer of {source}, so its token ids "
                    f"would mean other text to the model; {fix}", status=USAGE)


def refuse_other_architecture(cfg, weights_args, source, resuming):
    """The architecture is the weights'; a setting given now that contradicts it is a mistake, not a
    request. A new run may shorten the context (block_size); a resumed one keeps it too."""
    for k in MODEL_ARG_KEYS:
        if k in ("dropout", "vocab_size") or (k == "block_size" and not resuming) or not cfg.is_set(k):
            continue
        if k in weights_args and getattr(cfg, k) != weights_args[k]:
            if resuming:
                raise UserError(f"{k}={getattr(cfg, k)} contradicts the run being resumed ({k}={weights_args[k]}): "
                                f"a run keeps its architecture and context; drop --{k}, or start a new run from "
                                f"these weights with --init_from={source} --out_dir=NEW_FOLDER", status=USAGE)
            raise UserError(f"{k}={getattr(cfg, k)} conflicts with {source}, which has {k}={weights_args[k]}; "
                            f"drop the setting (only dropout and a shorter block_size can differ from the weights)",
                            status=USAGE)


def refuse_other_lora(cfg, saved):
    """A resumed run keeps what it trains: every weight, or adapters of its rank, alpha and layers
    (lora_dropout may change, as dropout may)."""
    if saved is None:
        if cfg.lora_rank:
            raise UserError(f"lora_rank={cfg.lora_rank} contradicts the run being resumed, which trains every "
                            f"weight; to train adapters over its weights start a new run: "
                            f"--init_from={cfg.out_dir} --out_dir=NEW_FOLDER", status=USAGE)
        return
    now = dict(rank=cfg.lora_rank, alpha=cfg.lora_alpha,
               targets=list(lora.kinds(cfg.lora_targets)) if cfg.lora_rank else saved["targets"])
    for k, value in now.items():
        if value != saved[k]:
            given = cfg.lora_targets if k == "targets" else value
            was = ",".join(saved[k]) if k == "targets" else saved[k]
            raise UserError(f"lora_{k}={given} contradicts the run being resumed (lora_{k}={was}): a LoRA run "
                            f"keeps its adapters' shape; drop --lora_{k}, or start new adapters over these weights "
                            f"with --init_from={cfg.out_dir} --out_dir=NEW_FOLDER", status=USAGE)


# -----------------------------------------------------------------------------
# the run's settings, from what was given and the source

def locate(cfg, keys_, machine_keys):
    """The Start that cfg.init_from names, with the run's settings resolved and its checkpoint read (a
    missing or unreadable one is the problem to report, before anything about the data)."""
    if cfg.init_from == "resume":
        return locate_run(cfg, keys_, machine_keys)
    if cfg.init_from == "scratch":
        return Start("scratch", cfg)
    ckpt, path = read_weights_checkpoint(cfg.init_from)
    if ckpt is not None:
        network = vars(checkpoint.model_config(checkpoint.model_args(ckpt), dropout=cfg.dropout))
        refuse_other_architecture(cfg, checkpoint.model_args(ckpt), path, resuming=False)
        return Start("checkpoint", with_network(cfg, network), saved=light(ckpt), source=path,
                     heavy={"model": ckpt["model"]}, hf_family=hf_models.family_of_run(ckpt))
    try:
        config, family = pretrained_config(cfg.init_from, cfg.dropout)
    except UserError:
        # not reachable or not readable (offline, a mistyped path): reading the weights fails with the same
        # sentence, after the data's own refusals, and no run starts with these settings
        return Start("pretrained", cfg, source=cfg.init_from)
    network = vars(config)
    refuse_other_architecture(cfg, network, cfg.init_from, resuming=False)
    return Start("pretrained", with_network(cfg, network), source=cfg.init_from, hf_family=family)


def locate_run(cfg, keys_, machine_keys):
    """init_from=resume: the run in out_dir, its saved settings with what was given now on top."""
    store = checkpoint.Store(cfg.out_dir)
    sharded = store.sharded(LATEST)  # a parallel=fsdp run's checkpoint
    path = sharded or store.path(LATEST)
    if not os.path.exists(path):
        from gptkit import runs
        if store.names():
            raise UserError(f"init_from=resume needs {path}, but {runs.what_is_there(cfg.out_dir)}")
        if os.path.exists(os.path.join(cfg.out_dir, "config.json")):
            raise UserError(f"init_from=resume but the run in {cfg.out_dir} saved no checkpoint (it stopped before "
                            f"its first save): start it again with the same command and init_from=scratch, which "
                            f"replaces its remains")
        raise UserError(f"init_from=resume but there is no checkpoint at {path}; train with init_from=scratch "
                        f"first, or set out_dir to the run's folder")
    if sharded:
        store.check(sharded)  # a missing or cut-short shard is named now, with the checkpoints that are intact
        ckpt = store.run_state(sharded)
    else:
        ckpt = checkpoint.load(path, require=("optimizer", "iter_num", "best_val_loss"))
    # the run's own settings are the base; what was given now applies on top of them
    base, changed = configurator.rebase(cfg, keys_, ckpt.get("config") or {}, keep=machine_keys)
    if sharded and base.parallel != "fsdp":
        raise UserError(f"{cfg.out_dir} holds a sharded run (parallel=fsdp: {sharded}), which parallel=ddp cannot "
                        f"resume; resume it with --parallel=fsdp, on any number of processes, or start a new run "
                        f"from its weights with --init_from={cfg.out_dir} --out_dir=NEW_FOLDER", status=USAGE)
    if not sharded and base.parallel == "fsdp":
        raise UserError(f"{path} is a parallel=ddp run's checkpoint, one file, not the shards parallel=fsdp "
                        f"resumes from; resume it with --parallel=ddp, or start a sharded run from its weights "
                        f"with --init_from={cfg.out_dir} --parallel=fsdp --out_dir=NEW_FOLDER", status=USAGE)
    args = vars(checkpoint.model_config(checkpoint.model_args(ckpt), dropout=base.dropout))
    refuse_other_architecture(base, args, path, resuming=True)
    refuse_other_lora(base, ckpt.get("lora"))
    note = extend_schedule(base, changed, int(ckpt["iter_num"]))
    return Start("resume", base, changed, light(ckpt), path, notes=[note] if note else [], sharded=bool(sharded),
                 heavy={k: ckpt[k] for k in HEAVY if k in ckpt}, hf_family=hf_models.family_of_run(ckpt))


def read_weights_checkpoint(init_from):
    """(checkpoint, path) when init_from names one of this project's or nanoGPT's checkpoints: a file, a
    sharded checkpoint folder, or a run folder (its latest; a newer sharded one read whole); else (None, None)."""
    if os.path.isfile(init_from):
        return checkpoint.load(init_from), init_from
    folder, name = os.path.split(os.path.normpath(init_from))
    if name.endswith(SHARDED) and os.path.isdir(init_from):
        ckpt, path, _ = checkpoint.Store(folder).load(name)
        return ckpt, path
    store = checkpoint.Store(init_from)
    if os.path.isdir(init_from) and (os.path.isfile(store.path(LATEST)) or store.sharded(LATEST)):
        ckpt, path, _ = store.load(LATEST)
        return ckpt, path
    return None, None


def pretrained_config(source, dropout):
    """(the GPTConfig of a Hugging Face model, its class: 'gpt2', 'llama', ...), from its config.json alone
    (a folder or hub id)."""
    loading.check_source(source)
    c = hf_models.read_config(source)
    kind = hf_models.architecture(c, source)
    if kind != "gpt2":
        return hf_models.gpt_config(c, kind, dropout), kind
    try:
        return gpt2_config(c, dropout), kind
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{source} is not a GPT-2 this tool can load ({e}); it needs a GPT-2 config.json and "
                        f"model.safetensors or pytorch_model.bin") from None


def light(ckpt):
    """A checkpoint without its weights and optimizer state: its settings, counters and random state."""
    return {k: v for k, v in ckpt.items() if k not in HEAVY}


def with_network(cfg, network):
    """cfg with the network settings of the weights it starts from (a shorter block_size stays: the
    model is cropped to it), so that the run's saved settings describe the network it trains."""
    values = {k: network[k] for k in MODEL_ARG_KEYS if hasattr(cfg, k) and k != "block_size"}
    return configurator.Config(**{**vars(cfg), **values})


def extend_schedule(cfg, changed, iter_num):
    """A resumed run given a new max_iters: "train for longer" (or shorter), which a decay that ended at
    the old max_iters would not do (every extra step at min_lr). So lr_decay_iters follows max_iters
    when it equalled the old one and was not given now; cfg and changed are updated. Returns a note
    saying what the learning rate does at the resume point and how to keep the old decay, or one
    saying that steps past the decay run at min_lr; None when there is nothing to say."""
    if "max_iters" not in changed or not cfg.decay_lr or cfg.is_set("lr_decay_iters"):
        return None
    old, new = changed["max_iters"]
    decay = cfg.lr_decay_iters
    if decay == old and iter_num < new:
        from gptkit.optim import lr_at
        cfg.lr_decay_iters = new
        changed["lr_decay_iters"] = (old, new)
        before, after = (lr_at(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, d) for d in (old, new))
        move = "rises from {:.2e} back to {:.2e}" if after > before else "goes from {:.2e} to {:.2e}"
        return (f"note: lr_decay_iters follows max_iters ({old} -> {new}), as the decay ended at the old max_iters: "
                f"at iteration {iter_num} the learning rate {move.format(before, after)}, then decays to "
                f"min_lr={cfg.min_lr:g} at {new}; to keep the old decay instead"
                + (" (the extra steps at min_lr)" if new > old else "") + f", add --lr_decay_iters={old}")
    if decay < new and iter_num < new:
        return (f"note: the learning rate decay ends at lr_decay_iters={decay}, so iterations {max(decay, iter_num)} "
                f"to {new} run at min_lr={cfg.min_lr:g}; to decay over them instead, add --lr_decay_iters={new}")
    return None

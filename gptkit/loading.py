"""
Models built from saved weights: a run folder or checkpoint file of this project or nanoGPT, or a
Hugging Face model (GPT-2, Llama, Qwen2, Qwen3, Mistral: hf_models), with the vocabulary that goes with it; what sample.py, chat.py, export.py and
train.py's init_from use. A LoRA run's checkpoint holds adapters only: its model is its base, loaded
from where it came from and checked against its checksum, with the adapters on top.
"""

import os

import torch

from gptkit import checkpoint, hf_models, hub, lora, runs
from gptkit.errors import USAGE, UserError
from gptkit.tokenizer import GPT2_VOCAB, vocab_mismatch
from gptkit.runs import LATEST, SHARDED
from model import GPT


def build_model(ckpt, path, dropout=None, lora_dropout=None, lora_base=None):
    """A GPT with the checkpoint's architecture and weights; for a LoRA run, its base with the adapters
    on top (not merged: lora.merge folds them in). dropout, lora_dropout: None keeps the saved ones.
    lora_base: where a LoRA run's base is now, if not where the run recorded it (adapted_model)."""
    if ckpt.get("lora") is not None:
        return adapted_model(ckpt, path, dropout, lora_dropout, lora_base)
    try:
        return GPT.with_weights(checkpoint.model_config(checkpoint.model_args(ckpt), dropout),
                                checkpoint.clean_state_dict(ckpt["model"]))
    except (ValueError, TypeError) as e:
        raise UserError(f"{path} does not fit this model: {e}") from None


def load_weights(source, dropout=None):
    """The model a run's weights come from: a checkpoint file (a LoRA run's: its base and adapters) or
    a Hugging Face model (a hub id or a folder)."""
    if os.path.isfile(source):
        return build_model(checkpoint.load(source), source, dropout)
    return load_pretrained(source, dropout=0.0 if dropout is None else dropout)[0]


def adapted_model(ckpt, path, dropout=None, lora_dropout=None, lora_base=None):
    """A LoRA checkpoint's model: its base, from where the run recorded it or from lora_base (a base that
    moved, was renamed or survives as a numbered copy), used only if its weights have the recorded checksum;
    shortened to the run's context, with the adapters loaded. A saved model then names the base where it is
    now. A base that is missing or differs is refused with a sentence naming any copy that fits."""
    settings = dict(ckpt["lora"])
    recorded = settings["base"]["source"]
    source = os.path.abspath(lora_base) if lora_base and os.path.exists(lora_base) else lora_base or recorded
    if not lora_base and os.path.isabs(recorded) and not os.path.exists(recorded):
        raise UserError(f"the base model of {path}, {recorded}, is missing: the checkpoint holds only LoRA adapters, "
                        f"an update to those weights that means nothing without them; "
                        f"{name_the_base(settings['base'])}")
    args = checkpoint.model_args(ckpt)
    try:
        model = load_weights(source, args.get("dropout", 0.0) if dropout is None else dropout)
    except UserError as e:
        given = " (lora_base)" if lora_base else ""
        raise UserError(f"the base model of {path}, {source}{given}, cannot be loaded: {e}") from None
    check_base(model, settings["base"], path, given=lora_base)
    settings["base"] = dict(settings["base"], source=source)  # where it is now: what a save of this run records
    model = lora.merge(model)  # a base that is itself a LoRA run: its own adapters folded in
    if args.get("block_size", model.config.block_size) < model.config.block_size:
        model.crop_block_size(args["block_size"])
    dropout = settings["dropout"] if lora_dropout is None else lora_dropout
    lora.apply(model, settings["rank"], settings["alpha"], dropout, ",".join(settings["targets"]), settings["base"])
    lora.load_adapters(model, checkpoint.clean_state_dict(ckpt["model"]), path)
    return model


def check_base(model, base, path, given=None):
    """Refuse a base that is not the one the adapters in `path` were trained on. given: the lora_base the
    user named, if any (else the model was loaded from where the run recorded its base)."""
    now = lora.fingerprint(model)
    if now == base["sha256"]:
        return
    if given:
        raise UserError(f"lora_base={given} is not the base the LoRA adapters of {path} were trained on: its "
                        f"weights' sha256 is {now[:12]}..., not {base['sha256'][:12]}...; name the file or folder "
                        f"that holds those weights")
    raise UserError(f"the base model of {path}, {base['source']}, has changed since its LoRA adapters were trained "
                    f"(its weights' sha256 is {now[:12]}..., not {base['sha256'][:12]}...), and the adapters fit only "
                    f"the weights they were trained on; {name_the_base(base)}, or train new adapters on this one")


def name_the_base(base):
    """What to do about a base that is missing or changed: the copies beside where it was (keep_last's
    numbered ones) whose weights have its checksum, or how to name one."""
    folder = os.path.dirname(base["source"]) if os.path.isabs(base["source"]) else None
    copies = [name for name in runs.checkpoints(folder) if runs.NUMBERED.match(name)] if folder else []
    for name in sorted(copies, reverse=True)[:8]:  # the newest first; each is loaded whole to be checked
        path = os.path.join(folder, name)
        try:
            if os.path.isfile(path) and lora.fingerprint(load_weights(path, dropout=0.0)) == base["sha256"]:
                return f"{path} holds those weights: add --lora_base={path}"
        except UserError:
            continue
    return ("if the base is elsewhere now (moved, renamed, or kept as a numbered copy), name it with "
            "--lora_base=PATH: it is used if its weights have the checksum the run recorded")


def load_pretrained(name_or_path, dropout=0.0, dtype=torch.float32):
    """(model, description) of a Hugging Face model, a local folder or a hub id, its floating-point weights
    in dtype; a sentence on failure."""
    check_source(name_or_path)
    return hf_models.load(name_or_path, dropout=dropout, dtype=dtype)


def check_source(name_or_path):
    """Refuse, with a sentence, what can be neither a Hugging Face folder nor a hub id."""
    if not os.path.isdir(name_or_path):
        if os.sep in name_or_path and (os.path.isabs(name_or_path) or name_or_path.startswith(".")
                                       or os.path.exists(os.path.dirname(name_or_path))):
            raise UserError(f"init_from={name_or_path}: no such folder; give a Hugging Face model folder "
                            f"(config.json and model.safetensors) or a hub id (gpt2, Qwen/Qwen2.5-0.5B, ...)")
        if "/" not in name_or_path and name_or_path not in hub.GPT2_NAMES:
            raise UserError(f"init_from={name_or_path} is not a folder, a checkpoint file or a GPT-2 name; use "
                            f"scratch, resume, a path to a ckpt.pt, a Hugging Face folder, one of "
                            f"{', '.join(hub.GPT2_NAMES)}, or a hub repository id such as openai-community/gpt2 or "
                            f"HuggingFaceTB/SmolLM2-135M")


def find_meta(ckpt, out_dir):
    """(meta, folder) for a run's vocabulary: the meta.pkl train.py copies beside the checkpoint,
    else the one of the dataset named in its config (how nanoGPT's sample.py finds it); (None,
    None) for GPT-2 BPE runs, which have none. A trained tokenizer's tokenizer.json lies in folder."""
    from gptkit.dataset import data_root, read_meta
    meta = read_meta(out_dir)
    if meta is not None:
        return meta, out_dir
    dataset = (ckpt.get("config") or {}).get("dataset")
    if dataset:
        folder = os.path.join(data_root(), dataset)
        meta = read_meta(folder)
        if meta is not None:
            return meta, folder
    return None, None


def run_dataset(out_dir, ckpt_name=None):
    """The prepared dataset folder a run trained on (its data_dir, else data/<dataset>): from the run's
    config.json, else from its checkpoint's config (nanoGPT's runs have no config.json); None if neither
    names one."""
    import json

    from gptkit.dataset import data_root
    try:
        with open(os.path.join(out_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        store = checkpoint.Store(out_dir)
        path, sharded, _ = store.find(ckpt_name)
        config = (store.run_state(path) if sharded else checkpoint.load(path)).get("config") or {}
    if config.get("data_dir"):
        return config["data_dir"]
    return os.path.join(data_root(), config["dataset"]) if config.get("dataset") else None


def check_vocab(model, meta, path, folder_hint):
    """Refuse a model whose vocabulary does not fit the meta.pkl found for it."""
    vocab_size = model.config.vocab_size
    if meta is None and vocab_size < GPT2_VOCAB:
        raise UserError(f"{path} has a vocabulary of {vocab_size} tokens but no meta.pkl was found in "
                        f"{folder_hint}; copy the dataset's meta.pkl next to the checkpoint")
    problem = vocab_mismatch(vocab_size, meta)
    if problem:
        raise UserError(f"{path} does not fit the meta.pkl found for it: the model has {problem}; "
                        f"put the meta.pkl of the dataset it was trained on next to the checkpoint")


def refuse_a_run_as_weights(init_from):
    """The scripts that read a model read a run through out_dir (init_from=resume, with its vocabulary and
    settings): a run folder or a run's checkpoint file given as init_from is answered with that command."""
    path = os.path.abspath(init_from)
    if (os.path.isfile(path) and path.endswith(".pt")) or (os.path.isdir(path) and path.endswith(SHARDED)):
        folder, name = os.path.split(path)
        named = "" if name == LATEST else f" --ckpt_name={name}"
        raise UserError(f"init_from={init_from} is a run's checkpoint, which these scripts read through the run "
                        f"folder: use --out_dir={folder}{named} (and no init_from)", status=USAGE)
    if os.path.isdir(path) and runs.checkpoints(path):
        raise UserError(f"init_from={init_from} is a run folder, which these scripts read with --out_dir: use "
                        f"--out_dir={init_from} (and no init_from)", status=USAGE)


def run_tokenizer(ckpt, path, meta, folder):
    """The tokenizer of the run whose checkpoint is ckpt (read from path), from its meta.pkl found in folder,
    carrying the chat template the run was fine-tuned in as tok.chat_template (a Hugging Face tokenizer brings
    its own Jinja one; None for runs on data without one) and, for a run trained on generated problems, the
    format they are written in as tok.prompt_format (else None)."""
    from gptkit.arithmetic import ProblemFormat
    from gptkit.tokenizer import load_tokenizer
    tok = load_tokenizer(meta, folder)
    template = ckpt.get("chat_template")
    if template is not None and "jinja" not in template:
        from gptkit.conversation import Transcript
        tok.chat_template = Transcript.from_dict(template, path)
    tok.prompt_format = ProblemFormat.of_run(ckpt.get("config") or {})
    return tok


def pretrained_tokenizer(init_from):
    """The tokenizer of a Hugging Face model (a hub id or a local folder): its own, with its special tokens,
    stop tokens and Jinja chat template; GPT-2's through tiktoken."""
    if hf_models.architecture(hf_models.read_config(init_from), init_from) != "gpt2":
        from gptkit import hf_tokenizer
        return hf_tokenizer.load(init_from)
    from gptkit.tokenizer import BPETokenizer
    return BPETokenizer()


def pretrained_vocabulary(init_from):
    """(tokenizer, meta, folder) of a Hugging Face model that a run starts from: its tokenizer
    (pretrained_tokenizer) and, for one other than GPT-2's, the meta.pkl entries and the folder of its
    tokenizer.json, which the run records as it records a dataset's prepared in that tokenizer."""
    tok = pretrained_tokenizer(init_from)
    if tok.name != "hf":
        return tok, None, None
    return tok, tok.meta(), os.path.dirname(hub.local_or_hub(init_from, "tokenizer.json"))


def load_for_inference(init_from, out_dir, ckpt_name=None, device="cpu", dtype=torch.float32, lora_base=None):
    """(model in eval mode on device, tokenizer, description) from a run folder (init_from=resume; the
    tokenizer of run_tokenizer) or from a Hugging Face model (a hub id or a local folder; its weights
    stored in dtype, the tokenizer of pretrained_tokenizer)."""
    if init_from == "resume":
        ckpt, path, note = checkpoint.Store(out_dir).load(ckpt_name)  # the newest form of it: a file or sharded
        model = build_model(ckpt, path, dropout=0.0, lora_base=lora_base)
        meta, folder = find_meta(ckpt, out_dir)
        dataset = (ckpt.get("config") or {}).get("dataset")
        check_vocab(model, meta, path, f"{out_dir} or data/{dataset}")
        desc = f"{path} (iteration {int(ckpt.get('iter_num', 0))}" + (
            f"; LoRA adapters over {ckpt['lora']['base']['source']}, merged)" if ckpt.get("lora") else ")") + (
            f" [{note}]" if note else "")
        model = lora.merge(model)  # one matrix per layer again: generation costs what the base's does
        tok = run_tokenizer(ckpt, path, meta, folder)
    else:
        refuse_a_run_as_weights(init_from)
        check_source(init_from)
        tok = pretrained_tokenizer(init_from)  # before the weights: a folder without one is told at once
        model, desc = load_pretrained(init_from, dropout=0.0, dtype=dtype)
    if tok.vocab_size < model.config.vocab_size:
        model.crop_vocab(tok.vocab_size)  # a BPE run's padded rows: never sample an undecodable id
    model.eval().to(device)
    return model, tok, desc

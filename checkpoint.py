"""
Checkpoint I/O: atomic writes, safe (weights_only) reads with one-sentence errors, nanoGPT's layout.

A checkpoint is a dict with at least nanoGPT's six keys: model, optimizer, model_args, iter_num,
best_val_loss, config. Ours add the state needed to continue a run exactly (see train.py).
Everything in it is tensors and plain Python values, so torch.load(weights_only=True) reads it.
"""

import os
import pickle
import random
import shutil
import warnings
import zipfile

import numpy as np
import torch

from model import GPT, GPTConfig
from runtime import fail

MODEL_ARG_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout", "gelu_approximate")


def save(obj, path):
    """Write to a temporary file in the same folder, flush it to disk, then rename it into place:
    a crash at any moment leaves either the old or the new file, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk, a read-only or vanished folder
        _remove(tmp)
        fail(f"could not write {path} ({_reason(e)}); the previous checkpoint there is intact: "
             f"free some disk space or set out_dir to a writable folder, then resume")
    except BaseException:  # Ctrl-C, SystemExit: never leave a half-written temporary behind
        _remove(tmp)
        raise
    # make the rename itself durable
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # some filesystems do not support fsync on a directory
    remove_stale_temps(path)


def remove_stale_temps(path):
    """Delete checkpoint temporaries (<name>.pt.tmp<pid>) beside `path` left by processes that died
    mid-save (SIGKILL, power loss): they are never read, but each wastes a checkpoint's worth of disk."""
    folder = os.path.dirname(os.path.abspath(path))
    for entry in os.listdir(folder):
        base, _, pid = entry.rpartition(".tmp")
        if base.endswith(".pt") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(os.path.join(folder, entry))


def keep_copy(path, numbered, keep_last):
    """Keep `path` also as `numbered` (a hard link where the filesystem has them, else a copy)
    and delete all but the newest `keep_last` numbered copies beside it. Numbered names sort by
    iteration (zero-padded)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{numbered}.tmp{os.getpid()}"
    _remove(tmp)
    try:
        os.link(path, tmp)  # ckpt.pt is later replaced by a rename, so the link keeps this version
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, numbered)
    stem, ext = os.path.splitext(os.path.basename(numbered))
    prefix = stem.rstrip("0123456789")
    copies = sorted(f for f in os.listdir(folder)
                    if f.startswith(prefix) and f.endswith(ext) and f[len(prefix):-len(ext)].isdigit())
    for old in copies[:-keep_last]:
        _remove(os.path.join(folder, old))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _reason(e):
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load(path, map_location="cpu", require=()):
    """Read a checkpoint safely; any problem is one sentence naming the file. `require` lists
    entries beyond 'model' and 'model_args' the caller needs (e.g. 'optimizer' to resume)."""
    if not os.path.exists(path):
        fail(f"no checkpoint at {path}; train one first (python train.py ...) or point out_dir at the run folder")
    if os.path.isdir(path):
        fail(f"{path} is a folder, not a checkpoint file; point out_dir at the folder that holds ckpt.pt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warning would bury the sentence
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # random bytes, a plain pickle, or a pickle of arbitrary Python objects: weights_only refuses
        # them all, and we never fall back to the unsafe loader
        fail(f"{path} is not a checkpoint that can be read safely: it is corrupt, or it is not a torch "
             f"checkpoint of tensors and plain values (torch.load(weights_only=True) refused it)")
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as e:
        fail(f"{path} is truncated or corrupt (a copy cut short, or a disk error?) and cannot be read: {_reason(e)}")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("model_args"), dict):
        fail(f"{path} is not a training checkpoint: it lacks the 'model' and 'model_args' entries")
    missing = [k for k in require if k not in ckpt]
    if missing:
        fail(f"{path} cannot be resumed: it lacks the {', '.join(repr(k) for k in missing)} "
             f"entr{'ies' if len(missing) > 1 else 'y'} (it holds weights only?)")
    return ckpt


def clean_state_dict(state_dict):
    """Strip the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add, and drop causal-mask
    buffers that old nanoGPT versions stored as 'attn.bias'."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        if k.endswith(".attn.bias") and v.dim() == 4:
            continue
        out[k] = v
    return out


def model_state(model):
    """The state dict of the plain model under any DDP / compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model.state_dict()


def build_model(ckpt, path, dropout=None):
    """A GPT with the checkpoint's architecture and weights."""
    args = {k: ckpt["model_args"][k] for k in MODEL_ARG_KEYS if k in ckpt["model_args"]}
    if dropout is not None:
        args["dropout"] = dropout
    model = GPT(GPTConfig(**args))
    load_weights(model, ckpt["model"], path)
    return model


def load_weights(model, state_dict, path):
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        fail(f"{path} is not a training checkpoint: its 'model' entry holds values other than tensors")
    state_dict = clean_state_dict(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        fail(f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for k, v in state_dict.items():
        if v.shape != own[k].shape:
            fail(f"{path} does not fit this model: {k} has shape {tuple(v.shape)} in the checkpoint "
                 f"but {tuple(own[k].shape)} here (a different vocabulary or size?)")
    model.load_state_dict(state_dict)


def vocab_mismatch(vocab_size, meta):
    """Why a model with `vocab_size` output tokens cannot be used with a dataset's meta.pkl (None
    for GPT-2 BPE), or None when it can: a character model needs exactly its vocabulary, and BPE
    ids go up to 50256."""
    if meta is not None and "stoi" in meta and meta["vocab_size"] != vocab_size:
        return f"a vocabulary of {vocab_size} tokens but the character vocabulary has {meta['vocab_size']}"
    if meta is not None and meta.get("vocab_size", 0) > vocab_size:
        return f"a vocabulary of {vocab_size} tokens but the data uses {meta['vocab_size']}"
    if meta is None and vocab_size < 50257:
        return f"a vocabulary of {vocab_size} tokens, too few for GPT-2's 50257 BPE tokens"
    return None


# -----------------------------------------------------------------------------
# random state, stored as tensors and plain values so weights_only loading accepts it

def rng_state():
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])


# -----------------------------------------------------------------------------
# models for sampling and chat

def load_pretrained(name_or_path, dropout=0.0):
    """GPT-2 weights from the Hugging Face hub or a local folder, with a sentence on failure."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        fail(f"init_from={name_or_path} needs the transformers package; pip install transformers")
    if os.sep in name_or_path and not os.path.exists(name_or_path):  # a path, not a hub name
        fail(f"init_from={name_or_path}: no such folder; give a Hugging Face GPT-2 folder (config.json and "
             f"model.safetensors) or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl)")
    try:
        return GPT.from_pretrained(name_or_path, dict(dropout=dropout))
    except (OSError, ValueError, EnvironmentError) as e:
        local = os.path.isdir(name_or_path)
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if local:
            fail(f"{name_or_path} is not a loadable Hugging Face GPT-2 folder ({reason}); it needs config.json "
                 f"and model.safetensors or pytorch_model.bin")
        fail(f"could not load {name_or_path!r} from the Hugging Face hub ({reason}); check the name "
             f"(gpt2, gpt2-medium, gpt2-large, gpt2-xl), connect to the internet, or give a local folder")


def find_meta(ckpt, out_dir):
    """(meta, folder) for a run's vocabulary: the meta.pkl train.py copies beside the checkpoint,
    else the one of the dataset named in its config (how nanoGPT's sample.py finds it); (None,
    None) for GPT-2 BPE runs, which have none."""
    from dataset import DATA_ROOT, read_meta
    meta = read_meta(out_dir)
    if meta is not None:
        return meta, out_dir
    dataset = (ckpt.get("config") or {}).get("dataset")
    if dataset:
        folder = os.path.join(DATA_ROOT, dataset)
        meta = read_meta(folder)
        if meta is not None:
            return meta, folder
    return None, None


def load_for_inference(init_from, out_dir, ckpt_name="ckpt.pt", device="cpu"):
    """(model in eval mode on device, tokenizer, description) from a run folder (init_from=resume)
    or from GPT-2 weights (a hub name or a local Hugging Face folder)."""
    from tokenizer import load_tokenizer
    if init_from == "resume":
        path = os.path.join(out_dir, ckpt_name)
        ckpt = load(path, map_location=device)
        model = build_model(ckpt, path, dropout=0.0)
        meta, _ = find_meta(ckpt, out_dir)
        dataset = (ckpt.get("config") or {}).get("dataset")
        vocab_size = model.config.vocab_size
        if meta is None and vocab_size < 50257:
            fail(f"{path} has a vocabulary of {vocab_size} tokens but no meta.pkl was found "
                 f"in {out_dir} or data/{dataset}; copy the dataset's meta.pkl next to the checkpoint")
        problem = vocab_mismatch(vocab_size, meta)
        if problem:
            fail(f"{path} does not fit the meta.pkl found for it: the model has {problem}; "
                 f"put the meta.pkl of the dataset it was trained on next to the checkpoint")
        desc = f"{path} (iteration {int(ckpt.get('iter_num', 0))})"
    else:
        model = load_pretrained(init_from, dropout=0.0)
        meta, desc = None, init_from
    tok = load_tokenizer(meta)
    if tok.vocab_size < model.config.vocab_size:
        model.crop_vocab(tok.vocab_size)  # a BPE run's padded rows: never sample an undecodable id
    model.eval().to(device)
    return model, tok, desc

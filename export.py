"""
Export a checkpoint as a Hugging Face folder: config.json, model.safetensors and, for models on
GPT-2's BPE vocabulary, the tokenizer files, so that

    AutoModelForCausalLM.from_pretrained(DIR)  and  transformers.pipeline("text-generation", model=DIR)

load it as they load GPT-2 (and `huggingface-cli upload` can publish it). The architecture is the
one that computes exactly what the checkpoint computes: GPT2LMHeadModel for GPT-2's network (also
with relu2, an untied head, another MLP width or epsilon), LlamaForCausalLM for pos_emb=rope +
norm=rmsnorm + mlp=swiglu (grouped-query attention, untied head and biases included), and
Qwen3ForCausalLM for that with qk_norm. Other combinations are refused with the option named.

    python export.py --out_dir=out-shakespeare                     # writes out-shakespeare/hf
    python export.py --out_dir=out-shakespeare --export_dir=my-gpt --ckpt_name=best.pt
    python export.py --out_dir=out --tokenizer_dir=path/with/vocab.json+merges.txt

A character-level model exports its weights and its meta.pkl (the vocabulary): transformers has no
tokenizer for such a vocabulary, so encode and decode with meta.pkl's stoi/itos yourself.
"""

import configurator
import errors
from configurator import Key

errors.install()

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("out_dir", "out", "the run folder holding the checkpoint"),
    Key("ckpt_name", "ckpt.pt", "checkpoint file in out_dir: ckpt.pt (latest) or best.pt (best val loss)"),
    Key("export_dir", "", "the Hugging Face folder to write (default: out_dir/hf)"),
    Key("overwrite", False, "replace export_dir if it exists and is not empty"),
    Key("tokenizer_dir", "", "a folder with GPT-2's vocab.json and merges.txt (default: made from tiktoken's GPT-2 files)"),
    Key("skip_tokenizer", False, "export the weights without tokenizer files"),
]
cfg = configurator.configure(KEYS)

import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import checkpoint  # noqa: E402
import hf  # noqa: E402
import loading  # noqa: E402
from errors import UserError  # noqa: E402
from tokenizer import GPT2_VOCAB  # noqa: E402

# -----------------------------------------------------------------------------
# what to export
export_dir = os.path.abspath(cfg.export_dir or os.path.join(cfg.out_dir, "hf"))
if os.path.isdir(export_dir) and os.listdir(export_dir) and not cfg.overwrite:
    raise UserError(f"{export_dir} already exists and is not empty; choose another --export_dir or add --overwrite")
if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    raise UserError(f"{export_dir} is a file, not a folder; choose another --export_dir")
try:
    import transformers  # noqa: F401
except ImportError:
    raise UserError("export needs the transformers package; pip install transformers") from None

path = os.path.join(cfg.out_dir, cfg.ckpt_name)
ckpt = checkpoint.load(path)
model = loading.build_model(ckpt, path, dropout=0.0)
hf.export_architecture(model.config)  # before any work: refuses, naming the option, what transformers cannot compute
vocab_size = model.config.vocab_size
meta, meta_dir = loading.find_meta(ckpt, cfg.out_dir)
dataset = (ckpt.get("config") or {}).get("dataset")
char_level = bool(meta and "stoi" in meta)
if char_level:
    vocab_size = meta["vocab_size"]
elif vocab_size >= GPT2_VOCAB:
    vocab_size = GPT2_VOCAB  # drop the rows padding 50257 up to 50304: no token ever maps to them
else:
    raise UserError(f"{path} has a vocabulary of {vocab_size} tokens but no meta.pkl was found in {cfg.out_dir} or "
                    f"data/{dataset}; copy the dataset's meta.pkl next to the checkpoint")

tokenizer = None
if not char_level and not cfg.skip_tokenizer:
    tokenizer = hf.gpt2_tokenizer(cfg.tokenizer_dir or None, model_max_length=model.config.block_size)

# -----------------------------------------------------------------------------
# write into a temporary sibling folder, then rename it into place: an interrupted export leaves
# no half-written folder, and an existing one is replaced only after the new one is complete
hf_model = hf.to_transformers(model, vocab_size)

parent = os.path.dirname(export_dir)
os.makedirs(parent, exist_ok=True)
tmp = f"{export_dir}.tmp{os.getpid()}"
try:
    hf_model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if char_level:
        shutil.copyfile(os.path.join(meta_dir, "meta.pkl"), os.path.join(tmp, "meta.pkl"))
    old = None
    if os.path.isdir(export_dir):
        if os.listdir(export_dir):
            old = f"{export_dir}.old{os.getpid()}"
            os.replace(export_dir, old)
        else:
            os.rmdir(export_dir)
    os.replace(tmp, export_dir)
    if old is not None:
        shutil.rmtree(old)
except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise

# -----------------------------------------------------------------------------
# say what was written and how to use it
n = sum(p.numel() for p in hf_model.parameters())
print(f"exported {path} (iteration {int(ckpt.get('iter_num', 0))}, {n / 1e6:.2f}M parameters, vocabulary "
      f"{vocab_size}) as {type(hf_model).__name__} to {export_dir}: {', '.join(sorted(os.listdir(export_dir)))}")
if char_level:
    print("note: this is a character-level model; no transformers tokenizer exists for its vocabulary. "
          "Encode and decode with the stoi/itos tables of meta.pkl (copied into the folder); "
          f"{type(hf_model).__name__}.from_pretrained loads the weights.", file=sys.stderr)
elif tokenizer is None:
    print("note: no tokenizer files were written; copy GPT-2's (vocab.json, merges.txt) into the folder "
          "before using transformers.pipeline on it", file=sys.stderr)
else:
    print(f"try: python -c \"from transformers import pipeline; "
          f"print(pipeline('text-generation', model='{export_dir}')('Hello')[0]['generated_text'])\"")

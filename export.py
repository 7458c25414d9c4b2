"""
Export a checkpoint as a Hugging Face GPT-2 folder: config.json, model.safetensors and, for models
on GPT-2's BPE vocabulary, the tokenizer files, so that

    GPT2LMHeadModel.from_pretrained(DIR)  and  transformers.pipeline("text-generation", model=DIR)

load it as they load GPT-2 (and `huggingface-cli upload` can publish it).

    python export.py --out_dir=out-shakespeare                     # writes out-shakespeare/hf
    python export.py --out_dir=out-shakespeare --export_dir=my-gpt --ckpt_name=best.pt
    python export.py --out_dir=out --tokenizer_dir=path/with/vocab.json+merges.txt   # offline

A character-level model exports its weights and its meta.pkl (the vocabulary): transformers has no
tokenizer for such a vocabulary, so encode and decode with meta.pkl's stoi/itos yourself.
"""

import configurator
from configurator import Key

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("out_dir", "out", "the run folder holding the checkpoint"),
    Key("ckpt_name", "ckpt.pt", "checkpoint file in out_dir: ckpt.pt (latest) or best.pt (best val loss)"),
    Key("export_dir", "", "the Hugging Face folder to write (default: out_dir/hf)"),
    Key("overwrite", False, "replace export_dir if it exists and is not empty"),
    Key("tokenizer_dir", "", "a folder with GPT-2's vocab.json and merges.txt (default: fetch 'gpt2' from the hub)"),
    Key("skip_tokenizer", False, "export the weights without tokenizer files"),
]
cfg = configurator.configure(KEYS)

import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

import checkpoint  # noqa: E402
from runtime import fail  # noqa: E402

GPT2_VOCAB = 50257  # GPT-2's BPE: 50,000 merges + 256 bytes + <|endoftext|>

# -----------------------------------------------------------------------------
# what to export
export_dir = os.path.abspath(cfg.export_dir or os.path.join(cfg.out_dir, "hf"))
if os.path.isdir(export_dir) and os.listdir(export_dir) and not cfg.overwrite:
    fail(f"{export_dir} already exists and is not empty; choose another --export_dir or add --overwrite")
if os.path.exists(export_dir) and not os.path.isdir(export_dir):
    fail(f"{export_dir} is a file, not a folder; choose another --export_dir")
try:
    import transformers  # noqa: F401
except ImportError:
    fail("export needs the transformers package; pip install transformers")

path = os.path.join(cfg.out_dir, cfg.ckpt_name)
ckpt = checkpoint.load(path)
model = checkpoint.build_model(ckpt, path, dropout=0.0)
vocab_size = model.config.vocab_size
meta, meta_dir = checkpoint.find_meta(ckpt, cfg.out_dir)
dataset = (ckpt.get("config") or {}).get("dataset")
char_level = bool(meta and "stoi" in meta)
if char_level:
    vocab_size = meta["vocab_size"]
elif vocab_size >= GPT2_VOCAB:
    vocab_size = GPT2_VOCAB  # drop the rows padding 50257 up to 50304: no token ever maps to them
else:
    fail(f"{path} has a vocabulary of {vocab_size} tokens but no meta.pkl was found in {cfg.out_dir} or "
         f"data/{dataset}; copy the dataset's meta.pkl next to the checkpoint")

tokenizer = None
if not char_level and not cfg.skip_tokenizer:
    from transformers import GPT2TokenizerFast
    source = cfg.tokenizer_dir or "gpt2"
    if cfg.tokenizer_dir and not all(os.path.isfile(os.path.join(cfg.tokenizer_dir, f))
                                     for f in ("vocab.json", "merges.txt")):
        fail(f"--tokenizer_dir={cfg.tokenizer_dir} must hold vocab.json and merges.txt (GPT-2's, as on "
             f"huggingface.co/openai-community/gpt2)")
    try:
        tokenizer = GPT2TokenizerFast.from_pretrained(source)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        fail(f"could not get GPT-2's tokenizer files from {source!r} ({reason}); connect to the internet once "
             f"(they are cached), or download vocab.json and merges.txt from huggingface.co/openai-community/gpt2 "
             f"and pass --tokenizer_dir=THAT_FOLDER, or export the weights alone with --skip_tokenizer")
    if len(tokenizer) != GPT2_VOCAB:  # transformers 5 offline builds an empty tokenizer instead of failing
        fail(f"the tokenizer from {source!r} has {len(tokenizer)} tokens, not GPT-2's {GPT2_VOCAB} (offline?); "
             f"connect to the internet once, or download vocab.json and merges.txt from "
             f"huggingface.co/openai-community/gpt2 and pass --tokenizer_dir=THAT_FOLDER, or export the "
             f"weights alone with --skip_tokenizer")

# -----------------------------------------------------------------------------
# write into a temporary sibling folder, then rename it into place: an interrupted export leaves
# no half-written folder, and an existing one is replaced only after the new one is complete
from transformers import GPT2LMHeadModel  # noqa: E402

hf = GPT2LMHeadModel(model.hf_config(vocab_size))
missing, unexpected = hf.load_state_dict(model.hf_state_dict(vocab_size), strict=False)
# older transformers keep the causal mask as an 'attn.bias' buffer; it is not a weight
missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
assert not missing and not unexpected, (missing, unexpected)
hf.tie_weights()

parent = os.path.dirname(export_dir)
os.makedirs(parent, exist_ok=True)
tmp = f"{export_dir}.tmp{os.getpid()}"
try:
    hf.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
        for f in ("vocab.json", "merges.txt"):  # for tools that read the slow-tokenizer files
            if cfg.tokenizer_dir and not os.path.exists(os.path.join(tmp, f)):
                shutil.copyfile(os.path.join(cfg.tokenizer_dir, f), os.path.join(tmp, f))
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
n = sum(p.numel() for p in hf.parameters())
print(f"exported {path} (iteration {int(ckpt.get('iter_num', 0))}, {n / 1e6:.2f}M parameters, vocabulary "
      f"{vocab_size}) to {export_dir}: {', '.join(sorted(os.listdir(export_dir)))}")
if char_level:
    print("note: this is a character-level model; no transformers tokenizer exists for its vocabulary. "
          "Encode and decode with the stoi/itos tables of meta.pkl (copied into the folder); "
          "GPT2LMHeadModel.from_pretrained loads the weights.", file=sys.stderr)
elif tokenizer is None:
    print("note: no tokenizer files were written; copy GPT-2's (vocab.json, merges.txt) into the folder "
          "before using transformers.pipeline on it", file=sys.stderr)
else:
    print(f"try: python -c \"from transformers import pipeline; "
          f"print(pipeline('text-generation', model='{export_dir}')('Hello')[0]['generated_text'])\"")

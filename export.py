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

A LoRA run (docs/lora.md) exports as its base with the adapters merged in, like any run; with
--peft=True, its adapters alone in PEFT's format, for peft.PeftModel.from_pretrained over its base:

    python export.py --out_dir=out-lora --peft=True                  # writes out-lora/peft
"""

import configurator
from configurator import Key
from gptkit import errors

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
    Key("peft", False, "a LoRA run: write its adapters alone in PEFT's format (adapter_config.json, "
        "adapter_model.safetensors; default export_dir: out_dir/peft) instead of the merged model"),
]
cfg = configurator.configure(KEYS)

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from gptkit import checkpoint, fileio, hf, loading, lora  # noqa: E402
from gptkit.errors import UserError  # noqa: E402
from gptkit.tokenizer import GPT2_VOCAB  # noqa: E402

MARKER = "export.json"  # written into every export: what it was made from, and that --overwrite may replace it

# -----------------------------------------------------------------------------
# where to write: a new folder, or with --overwrite an earlier export and nothing else
export_dir = os.path.abspath(cfg.export_dir or os.path.join(cfg.out_dir, "peft" if cfg.peft else "hf"))
run_dir = os.path.abspath(cfg.out_dir)


def within(path, folder):
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


probe = export_dir
while not os.path.exists(probe):
    probe = os.path.dirname(probe)
if not os.path.isdir(probe):
    raise UserError(f"export_dir={cfg.export_dir or export_dir} cannot be a folder: {probe} is a file; choose "
                    f"another --export_dir")
if within(run_dir, export_dir) or within(os.getcwd(), export_dir):
    what = "the run folder" if export_dir == run_dir else "the working directory" if export_dir == os.getcwd() \
        else "a folder that contains the run or the working directory"
    raise UserError(f"export_dir={export_dir} is {what}; exporting there would replace it: choose a new folder, "
                    f"e.g. --export_dir={os.path.join(cfg.out_dir, 'hf')}")
if os.path.isdir(export_dir) and os.listdir(export_dir):
    if not cfg.overwrite:
        raise UserError(f"{export_dir} already exists and is not empty; choose another --export_dir or add "
                        f"--overwrite (which replaces an earlier export, and only that)")
    entries = os.listdir(export_dir)
    earlier_export = (MARKER in entries and all(os.path.isfile(os.path.join(export_dir, e)) for e in entries)
                      and not any(e.endswith(".pt") or e == "metrics.jsonl" for e in entries))
    if not earlier_export:
        raise UserError(f"{export_dir} is not a folder export.py wrote (no {MARKER}, or it holds other things such as "
                        f"checkpoints or folders), so --overwrite will not replace it; choose another --export_dir")
try:
    import transformers  # noqa: F401
except ImportError:
    raise UserError("export needs the transformers package; pip install transformers") from None

path = os.path.join(cfg.out_dir, cfg.ckpt_name)
ckpt = checkpoint.load(path)
model = loading.build_model(ckpt, path, dropout=0.0)
if cfg.peft and not hasattr(model, "lora"):
    raise UserError(f"--peft=True writes a LoRA run's adapters, and {path} is a model trained in full (lora_rank=0); "
                    f"export it without --peft")
hf.export_architecture(model.config)  # before any work: refuses, naming the option, what transformers cannot compute
vocab_size = model.config.vocab_size
meta, meta_dir = loading.find_meta(ckpt, cfg.out_dir)
dataset = (ckpt.get("config") or {}).get("dataset")
loading.check_vocab(model, meta, path, f"{cfg.out_dir} or data/{dataset}")  # as sample.py checks it
char_level = bool(meta and "stoi" in meta)
if char_level:
    vocab_size = meta["vocab_size"]
else:
    vocab_size = GPT2_VOCAB  # drop the rows padding 50257 up to 50304: no token ever maps to them

# PEFT's adapter, over the base exported as this model is; otherwise the adapters are folded in
base = ckpt["lora"]["base"]["source"] if cfg.peft else None
adapter = hf.peft_adapter(model, vocab_size, None if os.path.isfile(str(base)) else base) if cfg.peft else None
model = lora.merge(model)

tokenizer = None
if not char_level and not cfg.skip_tokenizer:
    tokenizer = hf.gpt2_tokenizer(cfg.tokenizer_dir or None, model_max_length=model.config.block_size)

# -----------------------------------------------------------------------------
# write into a temporary sibling folder, then rename it into place: an interrupted export leaves
# no half-written folder, and an existing one is replaced only after the new one is complete
hf_model = hf.to_transformers(model, vocab_size) if adapter is None else None
# transformers' default length (and a pipeline call without max_new_tokens) must stay inside the context:
# past it GPT-2's position table has no row and generation crashes (and a rotary model never trained there)
if hf_model is not None:
    hf_model.generation_config.max_length = model.config.block_size

parent = os.path.dirname(export_dir)
try:
    os.makedirs(parent, exist_ok=True)
except OSError as e:
    raise UserError(f"could not create {parent} ({fileio.reason(e)}); choose another --export_dir") from None
tmp = f"{export_dir}.tmp{os.getpid()}"
try:
    if adapter is None:
        hf_model.save_pretrained(tmp, safe_serialization=True)
    else:
        hf.save_peft(tmp, *adapter)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if char_level:
        shutil.copyfile(os.path.join(meta_dir, "meta.pkl"), os.path.join(tmp, "meta.pkl"))
    with fileio.atomic_open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(dict(exported_by="export.py", checkpoint=os.path.abspath(path),
                       iteration=int(ckpt.get("iter_num", 0)), vocab_size=vocab_size,
                       **(dict(peft=True, base=base) if adapter is not None else {})), f, indent=1)
    fileio.normal_permissions(tmp)  # some writers (safetensors) create their files private to the owner
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
if adapter is not None:
    print(hf.peft_usage(path, int(ckpt.get("iter_num", 0)), export_dir, base, adapter))
    sys.exit(0)
n = sum(p.numel() for p in hf_model.parameters())
print(f"exported {path} (iteration {int(ckpt.get('iter_num', 0))}, {n / 1e6:.2f}M parameters, vocabulary "
      f"{vocab_size}) as {type(hf_model).__name__} to {export_dir}: {', '.join(sorted(os.listdir(export_dir)))}")
new_tokens = max(1, min(100, model.config.block_size - 16))  # a prompt of a few tokens, and the rest in context
if char_level:
    print("note: this is a character-level model; no transformers tokenizer exists for its vocabulary: "
          "transformers loads the weights, and meta.pkl (copied into the folder) encodes and decodes", file=sys.stderr)
    start = next((p for p in ("ROMEO:", "The ", "a") if all(c in meta["stoi"] for c in p)), meta["itos"][0])
    print(f"try: python -c \"import pickle, torch; from transformers import AutoModelForCausalLM; "
          f"d = '{export_dir}'; m = AutoModelForCausalLM.from_pretrained(d); "
          f"meta = pickle.load(open(d + '/meta.pkl', 'rb')); ids = torch.tensor([[meta['stoi'][c] for c in {start!r}]]); "
          f"out = m.generate(ids, max_new_tokens={new_tokens}, do_sample=False); "
          f"print(''.join(meta['itos'][i] for i in out[0].tolist()))\"")
elif tokenizer is None:
    print("note: no tokenizer files were written; copy GPT-2's (vocab.json, merges.txt) into the folder "
          "before using transformers.pipeline on it", file=sys.stderr)
else:
    print(f"try: python -c \"from transformers import pipeline; "
          f"print(pipeline('text-generation', model='{export_dir}')('Hello', max_new_tokens={new_tokens})"
          f"[0]['generated_text'])\"")

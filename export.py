"""
Export a checkpoint as a Hugging Face folder: config.json, model.safetensors and, for models on
GPT-2's BPE vocabulary or a tokenizer trained by a prepare script, the tokenizer files, so that

    AutoModelForCausalLM.from_pretrained(DIR)  and  transformers.pipeline("text-generation", model=DIR)

load it as they load GPT-2 (and `huggingface-cli upload` can publish it). The architecture is the
one that computes exactly what the checkpoint computes: GPT2LMHeadModel for GPT-2's network (also
with relu2, an untied head, another MLP width or epsilon), LlamaForCausalLM for pos_emb=rope +
norm=rmsnorm + mlp=swiglu (grouped-query attention, untied head and biases included; MistralForCausalLM
for a run started from one), Qwen2ForCausalLM for that with qkv_bias, and Qwen3ForCausalLM for that with
qk_norm. Other combinations are refused with the option named.

    python export.py --out_dir=out-shakespeare                     # writes out-shakespeare/hf
    python export.py --out_dir=out-shakespeare --export_dir=my-gpt --ckpt_name=best.pt
    python export.py --out_dir=out --tokenizer_dir=path/with/vocab.json+merges.txt

A character-level model exports its weights and its meta.pkl (the vocabulary): transformers has no
tokenizer for such a vocabulary, so encode and decode with meta.pkl's stoi/itos yourself.

A LoRA run (docs/lora.md) exports as its base with the adapters merged in, like any run; with
--peft=True, its adapters alone in PEFT's format, for peft.PeftModel.from_pretrained over its base:

    python export.py --out_dir=out-lora --peft=True                  # writes out-lora/peft

--format=gguf writes one GGUF file for llama.cpp instead (llama-cpp-python, ollama, LM Studio): the
same architectures (llama.cpp's gpt2, llama, qwen2, qwen3) with the run's tokenizer (GPT-2's BPE, a
trained tokenizer's or a Hugging Face model's tokenizer.json), weights as f32, f16 or Q8_0:

    python export.py --out_dir=out-gpt2 --format=gguf --gguf_type=q8_0   # writes out-gpt2/model-q8_0.gguf
    python export.py --init_from=Qwen/Qwen2.5-0.5B --format=gguf          # a Hugging Face model as it is

--format=pt writes a parallel=fsdp run's one-file checkpoints from its sharded ones, in the run folder, for
nanoGPT's sample.py (this project's scripts read the sharded ones themselves):

    python export.py --out_dir=out-fsdp --format=pt                  # writes ckpt.pt and best.pt
"""

from gptkit import errors

errors.install()  # first: Ctrl-C while the rest loads ends in one line and status 130

from gptkit import configurator  # noqa: E402
from gptkit import keys  # noqa: E402
from gptkit.configurator import Key  # noqa: E402

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("out_dir", "out", "the run folder holding the checkpoint"),
    keys.CKPT_NAME,
    keys.LORA_BASE,
    Key("export_dir", "", "the Hugging Face folder to write (default: out_dir/hf)"),
    Key("overwrite", False, "replace export_dir (or gguf_file) if it exists, and only if export.py wrote it"),
    Key("tokenizer_dir", "", "a folder with GPT-2's vocab.json and merges.txt (default: made from tiktoken's GPT-2 files)"),
    Key("skip_tokenizer", False, "export the weights without tokenizer files"),
    Key("peft", False, "a LoRA run: write its adapters alone in PEFT's format (adapter_config.json, "
        "adapter_model.safetensors; default export_dir: out_dir/peft) instead of the merged model"),
    Key("format", "hf", "hf: a Hugging Face folder (transformers); gguf: one GGUF file (llama.cpp); pt: a parallel=fsdp "
        "run's one-file checkpoints (nanoGPT's layout) written in out_dir from its sharded ones",
        choices=("hf", "gguf", "pt")),
    Key("gguf_type", "f16", "format=gguf: the weights' type, f32, f16 or q8_0 (8-bit blocks, llama.cpp's fast CPU type)",
        choices=("f32", "f16", "q8_0")),
    Key("gguf_file", "", "format=gguf: the file to write (default: out_dir/model-<gguf_type>.gguf; with init_from: "
        "<model name>-<gguf_type>.gguf in the working directory)"),
    Key("init_from", "", "format=gguf: a Hugging Face model folder or hub id (GPT-2, Llama, Qwen2, Qwen3, Mistral) "
        "to write as GGUF instead of the run in out_dir"),
]
cfg = configurator.configure(KEYS)

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from gptkit import checkpoint, fileio, hf, hf_models, hf_tokenizer, loading, lora, quiet  # noqa: E402
from gptkit.conversation import Transcript  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402
from gptkit.tokenizer import GPT2_EOT, GPT2_VOCAB, load_tokenizer  # noqa: E402

MARKER = "export.json"  # written into every export: what it was made from, and the files --overwrite may replace
# what exports written without a list of their files hold
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "vocab.json", "merges.txt", "special_tokens_map.json", "meta.pkl", MARKER)

run_dir = os.path.abspath(cfg.out_dir)
if cfg.format == "pt":
    # -------------------------------------------------------------------------
    # a parallel=fsdp run's one-file checkpoints (nanoGPT's layout, which its sample.py reads) from its
    # sharded ones, into the run folder; a file holding a later iteration is kept
    from gptkit import runs
    store = checkpoint.Store(cfg.out_dir)
    names = [cfg.ckpt_name] if cfg.ckpt_name else [n for n in (runs.LATEST, runs.BEST) if store.sharded(n)]
    if not names:
        raise UserError(f"{cfg.out_dir} holds no sharded checkpoint ({runs.sharded_name(runs.LATEST)}), so there is "
                        f"nothing to write one-file checkpoints from; --format=pt is for the folder of a parallel=fsdp "
                        f"run", status=USAGE)
    lock = runs.RunLock(cfg.out_dir).acquire()  # refused while a training run writes the folder
    for name in names:
        print(store.consolidate(name))
    lock.release()
    sys.exit(0)
if cfg.format == "gguf":
    if cfg.peft:
        raise UserError("--peft=True writes a PEFT adapter folder, not a GGUF file; drop --format=gguf (or --peft, "
                        "for the merged model as one GGUF file)", status=USAGE)
    # -------------------------------------------------------------------------
    # GGUF: one file, written atomically; an existing file only with --overwrite, and only one export wrote
    from gptkit import gguf_export, gguf_vocab
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("--format=gguf needs the gguf package; pip install gguf") from None
    default = (f"{os.path.basename(os.path.normpath(cfg.init_from))}-{cfg.gguf_type}.gguf" if cfg.init_from
               else os.path.join(cfg.out_dir, f"model-{cfg.gguf_type}.gguf"))
    gguf_file = os.path.abspath(cfg.gguf_file or default)
    if os.path.isdir(gguf_file):
        raise UserError(f"gguf_file={gguf_file} is a folder; give the path of a file to write, e.g. "
                        f"--gguf_file={os.path.join(gguf_file, 'model.gguf')}")
    if os.path.exists(gguf_file):
        if not gguf_export.written_by_export(gguf_file):
            raise UserError(f"{gguf_file} exists and is not a GGUF file export.py wrote, so it will not be replaced; "
                            f"choose another --gguf_file")
        if not cfg.overwrite:
            raise UserError(f"{gguf_file} already exists; choose another --gguf_file or add --overwrite (which "
                            f"replaces an earlier export, and only that)")
    if cfg.skip_tokenizer:
        raise UserError("a GGUF file always carries its tokenizer (llama.cpp reads text through it); drop "
                        "--skip_tokenizer", status=USAGE)
    if cfg.init_from:  # a Hugging Face model as it is, with its own tokenizer and chat template
        loading.refuse_a_run_as_weights(cfg.init_from)
        model, desc = loading.load_pretrained(cfg.init_from)
        gguf_export.architecture(model.config)
        if hf_models.architecture(hf_models.read_config(cfg.init_from), cfg.init_from) == "gpt2":
            vocab = gguf_vocab.gpt2(cfg.tokenizer_dir or None)
        else:
            tok = hf_tokenizer.load(cfg.init_from)
            vocab = gguf_vocab.of_tokenizer(tok, model.config.vocab_size, f"{cfg.init_from}'s tokenizer.json")
        what, name, source = desc, os.path.basename(os.path.normpath(cfg.init_from)), desc
    else:
        ckpt, path, note = checkpoint.Store(cfg.out_dir).load(cfg.ckpt_name)  # a sharded one is read whole, in memory
        if note:
            print(f"note: {note}", file=sys.stderr)
        # a LoRA run: its adapters folded in
        model = lora.merge(loading.build_model(ckpt, path, dropout=0.0, lora_base=cfg.lora_base))
        gguf_export.architecture(model.config)  # before any work: refuses, naming the option, what llama.cpp
                                                # cannot compute
        meta, meta_dir = loading.find_meta(ckpt, cfg.out_dir)
        loading.check_vocab(model, meta, path, f"{cfg.out_dir} or data/{(ckpt.get('config') or {}).get('dataset')}")
        if meta and "stoi" in meta:
            raise UserError(f"{path} is a character-level model, and llama.cpp has no tokenizer for a character "
                            f"vocabulary; export it with --format=hf (weights plus meta.pkl) instead")
        template = None  # a chat fine-tune's conversation format, for llama.cpp's chat
        if ckpt.get("chat_template") is not None and not (meta and meta.get("hf")):
            template = Transcript.from_dict(ckpt["chat_template"], path).jinja()
        if meta and meta.get("tokenizer"):  # a tokenizer trained for the data, or the Hugging Face model's own
            if cfg.tokenizer_dir:
                raise UserError(f"--tokenizer_dir gives GPT-2's tokenizer files, and {path} was trained on its own "
                                f"tokenizer.json, which the GGUF file carries; drop --tokenizer_dir", status=USAGE)
            tok = load_tokenizer(meta, meta_dir)
            # a Hugging Face model keeps every row its release has (llama.cpp's converter names the unused ones
            # [PAD<id>]); a trained tokenizer's run drops the rows padding its vocabulary, which no token maps to
            rows = model.config.vocab_size if meta.get("hf") else tok.vocab_size
            vocab = gguf_vocab.of_tokenizer(tok, rows, os.path.join(meta_dir, meta["tokenizer"]), template)
        else:
            vocab = gguf_vocab.gpt2(cfg.tokenizer_dir or None)
            vocab.chat_template = template
        iteration = int(ckpt.get("iter_num", 0))
        what, name, source = f"{path} (iteration {iteration})", os.path.basename(run_dir), \
            f"{os.path.abspath(path)} (iteration {iteration})"
    if not os.path.isdir(os.path.dirname(gguf_file)):  # a mistyped path is said, not made into folders
        raise UserError(f"gguf_file={gguf_file}: the folder {os.path.dirname(gguf_file)} does not exist; create it "
                        f"first or choose another --gguf_file", status=USAGE)
    arch = gguf_export.write_gguf(model, gguf_file, cfg.gguf_type, vocab, name=name, source=source)
    size = os.path.getsize(gguf_file)
    print(f"exported {what} ({model.get_num_params(non_embedding=False) / 1e6:.2f}M parameters) as llama.cpp's "
          f"{arch}, {cfg.gguf_type}, to {gguf_file} ({size / 2**20:.1f} MiB)")
    if model.config.gelu_approximate == "none" and arch == "gpt2":
        print("note: llama.cpp computes GELU in its tanh form; this model was trained with the exact one, "
              "which differs by < 1e-3 per activation", file=sys.stderr)
    new_tokens = max(1, min(100, model.config.block_size - 16))
    print(f"try: python -c \"from llama_cpp import Llama; m = Llama('{gguf_file}', n_ctx={model.config.block_size}, "
          f"verbose=False); print(m('Hello', max_tokens={new_tokens}, temperature=0)['choices'][0]['text'])\"")
    sys.exit(0)

if cfg.init_from:
    raise UserError(f"init_from={cfg.init_from} is already a Hugging Face model; init_from is read with --format=gguf, "
                    f"and a run is exported to a folder with --out_dir", status=USAGE)

# -----------------------------------------------------------------------------
# where to write: a new folder, or with --overwrite an earlier export and nothing else
export_dir = os.path.abspath(cfg.export_dir or os.path.join(cfg.out_dir, "peft" if cfg.peft else "hf"))


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
earlier = []  # the files an earlier export wrote there, which --overwrite replaces (and nothing else)
if os.path.isdir(export_dir) and os.listdir(export_dir):
    if not cfg.overwrite:
        raise UserError(f"{export_dir} already exists and is not empty; choose another --export_dir or add "
                        f"--overwrite (which replaces an earlier export's files, and only those)")
    try:
        with open(os.path.join(export_dir, MARKER)) as f:
            earlier = json.load(f).get("files") or EXPORT_FILES
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{export_dir} is not a folder export.py wrote (it has no {MARKER}), so --overwrite will not "
                        f"replace anything in it; choose another --export_dir") from None
try:
    import transformers  # noqa: F401
except ImportError:
    raise UserError("export needs the transformers package; pip install transformers") from None

ckpt, path, note = checkpoint.Store(cfg.out_dir).load(cfg.ckpt_name)  # a sharded one is read whole, in memory
if note:
    print(f"note: {note}", file=sys.stderr)
model = loading.build_model(ckpt, path, dropout=0.0, lora_base=cfg.lora_base)
if cfg.peft and not hasattr(model, "lora"):
    raise UserError(f"--peft=True writes a LoRA run's adapters, and {path} is a model trained in full (lora_rank=0); "
                    f"export it without --peft")
hf.export_architecture(model.config)  # before any work: refuses, naming the option, what transformers cannot compute
vocab_size = model.config.vocab_size
meta, meta_dir = loading.find_meta(ckpt, cfg.out_dir)
dataset = (ckpt.get("config") or {}).get("dataset")
loading.check_vocab(model, meta, path, f"{cfg.out_dir} or data/{dataset}")  # as sample.py checks it
char_level = bool(meta and "stoi" in meta)
trained = bool(meta and meta.get("tokenizer"))  # a BPE trained on the data: its tokenizer.json becomes the export's
model_tokenizer = bool(meta and meta.get("hf"))  # a Hugging Face model's own tokenizer (a run started from it)
if model_tokenizer:
    vocab_size = model.config.vocab_size  # the model's rows as its release has them, unused ones included
elif char_level or trained:
    vocab_size = meta["vocab_size"]
else:
    vocab_size = GPT2_VOCAB  # drop the rows padding 50257 up to 50304: no token ever maps to them

# PEFT's adapter, over the base exported as this model is; otherwise the adapters are folded in
base = ckpt["lora"]["base"]["source"] if cfg.peft else None
adapter = hf.peft_adapter(model, vocab_size, None if os.path.isfile(str(base)) else base) if cfg.peft else None
tied_head = model.config.tie_embeddings  # the base's (merging the adapters unties an adapted head)
model = lora.merge(model)

tokenizer = None
if model_tokenizer and not cfg.skip_tokenizer:  # with its special tokens and chat template
    tokenizer = hf_tokenizer.to_transformers(load_tokenizer(meta, meta_dir), model_max_length=model.config.block_size)
elif trained and not cfg.skip_tokenizer:
    tokenizer = hf.fast_tokenizer(load_tokenizer(meta, meta_dir), model_max_length=model.config.block_size)
elif not char_level and not cfg.skip_tokenizer:
    tokenizer = hf.gpt2_tokenizer(cfg.tokenizer_dir or None, model_max_length=model.config.block_size)
if tokenizer is not None and ckpt.get("chat_template") is not None and not model_tokenizer:  # a chat fine-tune:
    tokenizer.chat_template = Transcript.from_dict(ckpt["chat_template"], path).jinja()  # writes its training text

# -----------------------------------------------------------------------------
# write into a temporary sibling folder, then rename it into place: an interrupted export leaves
# no half-written folder, and an existing one is replaced only after the new one is complete
# a run started from a MistralForCausalLM goes back as one (a Llama export would compute the same)
with quiet.transformers():  # transformers' own progress bars and notes stay out of the output
    hf_model = hf.to_transformers(model, vocab_size, eot=meta["eot"] if trained else GPT2_EOT,
                                  family=hf_models.family_of_run(ckpt)) if adapter is None else None
# transformers' default length (and a pipeline call without max_new_tokens) must stay inside the context:
# past it GPT-2's position table has no row and generation crashes (and a rotary model never trained there).
# Half the context (256 tokens at most, a pipeline's own default) leaves the other half for the prompt. A
# max_length here instead would make every generate(max_new_tokens=...) call warn that both are set.
if hf_model is not None and model_tokenizer:
    hf_model.generation_config.eos_token_id = load_tokenizer(meta, meta_dir).stop_ids  # end of text and of turn
if hf_model is not None:
    hf_model.generation_config.max_new_tokens = max(1, min(256, model.config.block_size // 2))

parent = os.path.dirname(export_dir)
if not os.path.isdir(parent):  # a mistyped path is said, not made into a tree of folders
    raise UserError(f"export_dir={export_dir}: the folder {parent} does not exist; create it first or choose another "
                    f"--export_dir", status=USAGE)
tmp = f"{export_dir}.tmp{os.getpid()}"
try:
    with quiet.transformers():  # no "Writing model shards" bar amid the lines
        if adapter is None:
            hf_model.save_pretrained(tmp, safe_serialization=True)
        else:
            hf.save_peft(tmp, *adapter)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp, save_jinja_files=False)  # a chat template in tokenizer_config.json,
                                                                    # where every version of transformers reads it
            hf_tokenizer.portable_config(tmp)  # which transformers 4.x loads too
    if char_level:
        shutil.copyfile(os.path.join(meta_dir, "meta.pkl"), os.path.join(tmp, "meta.pkl"))
    files = sorted(os.listdir(tmp) + [MARKER])
    with fileio.atomic_open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(dict(exported_by="export.py", checkpoint=os.path.abspath(path),
                       iteration=int(ckpt.get("iter_num", 0)), vocab_size=vocab_size, files=files,
                       **(dict(peft=True, base=base) if adapter is not None else {})), f, indent=1)
    fileio.normal_permissions(tmp)  # some writers (safetensors) create their files private to the owner
    fileio.publish_folder(tmp, export_dir, owned=earlier)  # a model card a user added stays
except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    # a full disk or an unwritable folder: an OSError, or safetensors' own error type wrapping one
    if isinstance(e, OSError) or type(e).__name__ == "SafetensorError":
        raise UserError(f"could not write {export_dir} ({fileio.reason(e)}); free some disk space or choose a "
                        f"writable --export_dir") from None
    raise

# -----------------------------------------------------------------------------
# say what was written and how to use it
if adapter is not None:
    print(hf.peft_usage(path, int(ckpt.get("iter_num", 0)), export_dir, base, adapter))
    if "lm_head" in adapter[0]["target_modules"] and tied_head:
        # PEFT adds a merged update to the weight the head shares with the embedding, so the inputs change too
        print("note: these adapters change lm_head, which the base shares with its token embedding: use them "
              "unmerged, as above; PEFT's merge_and_unload() would add the head's update to the embedding as well "
              "and change the outputs. For a merged model, export without --peft (it writes the head untied)",
              file=sys.stderr)
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
    fix = ("export again without --skip_tokenizer" if trained
           else "copy GPT-2's (vocab.json, merges.txt) into the folder")
    print(f"note: no tokenizer files were written; {fix} before using transformers.pipeline on it", file=sys.stderr)
else:
    print(f"try: python -c \"from transformers import pipeline; "
          f"print(pipeline('text-generation', model='{export_dir}')('Hello', max_new_tokens={new_tokens})"
          f"[0]['generated_text'])\"")

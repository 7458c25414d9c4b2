"""
The tokenizer figures of docs/data.md: how long training a byte-level BPE takes and how many bytes a
token holds on held-out text against GPT-2's BPE (--mode=fit), and the bits per byte the CPU recipe
reaches with characters, GPT-2's BPE and trained BPEs of a few sizes (--mode=bpb).

    python experiments/tokenizer_study.py --mode=fit --corpus=input.txt --vocab_sizes=512,1024,4096
    python experiments/tokenizer_study.py --mode=fit --corpus=/usr/lib/python3.11 --max_mb=250 --vocab_sizes=32768,65536
    python experiments/tokenizer_study.py --mode=bpb --corpus=input.txt --vocab_sizes=512,1024,2048,4096

fit: a file is split at 90% of its characters, a folder's files are documents of which every 50th is
held out; the tokenizer is trained on the rest with tokenizer.train_bpe (what the prepare scripts
run) and bytes per token are counted on the held-out text, for it and for GPT-2's BPE (tiktoken).
Training time is the median of --repeats trainings. Run it alone on the machine (flock -x).

bpb: the corpus is prepared with data/shakespeare_char/prepare.py (characters) and data/corpus/
prepare.py (--tokenizer=gpt2, and --tokenizer=bpe per size), the CPU recipe
(config/train_shakespeare_char_cpu.py: the same model, steps and tokens per step) trains on each,
and its final val loss becomes bits per byte: loss / ln 2 * val tokens / val bytes. The losses are
deterministic (seeded data and initialisation), so runs may share the machine.
"""

import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # train.py and data/ live there
from gptkit import configurator
from gptkit.configurator import Key
from gptkit import errors

errors.install()

KEYS = [
    Key("mode", "fit", "fit: training time and bytes per token; bpb: the CPU recipe's bits per byte",
        choices=("fit", "bpb")),
    Key("corpus", "", "a text file, or a folder whose .py/.md/.rst/.txt files are the documents"),
    Key("max_mb", 0.0, "a folder: take its files in sorted order up to this many MB (0: all)", min=0.0),
    Key("vocab_sizes", (512, 1024, 4096), "the trained tokenizers' sizes", type=tuple),
    Key("repeats", 3, "fit: trainings per size (the median time is reported)", min=1),
    Key("out_root", "out-tokenizers", "bpb: where the datasets and runs go"),
    Key("jobs", 2, "bpb: training runs at a time (one thread each)", min=1),
]
cfg = configurator.configure(KEYS)

from gptkit.documents import text_pieces
from gptkit.errors import UserError
from gptkit.tokenizer import BPETokenizer, train_bpe

SUFFIXES = (".py", ".md", ".rst", ".txt")


def documents(corpus, max_mb):
    """(train texts, held-out texts) of the corpus: a file cut at 90%, or a folder's files with every
    50th held out."""
    if os.path.isfile(corpus):
        with open(corpus, encoding="utf-8") as f:
            text = f.read()
        cut = int(len(text) * 0.9)
        return [text[:cut]], [text[cut:]]
    if not os.path.isdir(corpus):
        raise UserError(f"--corpus={corpus} is neither a file nor a folder")
    paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(corpus) for f in fs if f.endswith(SUFFIXES))
    docs, size = [], 0
    for path in paths:
        try:
            if not os.path.isfile(path) or os.path.getsize(path) > 2 * 2**20:  # a few huge generated files
                continue
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        docs.append(text)
        size += len(text.encode("utf-8"))
        if max_mb and size >= max_mb * 2**20:
            break
    return [d for i, d in enumerate(docs) if i % 50 != 49], docs[49::50]


def fit():
    train, held_out = documents(cfg.corpus, cfg.max_mb)
    train_bytes = sum(len(t.encode("utf-8")) for t in train)
    held_bytes = sum(len(t.encode("utf-8")) for t in held_out)
    gpt2 = BPETokenizer()
    gpt2_tokens = sum(len(ids) for ids in gpt2.encode_ordinary_batch(held_out))
    print(f"{cfg.corpus}: {len(train):,} train documents ({train_bytes / 2**20:.1f} MB), {len(held_out):,} held out "
          f"({held_bytes / 2**20:.2f} MB); GPT-2's BPE: {held_bytes / gpt2_tokens:.3f} bytes per token")
    rows = []
    for size in cfg.vocab_sizes:
        times, tok = [], None
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            tok = train_bpe((p for t in train for p in text_pieces(t)), size)
            times.append(time.perf_counter() - t0)
        n = sum(len(ids) for ids in tok.encode_ordinary_batch(held_out))
        row = dict(vocab_size=size, train_s=statistics.median(times), train_s_min=min(times), train_s_max=max(times),
                   bytes_per_token=held_bytes / n, gpt2_bytes_per_token=held_bytes / gpt2_tokens,
                   train_mb=train_bytes / 2**20)
        rows.append(row)
        print(json.dumps(row))
    print("\n| vocabulary | training (median, min-max) | bytes per held-out token | against GPT-2's BPE |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['vocab_size']:,} | {r['train_s']:.1f} s ({r['train_s_min']:.1f}-{r['train_s_max']:.1f}) | "
              f"{r['bytes_per_token']:.3f} | {r['bytes_per_token'] / r['gpt2_bytes_per_token']:.2f}x "
              f"({r['gpt2_bytes_per_token']:.3f}) |")


def bpb():
    import numpy as np
    root = os.path.abspath(cfg.out_root)
    os.makedirs(root, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", GPT_DATA_ROOT=root)
    prepared = {"char": [sys.executable, "data/shakespeare_char/prepare.py", cfg.corpus],
                "gpt2": [sys.executable, "data/corpus/prepare.py", cfg.corpus, "--tokenizer=gpt2"]}
    for size in cfg.vocab_sizes:
        prepared[f"bpe{size}"] = [sys.executable, "data/corpus/prepare.py", cfg.corpus, "--tokenizer=bpe",
                                  f"--vocab_size={size}"]
    for name, command in prepared.items():
        subprocess.run([*command, f"--out={os.path.join(root, name)}"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
    pending = list(prepared)
    running = []
    while pending or running:
        while pending and len(running) < cfg.jobs:
            name = pending.pop(0)
            out = os.path.join(root, f"run-{name}")
            running.append(subprocess.Popen([sys.executable, "train.py", "config/train_shakespeare_char_cpu.py",
                                             f"--dataset={name}", f"--out_dir={out}", "--overwrite=True",
                                             "--loss_png=False"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL))
        running[0].wait()
        if running[0].returncode:
            raise UserError(f"a training run failed: {running[0].args}")
        running.pop(0)
    from gptkit.dataset import read_meta
    from gptkit.tokenizer import load_tokenizer
    print("| tokenizer | vocabulary | val bytes per token | val loss (nats per token) | bits per byte |")
    print("|---|---|---|---|---|")
    for name in prepared:
        folder = os.path.join(root, name)
        meta = read_meta(folder)
        ids = np.fromfile(os.path.join(folder, "val.bin"), dtype=np.uint16).tolist()
        tok = load_tokenizer(meta, folder)
        val_bytes = len(tok.decode(ids).replace("<|endoftext|>", "").encode("utf-8"))
        with open(os.path.join(root, f"run-{name}", "metrics.jsonl")) as f:
            loss = [json.loads(line) for line in f if "val_loss" in line][-1]["val_loss"]
        print(f"| {name} | {tok.vocab_size:,} | {val_bytes / len(ids):.3f} | {loss:.4f} | "
              f"{loss / math.log(2) * len(ids) / val_bytes:.4f} |")


fit() if cfg.mode == "fit" else bpb()

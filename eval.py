"""
Evaluate a trained run or GPT-2: HellaSwag, multiple-choice files of your own, bits per byte of text.

    python eval.py --out_dir=out-gpt2 --tasks=hellaswag                 # after data/hellaswag/prepare.py
    python eval.py --init_from=gpt2 --tasks=hellaswag,my_quiz.jsonl --limit=500
    python eval.py --out_dir=out-shakespeare-char --tasks=val,text:notes.txt
    torchrun --standalone --nproc_per_node=8 eval.py --init_from=gpt2-xl --tasks=hellaswag

Tasks (docs/evaluation.md): hellaswag (its --split), a .jsonl file of {"context", "choices", "label"}
lines, val or train (bits per byte of that split of the run's dataset, or of --dataset), text:FILE (bits
per byte of a text file). Prints a table, then one JSON line mapping each task to its figures.
"""

from gptkit import errors

errors.install()  # first: Ctrl-C while the rest loads ends in one line and status 130

from gptkit import configurator  # noqa: E402
from gptkit import keys  # noqa: E402
from gptkit.configurator import Key  # noqa: E402

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("init_from", "resume", "resume (a run in out_dir), a GPT-2 name (gpt2 ... gpt2-xl), or a Hugging Face folder or "
        "hub id (Llama, Qwen2, Qwen3, Mistral, GPT-2)"),
    Key("out_dir", "out", "the run folder, with init_from=resume"),
    keys.CKPT_NAME,
    keys.LORA_BASE,
    Key("tasks", "hellaswag", "comma-separated: hellaswag, FILE.jsonl (multiple choice), val, train, text:FILE "
        "(bits per byte)"),
    Key("split", "val", "HellaSwag's split: val or train (test has no labels)", choices=("val", "train", "test")),
    Key("dataset", "", "the prepared dataset (a name under data/ or a folder) of the val and train tasks "
        "(default: the run's)"),
    Key("limit", 0, "score only the first N examples of each multiple-choice task and the first N windows of "
        "block_size tokens of each text (0: all)", min=0),
    Key("acc_norm_chars", False, "also show lm-evaluation-harness's acc_norm: the total loss per character of "
        "the choice (the JSON line always has it)"),
    Key("batch_tokens", 4096, "about this many tokens per forward pass (an example's choices go together)", min=1),
    Key("device", "auto", "auto, cpu, cuda, cuda:1, mps"),
    Key("dtype", "auto", "auto, float32, bfloat16 or float16"),
]
cfg = configurator.configure(KEYS)

# the heavy imports come after the knobs so that --help and config errors answer at once
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from gptkit import benchmarks, dataset, evaluation, loading, runtime  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402

# -----------------------------------------------------------------------------
# setup: the model, then every task read and checked before any is scored
specs = [s.strip() for s in cfg.tasks.split(",") if s.strip()]
if not specs:
    raise UserError("tasks is empty; give e.g. --tasks=hellaswag or --tasks=my_quiz.jsonl,val", status=USAGE)
rt = runtime.setup(cfg.device, cfg.dtype, compile=False)
dist, plan = rt.dist, rt.plan
model, tok, desc = loading.load_for_inference(cfg.init_from, cfg.out_dir, cfg.ckpt_name, plan.device,
                                              lora_base=cfg.lora_base)
block = model.config.block_size
if dist.master:
    print(f"evaluating {desc}; {rt.why}", file=sys.stderr)


def dataset_folder():
    """The folder of the val/train tasks: --dataset, else the one the run trained on."""
    if cfg.dataset:
        return cfg.dataset if os.path.isdir(cfg.dataset) else os.path.join(dataset.data_root(), cfg.dataset)
    folder = loading.run_dataset(cfg.out_dir, cfg.ckpt_name) if cfg.init_from == "resume" else None
    if folder is None:
        raise UserError("the val and train tasks need a prepared dataset: give --dataset=NAME (a folder under data/ "
                        "or a path) in the model's vocabulary", status=USAGE)
    return folder


def load(spec):
    if spec in ("val", "train"):
        folder = dataset_folder()
        return benchmarks.load_split(folder, spec, tok, f"the {spec} split of {folder}",
                                     max_tokens=cfg.limit * block + 1 if cfg.limit else 0)
    if spec.startswith("text:"):
        return benchmarks.load_text(spec[len("text:"):], tok)
    return benchmarks.load_choices(spec, tok, block, cfg.split, cfg.limit)


tasks = [load(spec) for spec in specs]

# -----------------------------------------------------------------------------
# score
results, seconds = {}, {}
for spec, task in zip(specs, tasks):
    t0 = time.perf_counter()
    if isinstance(task, benchmarks.ChoiceSet):
        results[spec] = evaluation.multiple_choice(model, task, plan, dist, cfg.batch_tokens)
    else:
        results[spec] = evaluation.bits_per_byte(model, task, plan, dist, cfg.batch_tokens, cfg.limit)
    runtime.synchronize(plan.device)
    seconds[spec] = time.perf_counter() - t0

# -----------------------------------------------------------------------------
# report: a table for people, then one JSON line for programs
if dist.master:
    choice_cols = ["acc", "acc_norm"] + (["acc_norm_chars"] if cfg.acc_norm_chars else [])
    header = ["task", "n"] + choice_cols + ["bits/byte", "ppl", "time"]
    table = [header]
    for spec in specs:
        r = results[spec]
        if "acc" in r:
            n, per_s = r["n"], f"{r['n'] / seconds[spec]:,.1f} examples/s"
            cells = [f"{r[k]:.4f}" for k in choice_cols] + ["-", "-"]
        else:
            n, per_s = r["tokens"], f"{r['tokens'] / seconds[spec]:,.0f} tokens/s"
            cells = ["-"] * len(choice_cols) + [f"{r['bpb']:.4f}", f"{r['ppl']:.3f}"]
        table.append([spec, f"{n:,}"] + cells + [f"{seconds[spec]:.1f} s ({per_s})"])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    print(json.dumps(results))
runtime.shutdown(dist)

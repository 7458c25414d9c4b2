"""
The architecture ablation of docs/architecture.md: the CPU recipe with GPT-2's network, each architecture
option alone, and combinations, compared at fixed steps and at a fixed training time.

    python experiments/ablation.py                               # val loss at the last 3 evaluations of 600 iterations
    python experiments/ablation.py --mode=time                   # ms/iter (bench.py), then val loss of a budget_s run
    python experiments/ablation.py --iters=330 --eval_every=110  # docs/architecture.md's table (and --mode=time --rounds=3)
    python experiments/ablation.py --only=rope --out_root=out-abl-rope  # only the variants with "rope" in their name

Everything but the network is the recipe's (data, seed, batch, optimizer), with the learning-rate
schedule it had when it used GPT-2's block (tuned for that block); the architecture keys are reset
to GPT-2's first, so each row changes only what it names. The last row is the recipe as it is now
(its block and learning rates) on the same schedule.

Losses at fixed steps are deterministic (seeded data and initialisation), so those runs may share
the CPU: they take one thread each, `jobs` at a time (the recipe's row at 330 iterations gives a
two-thread train.py run's 1.8419 exactly). The time mode measures speed and must run alone: every
variant's step is timed by bench.py in turns, `rounds` times, and the fastest sets how many
iterations fit in budget_s; that run's val loss is the figure. Each variant trains in its own run
folder under out_root (an existing run there is refused unless overwrite=True); each row is added
to out_root/ablation.jsonl and the table is printed from that file at the end, so runs with --only
add rows to one table.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # train.py and bench.py live there
from gptkit import configurator
from gptkit.configurator import Key
from gptkit import errors, keys

errors.install()

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("mode", "steps", "steps: val loss at fixed iterations; time: at a fixed training time",
        choices=("steps", "time")),
    Key("recipe", "config/train_shakespeare_char_cpu.py", "the training config every run starts from"),
    Key("iters", 600, "steps mode: the schedule's length", min=1),
    Key("eval_every", 100, "steps mode: evaluate every this many iterations; the table shows the last three", min=1),
    Key("budget_s", 20.0, "time mode: seconds of training steps each variant gets", above=0.0),
    Key("rounds", 5, "time mode: timed runs of every variant, taking turns; the fastest sets the iterations", min=1),
    Key("only", "", "run only the variants whose name contains this"),
    Key("jobs", 2, "steps mode: runs at a time, one thread each", min=1),
    Key("out_root", "out-ablation", "run folders and ablation.jsonl go here"),
    Key("overwrite", False, "run again the variants whose run folder under out_root holds a run, deleting it"),
]
cfg = configurator.configure(KEYS, script="experiments/ablation.py")

import json
import statistics
import subprocess
from concurrent.futures import ThreadPoolExecutor

from gptkit import fileio, runs
from gptkit.errors import UserError

# GPT-2's network (every architecture key at its default) and the learning rates the recipe had for
# it, whatever the recipe sets now
GPT2 = [f"--{k.name}={k.default}" for k in keys.pick(keys.OPTION_KEYS)] + [
    "--learning_rate=3e-3", "--min_lr=3e-4", "--warmup_iters=50", "--muon_lr=0.02"]
VARIANTS = {
    "GPT-2: learned positions, LayerNorm, GELU": [],
    "pos_emb=rope": ["--pos_emb=rope"],
    "norm=rmsnorm": ["--norm=rmsnorm"],
    "qk_norm=True": ["--qk_norm=True"],
    "mlp=relu2": ["--mlp=relu2"],
    "mlp=swiglu": ["--mlp=swiglu"],
    "tie_embeddings=False": ["--tie_embeddings=False"],
    "logit_softcap=15": ["--logit_softcap=15.0"],
    "n_kv_head=2": ["--n_kv_head=2"],
    "rope + qk_norm": ["--pos_emb=rope", "--qk_norm=True"],
    "rope + qk_norm + relu2": ["--pos_emb=rope", "--qk_norm=True", "--mlp=relu2"],
    "rope + qk_norm + rmsnorm + swiglu (Qwen3)": ["--pos_emb=rope", "--qk_norm=True", "--norm=rmsnorm", "--mlp=swiglu"],
    "the recipe: Qwen3's block, learning_rate=6e-3, warmup_iters=25":
        ["--pos_emb=rope", "--qk_norm=True", "--norm=rmsnorm", "--mlp=swiglu", "--learning_rate=6e-3", "--min_lr=6e-4",
         "--warmup_iters=25"],
}
RESULTS = os.path.join(cfg.out_root, "ablation.jsonl")


def out_dir(args):
    return os.path.join(cfg.out_root, f"{cfg.mode}-{'_'.join(a.strip('-') for a in args) or 'gpt2'}")


def run(name, script, *args):
    """stdout of one script run on the recipe; a failure becomes one sentence naming the variant."""
    env = dict(os.environ, OMP_NUM_THREADS="1") if cfg.mode == "steps" else None
    p = subprocess.run([sys.executable, os.path.join(ROOT, script), cfg.recipe, *args], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        # the script's own sentence when it has one (a user error), else its last line (a crash)
        lines = [line for line in p.stderr.splitlines() if line.strip()] or ["no output"]
        said = next((line[len("error: "):] for line in lines if line.startswith("error: ")), lines[-1])
        raise UserError(f"{script} failed for the variant '{name}' (exit status {p.returncode}): {said}")
    return p.stdout


def train(name, args, iters, eval_every):
    """One run of `iters` iterations: val loss at every evaluation {iteration: loss}, and the seconds
    train.py took from its start of training to the last evaluation (its metrics' elapsed_s)."""
    folder = out_dir(args)
    run(name, "train.py", *GPT2, *args, f"--max_iters={iters}", f"--lr_decay_iters={iters}",
        f"--eval_interval={eval_every}", f"--out_dir={folder}", "--always_save_checkpoint=False",
        f"--overwrite={cfg.overwrite}")
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {row["iter"]: row["val_loss"] for row in rows if "val_loss" in row}, rows[-1]["elapsed_s"]


def step_ms(name, args):
    """bench.py's ms/iter of the recipe's step with these options (20 steps after a warm-up)."""
    step_args = [a for a in GPT2 + args if not a.startswith(("--min_lr", "--warmup_iters"))]  # not bench.py's keys
    out = run(name, "bench.py", *step_args, "--steps=20", "--repeats=1")
    return json.loads(out.strip().splitlines()[-1])["ms_per_iter"]  # its last line: every figure as JSON


def measure(name, args, ms=None):
    row = dict(mode=cfg.mode, name=name, args=args)
    if cfg.mode == "steps":
        val, _ = train(name, args, cfg.iters, cfg.eval_every)
        row["val"] = {str(it): round(val[it], 4) for it in sorted(val)[-3:]}
    else:
        # the fastest run: other work on the machine only ever adds time, so the minimum is the step's cost
        iters = max(1, int(cfg.budget_s * 1000 / min(ms)))
        # train.py's steps cost more than bench.py's fastest (its logging, evaluations, a loaded
        # machine), so the run's own time is kept beside the budget it was sized for
        val, train_s = train(name, args, iters, eval_every=iters)
        row.update(ms_per_iter=round(min(ms), 1), ms_median=round(statistics.median(ms), 1),
                   budget_s=cfg.budget_s, iters=iters, train_s=round(train_s, 1), val=round(val[iters], 4))
    print(json.dumps(row), flush=True)
    return row


def record(row):
    """Add a row to ablation.jsonl, rewritten whole and atomically (fileio): a killed run loses no row."""
    rows = open(RESULTS).read() if os.path.exists(RESULTS) else ""
    with fileio.atomic_open(RESULTS, "w") as f:
        f.write(rows + json.dumps(row) + "\n")


# -----------------------------------------------------------------------------
# check everything before the first run: the recipe, the variants, and that no run is clobbered
if not os.path.isfile(cfg.recipe):
    raise UserError(f"recipe={cfg.recipe} is not a file; give a training config, e.g. "
                    f"--recipe=config/train_shakespeare_char_cpu.py", status=2)
chosen = [(name, args) for name, args in VARIANTS.items() if cfg.only in name]
if not chosen:
    raise UserError(f"only={cfg.only!r} is in no variant's name; the variants are: {'; '.join(VARIANTS)}", status=2)
runs.check_out_dir(cfg.out_root)
taken = [out_dir(args) for _, args in chosen if runs.checkpoints(out_dir(args))]
if taken and not cfg.overwrite:
    raise UserError(f"{taken[0]} already holds a run{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''}; "
                    f"choose another --out_root, or add --overwrite=True to run those variants again (deleting "
                    f"those runs)", status=2)
if os.path.exists(RESULTS) and not os.path.isfile(RESULTS):
    raise UserError(f"{RESULTS} is not a file; choose another --out_root", status=2)
os.makedirs(cfg.out_root, exist_ok=True)

# -----------------------------------------------------------------------------
# the runs
if cfg.mode == "steps":
    with ThreadPoolExecutor(cfg.jobs) as pool:
        for row in pool.map(lambda v: measure(*v), chosen):
            record(row)
else:
    # the variants take turns, round after round, so a change in the machine's load hits them alike
    ms = {name: [] for name, _ in chosen}
    for _ in range(cfg.rounds):
        for name, args in chosen:
            ms[name].append(step_ms(name, args))
    for name, args in chosen:
        record(measure(name, args, ms[name]))

# -----------------------------------------------------------------------------
# the table: the latest row of each variant and mode
latest = {}
with open(RESULTS) as f:
    for row in map(json.loads, f):
        latest[(row["mode"], row["name"])] = row
steps = {n: r for (m, n), r in latest.items() if m == "steps"}
timed = {n: r for (m, n), r in latest.items() if m == "time"}
its = list(next(iter(steps.values()))["val"]) if steps else []
print("\n| model | " + " | ".join(f"val @ {i}" for i in its)
      + " | ms/iter: fastest (median) | iterations in budget | train.py's time for them | val @ budget |")
print("|---" * (len(its) + 5) + "|")
for name in VARIANTS:
    s, t = steps.get(name), timed.get(name)
    if not s and not t:
        continue
    cells = [f"{s['val'][i]:.3f}" if s and i in s["val"] else "" for i in its]
    cells += [f"{t['ms_per_iter']:.1f} ({t['ms_median']:.1f})", f"{t['iters']} in {t['budget_s']:g} s",
              f"{t['train_s']:.1f} s" if "train_s" in t else "", f"{t['val']:.3f}"] if t else ["", "", "", ""]
    print(f"| {name} | " + " | ".join(cells) + " |")

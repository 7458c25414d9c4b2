"""
The architecture ablation in the README: the CPU recipe with GPT-2's network, each architecture
option alone, and combinations, compared at fixed steps and at a fixed training time.

    python ablation.py                        # val loss at 400/500/600 of a 600-iteration schedule
    python ablation.py --mode=time            # ms/iter (bench.py), then val loss of a budget_s run

Everything but the network is the recipe's (data, seed, batch, optimizer, learning rates); its
architecture keys are reset to GPT-2's first, so each row changes only what it names. Losses at
fixed steps are deterministic (seeded data and initialisation), so those runs may share the CPU;
the time mode measures speed and must run alone. In steps mode the runs take one thread each,
`jobs` at a time (the losses are those of any one-thread run; two threads sum some matmuls in
another order). Each run's figures are appended to out_root/ablation.jsonl and the table is
printed from that file at the end.
"""

import configurator
import errors
from configurator import Key

errors.install()

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("mode", "steps", "steps: val loss at fixed iterations; time: at a fixed training time",
        choices=("steps", "time")),
    Key("recipe", "config/train_shakespeare_char_cpu.py", "the training config every run starts from"),
    Key("iters", 600, "steps mode: the schedule's length (val loss at its last three hundreds)"),
    Key("budget_s", 20.0, "time mode: seconds of training steps each variant gets"),
    Key("only", "", "run only the variants whose name contains this"),
    Key("jobs", 2, "steps mode: runs at a time, one thread each"),
    Key("out_root", "out-ablation", "run folders and ablation.jsonl go here"),
]
cfg = configurator.configure(KEYS)

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

# GPT-2's network, whatever the recipe sets
GPT2 = ["--pos_emb=learned", "--norm=layernorm", "--qk_norm=False", "--mlp=gelu", "--mlp_hidden=0",
        "--n_kv_head=0", "--tie_embeddings=True", "--logit_softcap=0.0"]
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
}
RESULTS = os.path.join(cfg.out_root, "ablation.jsonl")


def run(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1") if cfg.mode == "steps" else None
    p = subprocess.run([sys.executable, script, cfg.recipe, *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{p.stderr[-2000:]}")
    return p.stdout


def train(name, args, iters, eval_every):
    out_dir = os.path.join(cfg.out_root, f"{cfg.mode}-{len(args) and '_'.join(a.strip('-') for a in args) or 'gpt2'}")
    run("train.py", *GPT2, *args, f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--eval_interval={eval_every}",
        f"--out_dir={out_dir}", "--always_save_checkpoint=False")
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return {row["iter"]: row["val_loss"] for row in map(json.loads, f) if "val_loss" in row}


def measure(name, args):
    row = dict(mode=cfg.mode, name=name, args=args)
    if cfg.mode == "steps":
        val = train(name, args, cfg.iters, eval_every=100)
        row["val"] = {str(it): round(val[it], 4) for it in (cfg.iters - 200, cfg.iters - 100, cfg.iters)}
    else:
        bench = json.loads(run("bench.py", *GPT2, *args, "--steps=20", "--repeats=5").strip().splitlines()[-1])
        iters = int(cfg.budget_s * 1000 / bench["ms_per_iter"])
        val = train(name, args, iters, eval_every=iters)
        row.update(ms_per_iter=round(bench["ms_per_iter"], 1), ms_min=round(bench["ms_min"], 1),
                   ms_max=round(bench["ms_max"], 1), budget_s=cfg.budget_s, iters=iters, val=round(val[iters], 4))
    print(json.dumps(row), flush=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")


# -----------------------------------------------------------------------------
# the runs
os.makedirs(cfg.out_root, exist_ok=True)
chosen = [(name, args) for name, args in VARIANTS.items() if cfg.only in name]
with ThreadPoolExecutor(cfg.jobs if cfg.mode == "steps" else 1) as pool:
    list(pool.map(lambda v: measure(*v), chosen))

# -----------------------------------------------------------------------------
# the table: the latest row of each variant and mode
latest = {}
with open(RESULTS) as f:
    for row in map(json.loads, f):
        latest[(row["mode"], row["name"])] = row
steps = {n: r for (m, n), r in latest.items() if m == "steps"}
timed = {n: r for (m, n), r in latest.items() if m == "time"}
its = next(iter(steps.values()))["val"].keys() if steps else []
print("\n| model | " + " | ".join(f"val @ {i}" for i in its) + " | ms/iter (min-max) | iterations in budget | val @ budget |")
print("|---" * (len(its) + 4) + "|")
for name in VARIANTS:
    s, t = steps.get(name), timed.get(name)
    cells = [f"{s['val'][i]:.3f}" if s and i in s["val"] else "" for i in its]
    cells += [f"{t['ms_per_iter']:.1f} ({t['ms_min']:.1f}-{t['ms_max']:.1f})", f"{t['iters']} in {t['budget_s']:g} s",
              f"{t['val']:.3f}"] if t else ["", "", ""]
    print(f"| {name} | " + " | ".join(cells) + " |")

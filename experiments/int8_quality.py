"""
What int8 weights (sample.py --quantize=int8) cost a trained run in quality: its val loss and
perplexity with fp32 and with int8 weights on the same batches, how often the two pick the same
most likely next token, and how often greedy decoding writes the same text.

    python experiments/int8_quality.py --out_dir=out-shakespeare-char-cpu
    python experiments/int8_quality.py --out_dir=out-shakespeare-char-cpu --eval_iters=200 --prompts=50

The prompts are the starts of validation batches' rows; each is continued greedily by both models
for new_tokens tokens. "Same tokens" counts positions where the two agree; once they part, each
continues its own text, so the length of the shared start is reported too.
"""

import os

from gptkit import configurator
from gptkit.configurator import Key
from gptkit import errors

errors.install()

KEYS = [
    Key("out_dir", "out-shakespeare-char-cpu", "the run folder"),
    Key("ckpt_name", "", "which checkpoint of out_dir's run to read (default: the latest)"),
    Key("eval_iters", 100, "validation batches scored", min=1),
    Key("batch_size", 12, "rows per validation batch", min=1),
    Key("prompts", 20, "greedy continuations compared", min=1),
    Key("prompt_len", 16, "tokens of each prompt", min=1),
    Key("new_tokens", 200, "tokens generated per prompt", min=1),
    Key("seed", 1337, "seed of the validation batches"),
]
cfg = configurator.configure(KEYS)

import json
import math
import statistics

import torch

from gptkit import checkpoint, loading, quantize
from gptkit.batches import Batches
from gptkit.dataset import data_root
from gptkit.generate import generate

model, tok, desc = loading.load_for_inference("resume", cfg.out_dir, cfg.ckpt_name, "cpu")
int8 = quantize.quantize_int8(model)
dataset = (checkpoint.Store(cfg.out_dir).load(cfg.ckpt_name)[0].get("config") or {}).get("dataset")
T = model.config.block_size
batches = Batches(os.path.join(data_root(), dataset), dataset, T, cfg.batch_size, cfg.seed, "cpu")

losses, top1 = {"fp32": [], "int8": []}, []
with torch.inference_mode():
    for k in range(cfg.eval_iters):
        X, Y = batches.eval_batch("val", k)
        (a, la), (b, lb) = model(X, Y), int8(X, Y)
        losses["fp32"].append(la.item())
        losses["int8"].append(lb.item())
        top1.append((a.argmax(-1) == b.argmax(-1)).float().mean().item())  # the same next token, same context
loss = {k: statistics.mean(v) for k, v in losses.items()}

rows = torch.cat([batches.eval_batch("val", k)[0] for k in range(math.ceil(cfg.prompts / cfg.batch_size))])
prompts = rows[:cfg.prompts, :cfg.prompt_len]
fp32_text = generate(model, prompts, cfg.new_tokens, temperature=0)[:, cfg.prompt_len:]
int8_text = generate(int8, prompts, cfg.new_tokens, temperature=0)[:, cfg.prompt_len:]
same = (fp32_text == int8_text).float().mean().item()
shared = [int((a != b).nonzero()[0]) if (a != b).any() else cfg.new_tokens for a, b in zip(fp32_text, int8_text)]

print(f"{desc}, {dataset}: {cfg.eval_iters} val batches of {cfg.batch_size} x {T} tokens")
for name in ("fp32", "int8"):
    print(f"  {name}: val loss {loss[name]:.4f}, perplexity {math.exp(loss[name]):.3f}")
print(f"  int8 - fp32: {loss['int8'] - loss['fp32']:+.4f} loss ({100 * (math.exp(loss['int8'] - loss['fp32']) - 1):+.2f}% "
      f"perplexity)")
print(f"  the same most likely next token on {100 * statistics.mean(top1):.2f}% of val positions (the same context)")
identical = sum(s == cfg.new_tokens for s in shared)
print(f"  greedy, {cfg.prompts} prompts x {cfg.new_tokens} tokens: {100 * same:.1f}% of positions the same token; "
      f"{identical} of {cfg.prompts} continuations identical; the shared start median "
      f"{statistics.median(shared):.0f} tokens (min {min(shared)})")
print(json.dumps(dict(run=desc, dataset=dataset, val_loss=loss, same_top1=statistics.mean(top1), same_tokens=same,
                      identical=identical, shared_start=shared, prompts=cfg.prompts, new_tokens=cfg.new_tokens)))

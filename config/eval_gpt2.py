# Evaluate OpenAI's gpt2 (124M) on OpenWebText and exit: nanoGPT reports val loss about 3.12
# (OpenWebText is not GPT-2's own WebText, so this is a reference point, not GPT-2's training loss).
#   python data/openwebtext/prepare.py && python train.py config/eval_gpt2.py
batch_size = 8
eval_iters = 500  # 500 * 8 * 1024 = 4M tokens per split
eval_only = True
wandb_log = False
init_from = 'gpt2'
out_dir = 'out-eval-gpt2'  # eval_only writes config.json and metrics.jsonl here, nothing else

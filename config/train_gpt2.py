# GPT-2 small (124M) on OpenWebText, nanoGPT's recipe for one node of 8 A100 40GB GPUs: about 4 days to
# val loss about 2.85 (nanoGPT's figure; OpenAI's GPT-2 124M scores about 3.11 on OpenWebText, see
# config/eval_gpt2.py, but was trained on its own WebText).
#   python data/openwebtext/prepare.py --num_proc=8
#   torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

wandb_log = False  # True (pip install wandb) to follow the curves
wandb_project = 'owt'
wandb_run_name = 'gpt2-124M'

dataset = 'openwebtext'
out_dir = 'out-gpt2'

# 12 sequences * 1024 tokens * 40 micro-steps (5 per GPU on 8 GPUs) = 491,520 tokens per iteration,
# about 0.5M as in the GPT-3 paper's small models
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # none for pretraining
bias = False

# 600,000 iterations * 491,520 tokens = about 300B tokens
max_iters = 600000
lr_decay_iters = 600000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 1e-1

eval_interval = 1000
eval_iters = 200
log_interval = 10

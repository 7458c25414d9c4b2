# The GPU recipe for a character-level Shakespeare model: 6 layers, 6 heads, 384 wide, context of
# 256 characters, about 10.7M parameters. nanoGPT reaches val loss about 1.47 with these settings
# in about 3 minutes on an A100.
#   python data/shakespeare_char/prepare.py && python train.py config/train_shakespeare_char.py

out_dir = 'out-shakespeare-char'
eval_interval = 250  # small data: it overfits, so keep an eye on val loss
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # save only when val loss improves

wandb_log = False
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'

dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a small model tolerates a high rate
max_iters = 5000
lr_decay_iters = 5000  # usually max_iters
min_lr = 1e-4  # learning_rate / 10
beta2 = 0.99  # a little higher than 0.95: few tokens per step
warmup_iters = 100

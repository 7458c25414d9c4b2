# Supervised fine-tuning of GPT-2 on GSM8K's worked solutions: the first stage of the GSM8K recipe in
# docs/rl.md (rl.py config/rl_gsm8k.py is the second). Sized for one GPU; not measured here (no GPU).
#   python data/gsm8k/prepare.py                                   # train.jsonl, test.jsonl, sft.jsonl
#   python data/chat/prepare.py data/gsm8k/sft.jsonl --out=data/gsm8k_chat
#   python train.py config/sft_gsm8k.py
# The solutions end "The answer is 72.", in the chat template the data is written in; the loss counts the
# assistant's tokens only.

out_dir = 'out-sft-gsm8k'
dataset = 'gsm8k_chat'
init_from = 'gpt2'  # or gpt2-medium (355M): small models solve few of these problems either way

eval_interval = 100
eval_iters = 20
log_interval = 10
always_save_checkpoint = False  # keep the best val loss: 7,473 problems overfit within a few epochs

# 16 x 4 x 512 = 32,768 tokens per step; a problem and its solution take about 200 tokens
batch_size = 16
gradient_accumulation_steps = 4
block_size = 512

learning_rate = 3e-5
max_iters = 600  # about 5 epochs
warmup_iters = 30
lr_decay_iters = 600
min_lr = 3e-6
weight_decay = 0.0
dropout = 0.0

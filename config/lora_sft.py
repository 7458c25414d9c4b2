# Supervised fine-tuning (SFT) with LoRA: config/sft_gpt2.py's recipe (the loss on the assistant's replies
# only, the chat template kept with the run) on GPT-2 medium, with every weight frozen and rank-8 adapters
# on all of the blocks' matrices, which instruction tuning needs more than the attention alone (QLoRA,
# Dettmers et al. 2023). The adapters and their optimizer state are 38 MB where full fine-tuning keeps 5.7 GB.
#   python data/chat/prepare.py conversations.jsonl
#   python train.py config/lora_sft.py
#   python chat.py --out_dir=out-lora-sft

out_dir = 'out-lora-sft'
dataset = 'chat'
init_from = 'gpt2-medium'

lora_rank = 8
lora_alpha = 16
lora_dropout = 0.05
lora_targets = 'all-linear'

eval_interval = 100
eval_iters = 40
log_interval = 10
always_save_checkpoint = False  # keep the checkpoint with the best val loss: small SFT sets overfit

# 8 x 8 x 1024 = 65,536 tokens per step, as config/sft_gpt2.py
batch_size = 8
gradient_accumulation_steps = 8
block_size = 1024

learning_rate = 3e-4  # adapters learn from zero: ten times full fine-tuning's 3e-5
max_iters = 1000
warmup_iters = 50
lr_decay_iters = 1000
min_lr = 3e-5
weight_decay = 0.0
dropout = 0.0

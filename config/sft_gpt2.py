# Supervised fine-tuning (SFT): teach GPT-2 to converse. The loss counts only the assistant's replies
# and their end-of-turn marker (data/chat/prepare.py writes the masks), so the model learns to answer
# and to stop, not to write the user's lines. The chat template travels with the run, and chat.py
# talks to it in that template.
#   python data/chat/prepare.py conversations.jsonl      # or --dataset=HuggingFaceTB/smol-smoltalk (online)
#   python train.py config/sft_gpt2.py
#   python chat.py --out_dir=out-sft
# init_from: gpt2 (124M) or gpt2-medium/-large/-xl (downloaded once), or any local Hugging Face GPT-2
# folder; a run of this project becomes one with python export.py --out_dir=RUN (then --init_from=RUN/hf).
# What it costs: 1,000 steps of 65,536 tokens through 124M parameters, ~5 x 10^16 FLOPs, a job for a GPU
# (train.py prints its estimate for your machine before the first step); checkpoints of 1.5 GB. On a
# CPU, config/sft_gpt2_cpu.py takes minutes.

out_dir = 'out-sft'
dataset = 'chat'
init_from = 'gpt2'

eval_interval = 100
eval_iters = 40
log_interval = 10
always_save_checkpoint = False  # keep the checkpoint with the best val loss: small SFT sets overfit

# 8 x 8 x 1024 = 65,536 tokens per step (about a third of them assistant tokens in typical chat data)
batch_size = 8
gradient_accumulation_steps = 8
block_size = 1024  # GPT-2's whole context: chat.py keeps as much of the conversation

# a small learning rate: the weights already know the language, SFT teaches the format
learning_rate = 3e-5
max_iters = 1000
warmup_iters = 50
lr_decay_iters = 1000
min_lr = 3e-6
weight_decay = 0.0
dropout = 0.0

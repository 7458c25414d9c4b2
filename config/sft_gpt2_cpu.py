# Chat fine-tuning sized for a laptop CPU: config/sft_gpt2.py's GPT-2 124M and template, 1,024 tokens a
# step (4 sequences of 256) instead of 65,536, for 30 steps: a smoke-sized fine-tune, to see the whole
# path work on your conversations in minutes (2 min 46 s on a 2-core AMD EPYC); a chat model worth talking to
# takes the full recipe on a GPU. train.py prints what the run will take on your machine before it starts.
#   python data/chat/prepare.py conversations.jsonl      # a few dozen conversations are enough
#   python train.py config/sft_gpt2_cpu.py
#   python chat.py --out_dir=out-sft-cpu

out_dir = 'out-sft-cpu'
dataset = 'chat'
init_from = 'gpt2'

eval_interval = 30  # at the start and the end
eval_iters = 4  # x 4 sequences of 256 tokens per split: a 124M forward pass takes seconds on a CPU
log_interval = 1  # each step takes seconds: a line for every one
always_save_checkpoint = False  # keep the checkpoint with the best val loss (1.5 GB: ckpt.pt and best.pt
                                # of the same evaluation are one file)

batch_size = 4
gradient_accumulation_steps = 1
block_size = 256  # the conversations are cut into windows this long; chat.py keeps as much of a conversation

# fewer, larger steps than the full recipe's: the template has to come across in 30 of them
learning_rate = 1e-4
max_iters = 30
warmup_iters = 3
lr_decay_iters = 30
min_lr = 1e-5
weight_decay = 0.0
dropout = 0.0

device = 'cpu'
compile = False  # a first compile costs minutes on a CPU and gains little here

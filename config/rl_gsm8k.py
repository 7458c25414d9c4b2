# Reinforcement learning on GSM8K (docs/rl.md): the supervised run of config/sft_gsm8k.py samples 16
# solutions of each problem, and those whose last number is the answer are pushed up. The prompts are
# asked in the run's chat template, and a completion ends with its end-of-turn marker. Sized for one GPU
# (torchrun shares the rollouts out over more); not measured here (no GPU).
#   python rl.py config/rl_gsm8k.py
#   torchrun --standalone --nproc_per_node=8 rl.py config/rl_gsm8k.py

init_from = 'out-sft-gsm8k'
out_dir = 'out-rl-gsm8k'
prompts = 'data/gsm8k/train.jsonl'
val_prompts = 'data/gsm8k/test.jsonl'
answer_match = 'last_number'  # the solution's last number is its answer ("The answer is 72.")

# 8 x 2 = 16 problems x 16 completions = 256 rollouts per step, each at most 256 tokens
batch_prompts = 8
gradient_accumulation_steps = 2
group_size = 16
max_new_tokens = 256
temperature = 1.0

learning_rate = 1e-5  # a tenth of the SFT's peak or less: the policy gradient is noisy
decay_lr = False
weight_decay = 0.0
max_iters = 300  # about 4,800 problems: most of the training set once

eval_interval = 25
eval_prompts = 400  # of the 1,319 test problems: pass@1 (greedy) and pass@8 each evaluation
eval_samples = 8

dtype = 'bfloat16'

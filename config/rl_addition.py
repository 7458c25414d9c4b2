# Reinforcement learning on the generated 3-digit additions (docs/rl.md): from a supervised run stopped
# early, right on about two thirds of the held-out problems, reward exact answers until it is right on
# most. The problems, their format and the held-out set are the starting run's.
#   python train.py config/train_addition.py --max_iters=110 --eval_iters=8 --out_dir=out-addition-110
#   python rl.py config/rl_addition.py
#   python sample.py --out_dir=out-rl-addition --start="123+456=" --temperature=0 --max_new_tokens=5 --stop="('\n',)"

init_from = 'out-addition-110'
out_dir = 'out-rl-addition'

# 32 problems x 8 completions = 256 rollouts per step, each at most the longest answer and its newline
batch_prompts = 32
group_size = 8
gradient_accumulation_steps = 1
temperature = 1.0

# AdamW moves every weight by about the learning rate at each step, whatever the gradient's size, and a
# policy gradient is mostly noise: 1e-3 undid the supervised model within 20 steps, 3e-4 improves it
learning_rate = 3e-4
decay_lr = False
weight_decay = 0.0
max_iters = 100

eval_interval = 20
eval_prompts = 2048  # the first 2,048 held-out problems: the ones train.py scored with eval_iters=8
eval_samples = 8

device = 'cpu'  # a model this small gains nothing from a GPU

# Teach a GPT to add: the "Let's build GPT" lesson's exercise. 3-digit + 3-digit problems written
# "123+456=975" (the sum's digits least significant first, the order the carries are worked out in),
# drawn fresh for every batch by gptkit/arithmetic.py: nothing to prepare. The loss counts only the answer.
#   python train.py config/train_addition.py          # >= 99% exact match on 10,240 held-out problems
#   python train.py config/train_addition.py --digits=5 --max_iters=...   (docs/addition.md: the measured recipes)
#   python sample.py --out_dir=out-addition --start="123+456=" --temperature=0 --max_new_tokens=8 --stop="('\n',)"

out_dir = 'out-addition'
dataset = 'addition'  # or subtraction, multiplication (gptkit/arithmetic.py)
digits = 3
reverse = True
eval_interval = 250  # at the start and the end: each evaluation decodes 20,480 problems
eval_iters = 40  # x batch_size = 10,240 held-out problems (and as many training ones)
log_interval = 50
always_save_checkpoint = False

gradient_accumulation_steps = 1
batch_size = 256
block_size = 32  # a 3-digit problem takes 12 positions; 32 fits operands of up to 9 digits

n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0  # every batch is new problems: nothing to overfit

# Muon for the block matrices: 99.9% on held-out problems after 150 steps, where AdamW alone
# (lr 1e-3) needs about 500 (measured here; docs/addition.md)
optimizer = 'muon'
muon_lr = 0.02
learning_rate = 3e-3
max_iters = 250
lr_decay_iters = 250
min_lr = 3e-4
beta2 = 0.99
warmup_iters = 30

device = 'cpu'  # a model this small gains nothing from a GPU
compile = False

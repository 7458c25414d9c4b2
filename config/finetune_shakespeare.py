# Fine-tune GPT-2 XL (1.5B) on tiny-shakespeare in GPT-2's BPE (nanoGPT's recipe: minutes on one A100).
# On a smaller GPU or a laptop use --init_from=gpt2 (124M). Then: python sample.py --out_dir=out-shakespeare,
# and python export.py --out_dir=out-shakespeare to take it to transformers.
#   python data/shakespeare/prepare.py && python train.py config/finetune_shakespeare.py
# The architecture comes from the weights (setting n_layer etc. to something else is refused);
# dropout and a shorter block_size can be chosen here.

out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-gpt2'

dataset = 'shakespeare'
init_from = 'gpt2-xl'  # or gpt2, gpt2-medium, gpt2-large, or a local Hugging Face folder

always_save_checkpoint = False  # keep only checkpoints that improve val loss: it overfits quickly

# 1 * 32 * 1024 = 32,768 tokens per iteration; tiny-shakespeare is about 300K tokens, so an epoch is ~9 iterations
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# a small constant learning rate: the weights are already good
learning_rate = 3e-5
decay_lr = False

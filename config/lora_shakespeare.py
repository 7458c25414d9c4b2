# LoRA fine-tuning of GPT-2 medium (355M) on tiny-shakespeare in GPT-2's BPE (docs/lora.md): every weight
# stays frozen and a rank-8 update trains beside each block's query/key/value projection (0.79M
# parameters). The whole process peaks at 3.5 GB on a CPU in fp32, where full fine-tuning's weights,
# gradients and AdamW moments alone take 5.7 GB, and each checkpoint is ~9 MB of adapters and their AdamW
# moments, not 4.3 GB.
#   python data/shakespeare/prepare.py && python train.py config/lora_shakespeare.py
#   python sample.py --out_dir=out-lora-shakespeare
#   python export.py --out_dir=out-lora-shakespeare               # the merged model, as GPT2LMHeadModel
#   python export.py --out_dir=out-lora-shakespeare --peft=True   # the adapters alone, for peft.PeftModel
# The checkpoint names its base (init_from) and keeps a checksum of it: sample.py, export.py and resume
# load the base from there and refuse one that is missing or has changed.

out_dir = 'out-lora-shakespeare'
eval_interval = 10
eval_iters = 20
always_save_checkpoint = False  # keep the adapters with the best val loss: a small set overfits

dataset = 'shakespeare'
init_from = 'gpt2-medium'  # or gpt2, gpt2-large, gpt2-xl, a local Hugging Face folder or a run of this project

lora_rank = 8
lora_alpha = 16  # the update scaled by alpha / rank = 2
lora_dropout = 0.05
lora_targets = 'c_attn'  # PEFT's default for GPT-2; 'all-linear' adapts every block matrix (4x the parameters)

# 1 * 32 * 512 = 16,384 tokens per iteration; tiny-shakespeare is about 300K tokens, so an epoch is ~18 iterations.
# One sequence per micro-step: the activations are most of a LoRA run's memory (peak 3.5 GB at 1 x 512, 8.4 GB
# at 4 x 512, at the same tokens per second: GPT-2 medium's shape, 2-core AMD EPYC, fp32; docs/lora.md)
batch_size = 1
gradient_accumulation_steps = 32
block_size = 512
max_iters = 60

# adapters start at zero and need a larger step than full fine-tuning's (3e-5 in finetune_shakespeare.py)
learning_rate = 1e-3
warmup_iters = 5
lr_decay_iters = 60
min_lr = 1e-4
weight_decay = 0.0

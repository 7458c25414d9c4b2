"""
Measured speed of training and generation, honestly timed: warm-up excluded, the device
synchronised around timed regions, the median of several runs. A readable table, then one JSON
line with every figure.

    python bench.py                                   # training step, GPT-2 124M shape
    python bench.py --mode=generate                   # decoding speed
"""

import configurator
from configurator import Key

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("mode", "train", "train: the training step; generate: decoding speed", choices=("train", "generate")),
    # model shape (GPT-2 124M by default)
    Key("n_layer", 12, "transformer blocks"),
    Key("n_head", 12, "attention heads"),
    Key("n_embd", 768, "embedding width"),
    Key("block_size", 1024, "context length"),
    Key("vocab_size", 50304, "vocabulary size"),
    Key("bias", False, "biases in Linear and LayerNorm layers"),
    # system
    Key("device", "auto", "auto, cpu, cuda, mps"),
    Key("dtype", "auto", "auto, float32, bfloat16 or float16"),
    Key("compile", None, "torch.compile (default: on for CUDA, off elsewhere)", type=bool),
    Key("seed", 1337, "random seed"),
    Key("warmup", 2, "untimed runs first"),
    Key("repeats", 5, "timed runs; the median is reported"),

    # --- training-mode keys ---

    # --- generation-mode keys ---

]
cfg = configurator.configure(KEYS)


# -----------------------------------------------------------------------------
# training step


def bench_train():
    raise NotImplementedError("training benchmark: being written")


# -----------------------------------------------------------------------------
# generation


def bench_generate():
    raise NotImplementedError("generation benchmark: being written")


# -----------------------------------------------------------------------------

if __name__ == "__main__":
    bench_train() if cfg.mode == "train" else bench_generate()

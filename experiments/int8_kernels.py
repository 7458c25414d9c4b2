"""
Which int8 kernels make a CPU decode step faster: every Linear layer and the head of GPT-2 124M
multiplied by one vector (batch 1), in fp32 and with each int8 path PyTorch and torchao offer, in
eager mode as sample.py runs them. Why gptkit/quantize.py uses PyTorch's dynamic int8 Linear.

    python experiments/int8_kernels.py                 # the paths of the installed PyTorch (and torchao, if installed)
    python experiments/int8_kernels.py --threads=1

Each path runs the 49 products in turn; the median of `repeats` passes is reported with its spread.
"""

import sys

from gptkit import configurator
from gptkit.configurator import Key
from gptkit import errors

errors.install()

KEYS = [
    Key("threads", 0, "CPU threads (0: torch's default)"),
    Key("repeats", 20, "timed passes per path", min=1),
    Key("n_embd", 768, "width (768: GPT-2 124M)"),
    Key("n_layer", 12, "blocks"),
    Key("vocab_size", 50257, "rows of the head"),
]
cfg = configurator.configure(KEYS)

import copy
import statistics
import time
import warnings

import torch
import torch.nn as nn

if cfg.threads:
    torch.set_num_threads(cfg.threads)
C = cfg.n_embd
shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * cfg.n_layer + [(C, cfg.vocab_size)]  # (in, out)
torch.manual_seed(0)
fp32 = nn.ModuleList([nn.Linear(i, o) for i, o in shapes]).eval()
paths = {"fp32": fp32}

warnings.simplefilter("ignore")
from gptkit.quantize import quantize_int8
paths["int8 dynamic (torch.ao, gptkit.quantize)"] = quantize_int8(fp32)


class Int8PackMM(nn.Module):
    """PyTorch's weight-only int8 kernel: weights int8 with a scale per row, the input in fp32."""

    def __init__(self, linear):
        super().__init__()
        w = linear.weight.detach()
        self.scale = w.abs().amax(dim=1) / 127
        self.w = (w / self.scale[:, None]).round().to(torch.int8)
        self.b = linear.bias.detach()

    def forward(self, x):
        y = torch.ops.aten._weight_int8pack_mm(x.view(-1, x.size(-1)), self.w, self.scale)  # takes 2-D inputs
        return y.view(*x.shape[:-1], -1) + self.b


paths["int8 weight-only (aten._weight_int8pack_mm)"] = nn.ModuleList([Int8PackMM(m) for m in fp32])
try:
    import torchao
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    for name, config in (("Int8WeightOnlyConfig", Int8WeightOnlyConfig()),
                         ("Int8DynamicActivationInt8WeightConfig", Int8DynamicActivationInt8WeightConfig())):
        m = copy.deepcopy(fp32)
        quantize_(m, config)
        paths[f"torchao {torchao.__version__} {name}"] = m
except ImportError:
    print("torchao is not installed: its paths are left out", file=sys.stderr)

xs = {n: torch.randn(1, 1, n) for n in {i for i, _ in shapes}}
print(f"{len(shapes)} products of one vector (GPT-2 {C}-wide, {cfg.n_layer} blocks + head), "
      f"{torch.get_num_threads()} threads, torch {torch.__version__}; ms per pass, median (min-max) of {cfg.repeats}")
with torch.inference_mode():
    for name, layers in paths.items():
        def one_pass():
            for layer, (i, _) in zip(layers, shapes):
                layer(xs[i])
        for _ in range(3):
            one_pass()
        times = []
        for _ in range(cfg.repeats):
            t0 = time.perf_counter()
            one_pass()
            times.append(1e3 * (time.perf_counter() - t0))
        print(f"  {name:<58} {statistics.median(times):8.2f} ({min(times):.2f}-{max(times):.2f})", flush=True)

"""
Int8 weights for decoding on a CPU: a copy of a GPT whose Linear layers and output head hold int8
weights and multiply with PyTorch's int8 CPU kernels, about 4x fewer bytes streamed per token.

Decoding one token multiplies a vector by every weight, so its speed is the speed at which the
weights can be read. The kernels are PyTorch's dynamically quantized Linear (the fbgemm / x86 engine
on x86, QNNPACK on ARM): weights int8 with one scale per output row, and each input quantized to int8
on the fly (one scale per call), so the product runs on int8 dot-product instructions (VNNI on
AVX-512 CPUs). That module is marked deprecated in favour of torchao, but on a CPU without
torch.compile torchao's int8 paths (Int8WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig,
torchao 0.18) ran 2x slower than fp32, and PyTorch's weight-only int8 kernel (aten._weight_int8pack_mm)
1.4x slower, where this one ran 6.8x faster (a GPT-2 124M decode step's products, 2-core AMD EPYC,
AVX-512: experiments/int8_kernels.py). The quality cost (the inputs are rounded too) is in
docs/cpu-inference.md.
"""

import copy
import warnings

import torch
import torch.nn as nn

from gptkit.errors import USAGE, UserError

CHOICES = ("none", "int8")


def check_supported(device, dtype="float32"):
    """Raise a sentence where int8 decoding cannot run: a device other than the CPU, a PyTorch without
    the dynamic quantized Linear or a quantized engine, or a compute dtype other than float32."""
    kind = torch.device(device).type
    if kind != "cpu":
        raise UserError(f"--quantize=int8 needs a CPU (its int8 kernels are PyTorch's CPU ones) but the device is "
                        f"{device}; use --device=cpu, or leave quantize off on a GPU", status=USAGE)
    if not hasattr(getattr(torch.ao, "quantization", None), "quantize_dynamic"):
        raise UserError(f"--quantize=int8 needs PyTorch's dynamic int8 Linear, which torch {torch.__version__} no "
                        f"longer has; leave quantize off, or use a GGUF export (export.py --format=gguf) in llama.cpp",
                        status=USAGE)
    if all(engine == "none" for engine in torch.backends.quantized.supported_engines):
        raise UserError("--quantize=int8 needs PyTorch's quantized CPU kernels (fbgemm, x86 or QNNPACK), which this "
                        "build of PyTorch lacks; leave quantize off", status=USAGE)
    if dtype != "float32":
        raise UserError(f"--quantize=int8 computes in float32 around its int8 products, so dtype={dtype} does not "
                        f"apply; leave dtype unset (or float32)", status=USAGE)


def quantize_int8(model):
    """A copy of model (in eval mode) whose nn.Linear layers, the output head included, are int8
    dynamically quantized Linear layers. model itself is left unchanged; the copy shares its
    embeddings and norms with it (nothing is copied that is not converted), so it is for inference:
    training model changes those in the copy too."""
    check_supported(next(model.parameters()).device)
    # deepcopy with every parameter and buffer mapped to itself: new modules, the same tensors
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    q = copy.deepcopy(model, shared).eval()
    with warnings.catch_warnings():  # the deprecation notices of torch.ao, said once in the module docstring
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        torch.ao.quantization.quantize_dynamic(q, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
                                               dtype=torch.qint8, inplace=True)
    return q


def for_decoding(model, quantize):
    """The model the scripts decode with: model itself for quantize='none', its int8 copy for 'int8'."""
    if quantize not in CHOICES:
        raise UserError(f"quantize={quantize!r} is not one of {', '.join(CHOICES)}", status=USAGE)
    return quantize_int8(model) if quantize == "int8" else model

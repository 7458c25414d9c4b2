"""
Where and how the scripts run: device and dtype choice, the per-device plan of CUDA-only features,
distributed (torchrun) setup, peak FLOPs for MFU, and the one-sentence exit for user errors.
"""

import contextlib
import os
import sys
import time
from dataclasses import dataclass

import torch


def fail(sentence, status=1):
    """Stop with one sentence on stderr and a non-zero exit: for things a user can fix."""
    # once per machine under torchrun: a node-local problem (a missing file on node 2) still shows
    # in that node's output, while a single-node run prints it once
    if int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))) == 0:
        print(f"error: {sentence}", file=sys.stderr, flush=True)
    sys.exit(status)


# -----------------------------------------------------------------------------
# device and dtype

def pick_device(requested="auto"):
    """Return (device string, reason)."""
    if requested and requested != "auto":
        kind = requested.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            fail(f"device={requested} was asked for but CUDA is not available here; use --device=cpu or leave device unset")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            fail(f"device={requested} was asked for but MPS is not available here; use --device=cpu or leave device unset")
        if kind not in ("cuda", "mps", "cpu", "xpu"):
            fail(f"device={requested} is not a device this tool knows; use cuda, mps or cpu")
        return requested, "as asked"
    if torch.cuda.is_available():
        return "cuda", "CUDA is available"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps", "Apple MPS is available (no CUDA)"
    return "cpu", "no CUDA or MPS found"


def pick_dtype(device_type, requested="auto"):
    """Return (dtype name, reason)."""
    if requested and requested != "auto":
        if requested not in ("float32", "bfloat16", "float16"):
            fail(f"dtype={requested} is not supported; use float32, bfloat16 or float16")
        if device_type == "mps" and requested == "float16":
            fail("dtype=float16 needs a gradient scaler, which this tool does not use on MPS; use bfloat16 or float32")
        return requested, "as asked"
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bfloat16", "the GPU supports bf16 (no loss scaling needed)"
        return "float16", "the GPU lacks bf16, so fp16 with a gradient scaler"
    if device_type == "mps":
        return "float32", "mixed precision on MPS is not reliable across macOS versions"
    return "float32", "CPU autocast is slower than fp32 on most CPUs"


@dataclass
class DevicePlan:
    """Every device-specific choice the scripts make, decided in one place so tests can check
    them for any device without having the hardware."""
    device: str
    device_type: str
    dtype: str
    autocast: bool          # run forward passes under torch.autocast
    grad_scaler: bool       # fp16 loss scaling (CUDA only)
    pin_memory: bool        # page-locked host batches with non-blocking copies (CUDA only)
    fused_adamw: bool       # the fused AdamW kernel (CUDA and CPU; not MPS)
    ptdtype: torch.dtype = torch.float32

    def autocast_context(self):
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.ptdtype)


def plan_for(device, dtype):
    device_type = device.split(":")[0]
    cuda = device_type == "cuda"
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    return DevicePlan(
        device=device,
        device_type=device_type,
        dtype=dtype,
        autocast=dtype != "float32",
        grad_scaler=cuda and dtype == "float16",
        pin_memory=cuda,
        # on CPU the fused kernel is far faster than the per-tensor loop (one pass over all tensors)
        fused_adamw=device_type in ("cuda", "cpu"),
        ptdtype=ptdtype,
    )


def seed_everything(seed):
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -----------------------------------------------------------------------------
# distributed

@dataclass
class Dist:
    enabled: bool = False
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def master(self):
        return self.rank == 0


def dist_from_env():
    """torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them this is a single process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    return Dist(
        enabled=True,
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def pick_backend(device_type, requested="auto"):
    """NCCL for CUDA tensors, Gloo for CPU ones; an explicit choice is checked, not trusted."""
    import torch.distributed as tdist
    backend = requested if requested and requested != "auto" else ("nccl" if device_type == "cuda" else "gloo")
    if not tdist.is_available() or not tdist.is_backend_available(backend):
        fail(f"backend={backend} is not available in this PyTorch build; "
             f"use backend=gloo (CPU) or backend=nccl (CUDA), or leave backend=auto")
    if backend == "nccl" and device_type != "cuda":
        fail(f"backend=nccl works only on CUDA devices but this run uses {device_type}; "
             f"use backend=gloo or leave backend=auto")
    return backend


def init_distributed(dist_info, device, backend="auto"):
    """Join the process group; on CUDA each local rank takes its own GPU. Returns the device."""
    import torch.distributed as tdist
    device_type = device.split(":")[0]
    backend = pick_backend(device_type, backend)
    if device_type == "cuda":
        gpus = torch.cuda.device_count()
        if dist_info.local_rank >= gpus:
            fail(f"torchrun started more processes on this machine than the {gpus} GPU(s) it has; "
                 f"use --nproc_per_node={gpus} (one process per GPU)")
        device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(device)
    tdist.init_process_group(backend=backend)
    return device, backend


def all_reduce_mean(values, dist_info):
    """Average a 1-D float tensor over ranks (identity in a single process)."""
    if not dist_info.enabled:
        return values
    import torch.distributed as tdist
    tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    return values / dist_info.world_size


def barrier(dist_info):
    if dist_info.enabled:
        import torch.distributed as tdist
        tdist.barrier()


def shutdown(dist_info):
    if dist_info.enabled:
        import torch.distributed as tdist
        if tdist.is_initialized():
            tdist.destroy_process_group()


# -----------------------------------------------------------------------------
# peak FLOPs, for MFU

# Dense (no sparsity) tensor-core peak in FLOP/s for bf16/fp16, from the vendors' datasheets.
# Matched against torch.cuda.get_device_name(); the first matching entry wins, so keep the more
# specific names first.
GPU_PEAK_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def measured_matmul_flops(device="cpu", n=512, repeats=5):
    """FLOP/s of a square fp32 matmul on this device: the practical ceiling we report MFU
    against where no datasheet figure is known (CPUs, unlisted GPUs)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device, dtype, override=0.0):
    """Return (peak FLOP/s, where the figure comes from)."""
    if override:
        return override, "peak_flops key"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS:
            if key in name:
                # fp32 on tensor cores (TF32) peaks at half the bf16 rate on these parts
                return (flops if dtype != "float32" else flops / 2), f"{name} datasheet"
        return measured_matmul_flops(device, n=4096), f"{name}: measured matmul (not in the datasheet table)"
    if device.startswith("cpu"):
        return measured_matmul_flops("cpu"), "CPU: measured fp32 matmul"
    return None, f"unknown for {device}; set peak_flops to get MFU"

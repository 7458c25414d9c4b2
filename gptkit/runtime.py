"""
Where and how the scripts run: device and dtype choice, the per-device plan of CUDA-only features,
the one setup call every script makes, distributed (torchrun) setup, and peak FLOPs for MFU.
"""

import contextlib
import json
import os
import time
from dataclasses import dataclass

import torch

from gptkit import fileio
from gptkit.errors import UserError

# -----------------------------------------------------------------------------
# device and dtype

def pick_device(requested="auto"):
    """Return (device string, reason)."""
    if requested and requested != "auto":
        kind = requested.split(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device={requested} was asked for but CUDA is not available here; use --device=cpu "
                            f"or leave device unset")
        if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device={requested} was asked for but MPS is not available here; use --device=cpu "
                            f"or leave device unset")
        if kind not in ("cuda", "mps", "cpu", "xpu"):
            raise UserError(f"device={requested} is not a device this tool knows; use cuda, mps or cpu")
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
            raise UserError(f"dtype={requested} is not supported; use float32, bfloat16 or float16")
        if device_type == "mps" and requested == "float16":
            raise UserError("dtype=float16 needs a gradient scaler, which this tool does not use on MPS; "
                            "use bfloat16 or float32")
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
    grad_scaler: bool       # fp16 loss scaling (every device with a GradScaler: CUDA, CPU, XPU)
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
        # fp16's 5 exponent bits underflow small gradients without loss scaling, on any device;
        # pick_dtype refuses fp16 on MPS, the one device left out here
        grad_scaler=dtype == "float16" and device_type != "mps",
        pin_memory=cuda,
        # on CPU the fused kernel is far faster than the per-tensor loop (one pass over all tensors)
        fused_adamw=device_type in ("cuda", "cpu"),
        ptdtype=ptdtype,
    )


@dataclass
class Setup:
    """What setup() decided: the processes, the device plan, and the line that says why."""
    dist: "Dist"
    plan: DevicePlan
    compile: bool
    backend: str = None
    why: str = ""

    @property
    def device(self):
        return self.plan.device


def setup(device="auto", dtype="auto", compile=None, fused_adamw=None, backend="auto", distributed=True):
    """The one setup call of every script: join torchrun's process group when launched by it (and
    `distributed`), choose the device and dtype, and make the per-device choices (TF32 matmuls on
    CUDA; compile and fused AdamW default to what pays on the device, unless given)."""
    dist = dist_from_env() if distributed else Dist()
    device, device_reason = pick_device(device)
    chosen_backend = None
    if dist.enabled:
        device, chosen_backend = init_distributed(dist, device, backend)
    dtype, dtype_reason = pick_dtype(device.split(":")[0], dtype)
    plan = plan_for(device, dtype)
    if fused_adamw is not None:
        plan.fused_adamw = fused_adamw
    use_compile = compile if compile is not None else plan.device_type == "cuda"
    if plan.device_type == "cuda":
        # TF32 tensor cores for fp32 matmuls (10 bits of mantissa, like bf16's 8 plus 2): the parts
        # of a bf16 run that stay fp32 go ~8x faster on A100/H100
        torch.set_float32_matmul_precision("high")
    where = f", {dist.world_size} processes ({chosen_backend})" if dist.enabled else ""
    why = (f"device {device} ({device_reason}), dtype {dtype} ({dtype_reason}), "
           f"compile {'on' if use_compile else 'off'}{where}")
    return Setup(dist=dist, plan=plan, compile=use_compile, backend=chosen_backend, why=why)


def synchronize(device):
    """Wait for the device's queued work (timing a region needs it on CUDA; CPU work is synchronous)."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def seed_everything(seed):
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -----------------------------------------------------------------------------
# memory: refuse a model that cannot fit before trying to allocate it

# fp32 weights, their gradients and AdamW's two moments: 4 + 4 + 8 bytes a parameter, before activations
TRAINING_BYTES_PER_PARAM = 16


def available_memory(device):
    """(bytes the device can still give, what that figure is), or (None, None) where it cannot be known."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {torch.cuda.get_device_name(device)}"
    if device.startswith("cpu"):
        try:
            with open("/proc/meminfo") as f:
                info = dict(line.split(":", 1) for line in f)
            return int(info["MemAvailable"].split()[0]) * 1024, "available memory"
        except (OSError, KeyError, ValueError):
            return None, None
    return None, None


def check_fits(config, device, describe, shards=1):
    """One sentence, before anything is allocated, when training a GPTConfig's model cannot fit on the
    device: its parameter count (from a model built on the meta device, which costs no memory) times
    TRAINING_BYTES_PER_PARAM against what the device has, and how many blocks of this width would fit.
    shards: the processes that share each weight (parallel=fsdp), each device holding 1/shards."""
    import dataclasses

    from model import GPT
    with torch.device("meta"):  # one block stands for all: 10,000 of them would take seconds to make
        model = GPT(dataclasses.replace(config, n_layer=1), init_weights=False)
    per_block = sum(p.numel() for p in model.transformer.h[0].parameters())
    params = sum(p.numel() for p in model.parameters()) + (config.n_layer - 1) * per_block
    need = params * TRAINING_BYTES_PER_PARAM / shards
    have, what = available_memory(device)
    if have is None or need <= have:
        return
    fits = (have * shards // TRAINING_BYTES_PER_PARAM - (params - config.n_layer * per_block)) // per_block
    advice = (f"n_layer={int(fits)} would fit at this width" if fits >= 1
              else "even one block of this width does not fit: lower n_embd (and the vocabulary's size, if yours)")
    each = f", sharded over {shards} processes" if shards > 1 else ""
    raise UserError(f"{describe} makes a model of {params / 1e9:.2f}B parameters; training it needs about "
                    f"{need / 2**30:,.1f} GiB ({TRAINING_BYTES_PER_PARAM} bytes a parameter: weights, gradients "
                    f"and AdamW's moments, before activations{each}) but {device} has {have / 2**30:,.1f} GiB "
                    f"{what}; {advice}", status=2)


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
        raise UserError(f"backend={backend} is not available in this PyTorch build; "
                        f"use backend=gloo (CPU) or backend=nccl (CUDA), or leave backend=auto")
    if backend == "nccl" and device_type != "cuda":
        raise UserError(f"backend=nccl works only on CUDA devices but this run uses {device_type}; "
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
            raise UserError(f"torchrun started more processes on this machine than the {gpus} GPU(s) it has; "
                            f"use --nproc_per_node={gpus} (one process per GPU)")
        device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(device)
    tdist.init_process_group(backend=backend)
    return device, backend


def all_reduce_sum(values, dist_info):
    """Sum a float tensor over processes (identity in a single process)."""
    if dist_info.enabled:
        import torch.distributed as tdist
        tdist.all_reduce(values, op=tdist.ReduceOp.SUM)
    return values


def any_process(flag, dist_info, device="cpu"):
    """Whether flag is true on any process: every process gets the same answer, so all take the same
    branch (a process that leaves a loop alone would leave the others waiting in a collective).
    device: where the collective runs (the training device; NCCL reduces only CUDA tensors)."""
    if not dist_info.enabled:
        return bool(flag)
    votes = torch.tensor([float(bool(flag))], device=device)
    return bool(all_reduce_sum(votes, dist_info).item())


def raise_everywhere(error, dist_info, device="cpu"):
    """Raise `error` (a UserError or None) on every process if any process has one: what one rank
    failed to do (rank 0 writing a checkpoint) ends every rank with a sentence, and none is left
    waiting at the next collective. A process without an error of its own raises a generic one."""
    if any_process(error is not None, dist_info, device):
        raise error or UserError("another process of this run failed (its error is in that process's output)")


def everywhere(fn, dist_info, device="cpu"):
    """fn() on every process; a UserError on any one of them (a file only one node lacks) ends all of
    them, each with a status, instead of leaving the others waiting at the next collective."""
    error, result = None, None
    try:
        result = fn()
    except UserError as e:
        error = e
    raise_everywhere(error, dist_info, device)
    return result


def barrier(dist_info):
    if dist_info.enabled:
        import torch.distributed as tdist
        tdist.barrier()


def shutdown(dist_info):
    """Leave the process group together: every process waits for the last one (rank 0 drawing the
    final loss.png) before any tears its connections down. A process that left about a second before
    the others was seen to abort in the communication library's threads ("terminate called without
    an active exception", exit -6), which the launcher reports as a failed run."""
    if dist_info.enabled:
        import torch.distributed as tdist
        if tdist.is_initialized():
            tdist.barrier()
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


def measured_matmul_flops(device, dtype=torch.float32, sizes=(256, 512, 1024), seconds=0.2):
    """The best FLOP/s of square matmuls on the device at this dtype (on a CPU, with torch's thread count):
    each size warmed up, then timed for about seconds / len(sizes), at least once. Several sizes because
    the fastest one differs between CPUs, and with the other work on them. The operands come from a
    generator of their own, so a run's random numbers are the same with or without this."""
    gen = torch.Generator(device).manual_seed(0)
    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=gen) for _ in range(2))
        a @ b  # warm-up: wakes the threads, loads the kernels
        synchronize(device)
        end = time.perf_counter() + seconds / len(sizes)
        while True:
            t0 = time.perf_counter()
            a @ b
            synchronize(device)
            t1 = time.perf_counter()
            best = max(best, 2 * n**3 / max(t1 - t0, 1e-9))
            if t1 >= end:
                break
    return best


CPU_MAX_CLOCK = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"  # in kHz; many VMs have no cpufreq


def cpu_nominal_flops(threads, cpuinfo="/proc/cpuinfo", max_clock=CPU_MAX_CLOCK):
    """(FLOP/s, how) the vector units can do at most in fp32: threads x highest clock x FLOPs per cycle (two
    FMA units of the widest vector width; 2x high where a CPU has one, or splits a 512-bit FMA in two like
    AMD's Zen 4). (None, None) where the kernel does not give the highest clock: /proc/cpuinfo's
    'cpu MHz' is a current or base clock, which the cores can run above."""
    try:
        with open(max_clock) as f:
            hz = int(f.read()) * 1000
        with open(cpuinfo) as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, ValueError, StopIteration):
        return None, None
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4 if "avx" in flags else 0
    if not lanes or hz <= 0:
        return None, None
    per_cycle = 2 * 2 * lanes  # two FMA units, each a multiply and an add per lane
    how = (f"CPU's nominal peak: {threads} thread{'s' * (threads > 1)} x {hz / 1e9:.2f} GHz (highest clock) "
           f"x {per_cycle} FLOP/cycle")
    return threads * hz * per_cycle, how


def cpu_model(cpuinfo="/proc/cpuinfo"):
    try:
        with open(cpuinfo) as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        return platform.processor() or platform.machine()


def peak_cache_path():
    """Where the best CPU matmul rates are kept: $GPT_CACHE_DIR, else gptkit/ in the user's cache folder."""
    folder = os.environ.get("GPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gptkit")
    return os.path.join(folder, "peak_flops.json")


def cpu_peak_flops(dtype="float32", cache=None):
    """(FLOP/s, how) never below a matmul measured in the same way on this CPU: the fastest measured here at
    this dtype and torch's thread count, now or by an earlier run, or the nominal peak where that is higher
    (fp32 and a known highest clock only: for bf16 some CPUs do twice the fp32 rate). Each call measures
    (about 0.2 s) and keeps the best in `cache` (a JSON file, by default peak_cache_path()), one entry per
    CPU model, thread count, dtype and torch version, which only ever rises: a run on a busy CPU measures
    low and uses an earlier, higher figure. A cache that cannot be read or written is ignored."""
    threads = torch.get_num_threads()
    best = measured_matmul_flops("cpu", getattr(torch, dtype))
    cache = cache or peak_cache_path()
    key = f"{cpu_model()}, {threads} threads, {dtype}, torch {torch.__version__}"
    try:
        with open(cache) as f:
            seen = json.load(f)
        seen = seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        seen = {}
    cached = seen.get(key)
    if type(cached) in (int, float) and best <= cached < float("inf"):
        best = cached
    else:
        seen[key] = best
        try:
            os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
            with fileio.atomic_open(cache, "w") as f:
                json.dump(seen, f, indent=1)
        except (OSError, UserError):
            pass
    nominal, how = cpu_nominal_flops(threads) if dtype == "float32" else (None, None)
    if nominal and nominal > best:
        return nominal, how
    return best, f"CPU's best matmul measured here at {threads} thread{'s' * (threads > 1)}, {dtype}"


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
        return (measured_matmul_flops(device, getattr(torch, dtype), sizes=(4096,)),
                f"{name}: measured matmul (not in the datasheet table)")
    if device.startswith("cpu"):
        return cpu_peak_flops(dtype)
    return None, f"unknown for {device}; set peak_flops to get MFU"

"""
Measured speed of training and generation, honestly timed: warm-up excluded, the device
synchronised around timed regions, the median of several runs. A readable table, then one JSON
line with every figure.

    python bench.py                                   # training step, GPT-2 124M shape
    python bench.py --mode=generate                   # decoding speed
    python bench.py --mode=serve --new_tokens=128     # serve.py's batching: 1 to 16 concurrent clients
    python bench.py --n_layer=4 --n_head=4 --n_embd=128 --block_size=64 --dataset=shakespeare_char
                                                      # the CPU recipe's baby model on real data
"""

import os

from gptkit import errors

errors.install()  # first: Ctrl-C while the rest loads ends in one line and status 130

from gptkit import configurator  # noqa: E402
from gptkit.configurator import Key  # noqa: E402
from gptkit import keys  # noqa: E402

# -----------------------------------------------------------------------------
# knobs: the model, optimizer and step keys are train.py's own (gptkit/keys.py, with their checks), so a
# training config file gives bench.py the step it runs (keys of train.py that do not shape a step, such
# as out_dir, are skipped)
KEYS = [
    Key("mode", "train", "train: the training step; generate: decoding speed; process: sample.py against "
        "transformers, whole processes (needs init_from); serve: serve.py's engine under concurrent clients",
        choices=("train", "generate", "process", "serve")),
    *keys.pick(keys.STEP_KEYS, defaults=dict(gradient_accumulation_steps=1, dataset=""),
               notes=dict(dataset="; empty: random tokens")),
    Key("vocab_size", 50304, "vocabulary size (with dataset=..., the dataset's)", min=1),
    Key("warmup", 2, "untimed runs first", min=0),
    Key("repeats", 5, "timed runs; the median is reported", min=1),
    Key("steps", 10, "train: optimizer steps in each timed run", min=1),
    Key("profile", "", "train: also profile a few steps and write a Chrome trace (chrome://tracing, perfetto.dev) "
        "here"),

    # --- generation-mode keys ---
    Key("prompt_len", 16, "generate: prompt tokens", min=1),
    Key("new_tokens", 256, "generate: tokens generated per run", min=1),
    Key("gen_batch_sizes", (1, 4), "generate: batch sizes to measure"),
    Key("recompute_max_batch", 1, "generate: time full recomputation only up to this batch size (it is slow)", min=0),
    Key("recompute_repeats", 3, "generate: timed runs of full recomputation (each takes minutes on a CPU)", min=0),
    Key("hf", True, "generate: also time transformers' generate on the same weights"),
    Key("threads", 0, "generate: CPU threads for every method (0: torch's default)", min=0),
    Key("quantize", "none", "generate and process: also time int8 weights (sample.py's --quantize=int8; CPU only)",
        choices=("none", "int8")),
    Key("llama_cpp", False, "generate: also time llama.cpp (llama-cpp-python) on the same weights as GGUF Q8_0, "
        "batch 1"),

    # --- serve-mode keys (with prompt_len, new_tokens, repeats, quantize, threads) ---
    Key("clients", (1, 2, 4, 8, 16), "serve: numbers of concurrent clients to measure, each sending requests "
        "back to back; the engine decodes up to the largest number together"),
    Key("client_requests", 1, "serve: requests each client sends in a timed run", min=1),

    # --- process-mode keys ---
    Key("init_from", "", "a Hugging Face model (a folder or hub id: GPT-2, Llama, Qwen2, Qwen3, Mistral) to time "
        "instead of the model keys' network; process mode needs one, with its tokenizer"),
    Key("prompt", "The meaning of life is", "process: the prompt both generate from"),
]
cfg = configurator.configure(KEYS, foreign_file_keys=True)
if cfg.profile:  # the trace replaces an earlier trace, nothing else
    from gptkit import runs
    runs.check_output(cfg.profile, ".json", magic=b"{", what="Chrome trace")


def model_config(**overrides):
    """The GPTConfig of the model keys above (train.py's names, so a training config builds its network)."""
    return keys.model_config(cfg, **overrides)


def build_model(**overrides):
    """The network to time: init_from's, with its weights, else the model keys' with random weights (they
    do not change the time)."""
    from model import GPT
    if not cfg.init_from:
        return GPT(model_config(**overrides))
    from gptkit import loading
    loading.refuse_a_run_as_weights(cfg.init_from)
    return loading.load_pretrained(cfg.init_from, dropout=cfg.dropout)[0]


def describe(model):
    """The network in a few words, as the tables print it."""
    c = model.config
    return (f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, vocab {c.vocab_size} "
            f"({model.get_num_params() / 1e6:.1f}M parameters{''.join(f', {k}={v}' for k, v in c.options().items())})"
            + (f", {cfg.init_from}" if cfg.init_from else ""))


# -----------------------------------------------------------------------------
# training step


def bench_train():
    # OpenMP reads its wait policy when torch loads it, so this has to come before the import
    if cfg.omp_passive:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import json
    import resource
    import statistics
    import time

    import torch

    from gptkit import loggers, optim, runtime
    from gptkit.errors import UserError
    from gptkit.training import Step

    rt = runtime.setup(cfg.device, cfg.dtype, cfg.compile, cfg.fused_adamw, distributed=False)
    plan, device = rt.plan, rt.device
    cuda = plan.device_type == "cuda"
    torch.manual_seed(cfg.seed)
    B, T, accum = cfg.batch_size, cfg.block_size, cfg.gradient_accumulation_steps

    # data: the real sampler (its cost is part of a step), or random tokens made once up front
    vocab_size = cfg.vocab_size
    batches = None
    if cfg.dataset:
        from gptkit.batches import open_source
        batches = open_source(cfg.dataset, "", T, B, cfg.seed, device, plan.pin_memory)
        T = batches.seq_len  # a generated problem is as long as it is
        if batches.meta and not cfg.is_set("vocab_size"):
            vocab_size = batches.meta["vocab_size"]
    model = build_model(vocab_size=vocab_size).to(device)
    vocab_size = model.config.vocab_size
    if T > model.config.block_size:
        raise UserError(f"block_size={T} is longer than the context of {cfg.init_from} ({model.config.block_size}); "
                        f"give --block_size={model.config.block_size} or less")
    if batches is None:
        class RandomTokens:
            counted = None  # every target counts
            pool = torch.randint(0, vocab_size, (accum * 2, B, T + 1), device=device)

            def train_batch(self, it, micro):
                row = self.pool[(it * accum + micro) % len(self.pool)]
                return row[:, :-1], row[:, 1:]
        batches = RandomTokens()

    optimizer = optim.configure_optimizers(model, cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                           fused=plan.fused_adamw, optimizer=cfg.optimizer, muon_lr=cfg.muon_lr,
                                           muon_momentum=cfg.muon_momentum, muon_ns_steps=cfg.muon_ns_steps)
    optim.set_lr(optimizer, cfg.learning_rate)
    train_model = torch.compile(model) if rt.compile else model
    step = Step(model, train_model, optimizer, batches, plan, runtime.Dist(), accum, cfg.grad_clip)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    it = 0

    def timed_run():
        nonlocal it
        sync()
        t0 = time.perf_counter()
        for _ in range(cfg.steps):
            step(it)  # ends in the host sync train.py's step ends in
            it += 1
        sync()
        return (time.perf_counter() - t0) / cfg.steps

    print(rt.why)
    t0 = time.perf_counter()
    step(it)  # the first step pays for compilation, allocator growth and lazy initialisation
    it += 1
    sync()
    first_step_s = time.perf_counter() - t0
    for _ in range(cfg.warmup):
        timed_run()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [timed_run() for _ in range(cfg.repeats)]
    dt = statistics.median(times)

    tokens_per_iter = B * T * accum
    peak, peak_source = runtime.peak_flops(device, plan.dtype)
    mfu = loggers.mfu_of(model.flops_per_token(), tokens_per_iter, dt, peak)
    if cuda:
        peak_mem, mem_kind = torch.cuda.max_memory_allocated(), "CUDA max allocated"
    else:
        peak_mem, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"

    trace = None
    if cfg.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(3):
                step(it)
                it += 1
            sync()
        prof.export_chrome_trace(cfg.profile)
        trace = cfg.profile

    result = dict(
        mode="train", device=device, device_name=torch.cuda.get_device_name(device) if cuda else platform_name(),
        dtype=plan.dtype, compile=rt.compile, optimizer=cfg.optimizer, threads=torch.get_num_threads(),
        model=cfg.init_from or None, n_layer=model.config.n_layer, n_head=model.config.n_head,
        n_embd=model.config.n_embd, block_size=T, vocab_size=vocab_size,
        options=model.config.options(), batch_size=B, gradient_accumulation_steps=accum, params=model.get_num_params(),
        data=cfg.dataset or "random", tokens_per_iter=tokens_per_iter,
        ms_per_iter=dt * 1000, ms_min=min(times) * 1000, ms_max=max(times) * 1000,
        tokens_per_s=tokens_per_iter / dt, mfu=mfu, peak_flops=peak, peak_flops_source=peak_source,
        peak_memory_bytes=peak_mem, peak_memory_kind=mem_kind, first_step_s=first_step_s,
        steps=cfg.steps, repeats=cfg.repeats, warmup=cfg.warmup, trace=trace,
        # what the optimizer was built with, read back from it (the settings that change a step's work)
        muon_ns_steps=optimizer.muon.param_groups[0]["ns_steps"] if cfg.optimizer == "muon" else None,
        fused_adamw=bool((optimizer.adamw if cfg.optimizer == "muon" else optimizer).defaults.get("fused")),
    )
    rows = [
        ("model", f"{describe(model)}, block {T}"),
        ("step", f"batch {B} x accum {accum} = {tokens_per_iter:,} tokens, {cfg.optimizer}, data: {result['data']}"),
        ("ms/iter", f"{dt * 1000:.2f} (median of {cfg.repeats} runs of {cfg.steps} steps; "
                    f"min {min(times) * 1000:.2f}, max {max(times) * 1000:.2f})"),
        ("tokens/s", f"{tokens_per_iter / dt:,.0f}"),
        ("MFU", (f"{mfu * 100:.1f}% of {peak / 1e12:.2f} TFLOP/s ({peak_source})" if mfu is not None
                 else f"- ({peak_source})")),
        ("peak memory", f"{peak_mem / 2**20:,.1f} MiB ({mem_kind})"),
        ("first step", f"{first_step_s:.2f} s (compilation included when on)"),
    ] + ([("trace", trace)] if trace else [])
    for name, value in rows:
        print(f"{name:>12}  {value}")
    print(json.dumps(result))


def platform_name():
    import platform
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


# -----------------------------------------------------------------------------
# generation


def bench_generate():
    # Three ways to produce the same greedy tokens from the same weights: this project's KV-cache
    # path, full recomputation of the context for every token (nanoGPT), and transformers' generate
    # with its own cache (on init_from's folder, or on this network exported). The methods take turns
    # within each repeat, so a change in the load from other processes hits them all alike.
    import json
    import statistics
    import time

    import torch

    import contextlib
    import copy

    from gptkit import hf as hf_io
    from gptkit import quantize, quiet, runtime
    from gptkit.errors import UserError
    from gptkit.generate import compile_for_decoding, decode_layout, generate, measure_layout
    from gptkit.tokenizer import GPT2_VOCAB

    rt = runtime.setup(cfg.device, cfg.dtype, compile=cfg.compile, distributed=False)
    device, ptdtype = rt.device, rt.plan.ptdtype
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(gelu_approximate="tanh")  # GPT-2's GELU, so transformers' GPT-2 computes the same
    model = model.eval().to(device=device, dtype=ptdtype)
    config = model.config
    if cfg.prompt_len + cfg.new_tokens > config.block_size:
        raise UserError(f"prompt_len + new_tokens = {cfg.prompt_len + cfg.new_tokens} exceeds the context "
                        f"({config.block_size}); the benchmark times decoding without the sliding window, so lower "
                        f"one of them")
    # transformers gets GPT-2's real vocabulary, without our padding
    hf_vocab = config.vocab_size if cfg.init_from else min(cfg.vocab_size, GPT2_VOCAB)
    hf = None
    if cfg.hf and cfg.init_from:
        from transformers import AutoModelForCausalLM
        with quiet.transformers():
            hf = AutoModelForCausalLM.from_pretrained(cfg.init_from, dtype=ptdtype).eval().to(device)
    elif cfg.hf:
        try:
            hf_io.export_architecture(config)
        except UserError as e:
            raise UserError(f"{e}; time this model without transformers with --hf=False") from None
        hf = hf_io.to_transformers(model, hf_vocab).to(device=device, dtype=ptdtype)
    if hf is not None:
        hf.generation_config.eos_token_id = None  # a random model must not stop early
        hf.generation_config.pad_token_id = 0
    # On a CPU, the weight layouts decode_layout chooses between, each timed (a copy of the model
    # holds the column-major one), and the faster, measured and recorded for decode_layout's 'auto' (what
    # sample.py, chat.py and serve.py use on this CPU); with quantize, the int8 copy.
    variants = {"kv_cache": model}
    held = contextlib.ExitStack()
    layout_choice = recorded = None
    if device == "cpu":
        layout_choice, recorded = measure_layout(model)
        column = copy.deepcopy(model)
        held.enter_context(decode_layout(column, "column"))
        variants["kv_cache_column"] = column
    if cfg.quantize == "int8":
        quantize.check_supported(device, rt.plan.dtype)
        variants["kv_cache_int8"] = quantize.quantize_int8(model)
    if rt.compile:  # sample.py --compile=True: compiled before timing, as sample.py compiles before printing
        compiled, failure = compile_for_decoding(model)
        if failure:
            raise UserError(f"torch.compile failed here ({failure}); time decoding uncompiled with --compile=False")
        variants["kv_cache_compiled"] = compiled
    llm = None
    if cfg.llama_cpp:
        llm = llama_cpp_model(model, held)
    n = torch.get_num_threads()
    print(f"generation: {rt.why}, {n} thread{'s' * (n != 1)}, {describe(model)}, "
          f"prompt {cfg.prompt_len}, {cfg.new_tokens} new tokens"
          + (f"; decode_layout's timed choice here: {layout_choice}-major" if layout_choice else "")
          + (f" (recorded in {recorded} for sample.py, chat.py and serve.py)" if recorded else ""))

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_ours(x, n, use_cache, m=model):
        return generate(m, x, n, temperature=0) if use_cache else m.generate(x, n, temperature=0)

    def run_hf(x, n):
        with torch.no_grad():
            out = hf.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        assert out.size(1) == x.size(1) + n
        return out

    results = []
    for B in cfg.gen_batch_sizes:
        x = torch.randint(0, hf_vocab, (B, cfg.prompt_len), device=device)
        methods = {name: (lambda n, m=m: run_ours(x, n, True, m)) for name, m in variants.items()}
        if hf is not None:
            methods["transformers"] = lambda n: run_hf(x, n)
        if llm is not None and B == 1:
            methods["llama_cpp_q8_0"] = lambda n: run_llama_cpp(llm, x, n)
        if B <= cfg.recompute_max_batch and cfg.recompute_repeats > 0:
            methods["recompute"] = lambda n: run_ours(x, n, False)
        # warm-up: a few tokens each touch every kernel, the allocator and the thread pool
        for _ in range(cfg.warmup):
            for f in methods.values():
                f(8)
        times = {name: [] for name in methods}
        for r in range(cfg.repeats):
            for name, f in methods.items():
                if name == "recompute" and r >= cfg.recompute_repeats:
                    continue
                sync()
                t0 = time.perf_counter()
                f(cfg.new_tokens)
                sync()
                times[name].append(time.perf_counter() - t0)
                print(f"  {name} batch {B} run {r + 1}: {B * cfg.new_tokens / times[name][-1]:.2f} tok/s", flush=True)
        for name, ts in times.items():
            dt = statistics.median(ts)
            results.append(dict(method=name, batch=B, prompt_len=cfg.prompt_len, new_tokens=cfg.new_tokens,
                                runs=len(ts), median_s=round(dt, 3), tok_s=round(B * cfg.new_tokens / dt, 2),
                                tok_s_min=round(B * cfg.new_tokens / max(ts), 2),
                                tok_s_max=round(B * cfg.new_tokens / min(ts), 2),
                                ms_per_step=round(dt / cfg.new_tokens * 1e3, 2)))

    # -------------------------------------------------------------------------
    # report: a table, the speed-ups within this run, then everything as one JSON line
    print(f"{'method':<17}{'batch':>6}{'runs':>6}{'median s':>10}{'ms/step':>10}{'tok/s':>10}  (min-max)")
    for r in results:
        print(f"{r['method']:<17}{r['batch']:>6}{r['runs']:>6}{r['median_s']:>10.2f}{r['ms_per_step']:>10.1f}"
              f"{r['tok_s']:>10.2f}  ({r['tok_s_min']:.2f}-{r['tok_s_max']:.2f})")
    speedups = {}
    for B in cfg.gen_batch_sizes:
        by = {r["method"]: r["tok_s"] for r in results if r["batch"] == B}
        for other in ("recompute", "transformers"):
            if other in by:
                speedups[f"kv_cache_vs_{other}_b{B}"] = round(by["kv_cache"] / by[other], 2)
        for variant in ("kv_cache_column", "kv_cache_int8", "kv_cache_compiled"):
            if variant in by:
                speedups[f"{variant}_vs_kv_cache_b{B}"] = round(by[variant] / by["kv_cache"], 2)
        for other in ("transformers", "llama_cpp_q8_0"):
            if "kv_cache_int8" in by and other in by:
                speedups[f"kv_cache_int8_vs_{other}_b{B}"] = round(by["kv_cache_int8"] / by[other], 2)
    held.close()
    for k, v in speedups.items():
        print(f"{k}: {v:.2f}x")
    print(json.dumps(dict(mode="generate", device=device, dtype=rt.plan.dtype, threads=torch.get_num_threads(),
                          model=cfg.init_from or None, n_layer=config.n_layer, n_head=config.n_head,
                          n_embd=config.n_embd, vocab_size=config.vocab_size,
                          options=config.options(), prompt_len=cfg.prompt_len, new_tokens=cfg.new_tokens,
                          layout_choice=layout_choice, results=results, speedups=speedups)))


def llama_cpp_model(model, held):
    """llama-cpp-python's Llama on the model's weights, written as a GGUF Q8_0 file in a temporary
    folder that `held` (an ExitStack) removes; with as many threads as torch uses."""
    import tempfile

    import torch

    from gptkit.errors import UserError
    from gptkit.gguf_export import write_gguf
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("--llama_cpp=True needs llama-cpp-python (pip install llama-cpp-python, which compiles "
                        "llama.cpp); or leave it off") from None
    folder = held.enter_context(tempfile.TemporaryDirectory())
    path = os.path.join(folder, "bench-q8_0.gguf")
    write_gguf(model, path, "q8_0")
    llm = Llama(path, n_ctx=model.config.block_size, n_threads=torch.get_num_threads(),
                n_threads_batch=torch.get_num_threads(), verbose=False)
    held.callback(llm.close)
    return llm


def run_llama_cpp(llm, x, n):
    """n greedy tokens after the prompt x (1, T) with llama.cpp: one prefill, then one token per step."""
    out = []
    for token in llm.generate(x[0].tolist(), temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == n:
            return out


# -----------------------------------------------------------------------------
# whole processes: what a user waits for, from the command to the last token

# transformers' own way to do what sample.py does: load the folder, tokenize, greedy-decode, print
TRANSFORMERS_SCRIPT = """
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = tok(prompt, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                         pad_token_id=0, attention_mask=torch.ones_like(ids))
print(prompt + tok.decode(out[0, ids.shape[1]:]))  # as sample.py prints it: the prompt, then what follows
"""


def bench_process():
    # The commands take turns in each repeat, so a change in the machine's load hits them alike, and
    # their order rotates, so none always pays for a cold file cache. sample.py's time to first token
    # is read off its output as it streams: the first byte after the prompt, which it echoes first.
    # With quantize=int8, sample.py --quantize=int8 is a third command.
    import json
    import statistics
    import subprocess
    import sys
    import time

    from gptkit.errors import UserError
    if not cfg.init_from:
        raise UserError("mode=process needs --init_from=FOLDER: a Hugging Face model folder with its tokenizer, "
                        "or a hub id when online", status=2)
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    ours_cmd = [sys.executable, os.path.join(here, "sample.py"), f"--init_from={cfg.init_from}", f"--start={cfg.prompt}",
                "--num_samples=1", f"--max_new_tokens={cfg.new_tokens}", "--temperature=0", "--stop_at_eot=False"]
    theirs_cmd = [sys.executable, "-c", TRANSFORMERS_SCRIPT, cfg.init_from, cfg.prompt, str(cfg.new_tokens)]

    def ours(*extra):
        t0 = time.perf_counter()
        p = subprocess.Popen(ours_cmd + list(extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        out, first = b"", None
        while chunk := p.stdout.read1(4096):
            out += chunk
            if first is None and len(out) > len(cfg.prompt.encode()):
                first = time.perf_counter() - t0
        err = p.stderr.read()
        if p.wait() != 0:
            raise UserError(f"sample.py failed: {err.decode(errors='replace').strip().splitlines()[-1]}")
        return time.perf_counter() - t0, first, out.decode().split("\n---------------")[0]

    def theirs():
        t0 = time.perf_counter()
        p = subprocess.run(theirs_cmd, capture_output=True, env=env)
        if p.returncode != 0:
            raise UserError(f"the transformers script failed: {p.stderr.decode(errors='replace').strip().splitlines()[-1]}")
        return time.perf_counter() - t0, None, p.stdout.decode().removesuffix("\n")  # print's newline, not generated ones

    commands = {"sample.py": ours, "transformers": theirs}
    if cfg.quantize == "int8":
        commands["sample.py int8"] = lambda: ours("--quantize=int8")
    names = list(commands)
    runs = {k: [] for k in names}
    firsts = {k: [] for k in names if k != "transformers"}
    texts = {}
    for r in range(cfg.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            total, first, texts[name] = commands[name]()
            runs[name].append(total)
            if name in firsts:
                firsts[name].append(first)
        print(f"  run {r + 1}: " + ", ".join(f"{k} {runs[k][-1]:.2f} s" + (f" (first token {firsts[k][-1]:.2f} s)"
                                                                          if k in firsts else "") for k in names),
              flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{cfg.new_tokens} greedy tokens from {cfg.init_from}, whole processes, median of {cfg.repeats} "
          f"(min-max):")
    for k, v in runs.items():
        print(f"  {k:<15} {med[k]:6.2f} s ({min(v):.2f}-{max(v):.2f})")
    for k, f in firsts.items():
        print(f"  {k}'s first token after {statistics.median(f):.2f} s ({min(f):.2f}-{max(f):.2f})")
    speedups = {}
    for k in firsts:
        ratios = [b / a for a, b in zip(runs[k], runs["transformers"])]
        speedups[k] = med["transformers"] / med[k]
        print(f"  {k} against transformers: {speedups[k]:.2f}x (within each run: {statistics.median(ratios):.2f}x, "
              f"{min(ratios):.2f}-{max(ratios):.2f})")
    same = texts["sample.py"] == texts["transformers"]
    print(f"  the same text: {'yes' if same else 'NO'}")
    if "sample.py int8" in texts:  # rounding the weights may change a greedy choice: said, not required
        print(f"  int8 text the same as fp32's: {'yes' if texts['sample.py int8'] == texts['sample.py'] else 'no'}")
    print(json.dumps(dict(mode="process", init_from=cfg.init_from, new_tokens=cfg.new_tokens, runs=runs,
                          first_token_s=firsts["sample.py"], first_token_s_by_command=firsts,
                          speedup=speedups["sample.py"], speedups=speedups, same_text=same,
                          int8_same_text=texts["sample.py int8"] == texts["sample.py"] if "sample.py int8" in texts
                          else None)))


# -----------------------------------------------------------------------------
# serving


def bench_serve():
    # serve.py's engine (gptkit/serving.py) without HTTP in front: N client threads each submit a request,
    # wait for its last token, and submit the next; every request is prompt_len random tokens and exactly
    # new_tokens greedy ones. One client is decoding one request at a time (the engine's rows are filled
    # one), the reference the others are compared with; generate_stream (sample.py's loop) is timed beside
    # it, to show what the engine's bookkeeping costs.
    import json
    import statistics
    import threading
    import time

    import torch

    from gptkit import quantize, runtime
    from gptkit.errors import UserError
    from gptkit.generate import decode_layout, generate_stream
    from gptkit.serving import Engine, Params

    rt = runtime.setup(cfg.device, cfg.dtype, compile=False, distributed=False)
    device = rt.device
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if not cfg.clients or not all(isinstance(n, int) and n >= 1 for n in cfg.clients):
        raise UserError(f"clients={cfg.clients!r} must be a tuple of positive counts, e.g. --clients='(1, 8)'")
    torch.manual_seed(cfg.seed)
    model = build_model().eval().to(device)
    if cfg.prompt_len + cfg.new_tokens > model.config.block_size:
        raise UserError(f"prompt_len + new_tokens = {cfg.prompt_len + cfg.new_tokens} exceeds the context "
                        f"({model.config.block_size}); lower one of them")
    if cfg.quantize == "int8":
        quantize.check_supported(device, rt.plan.dtype)
    model = quantize.for_decoding(model, cfg.quantize)

    class Ids:  # the engine passes text on; here each token is one character, whatever it is
        def decode(self, ids):
            return "x" * len(ids)

    engine = Engine(model, Ids(), max_batch=max(cfg.clients), max_queue=max(cfg.clients),
                    autocast=rt.plan.autocast_context)
    params = Params(max_tokens=cfg.new_tokens, temperature=0)
    n = torch.get_num_threads()
    print(f"serving: {rt.why}, {n} thread{'s' * (n != 1)}, {describe(model)}"
          f"{', int8 weights' if cfg.quantize == 'int8' else ''}, prompt {cfg.prompt_len}, "
          f"{cfg.new_tokens} new tokens a request, {cfg.client_requests} request(s) a client")

    def client(stats):
        for _ in range(cfg.client_requests):
            done, times = threading.Event(), []
            ids = torch.randint(0, model.config.vocab_size, (cfg.prompt_len,)).tolist()
            t0 = time.perf_counter()
            engine.submit(ids, params, lambda text, finish: (times.append(time.perf_counter()),
                                                             finish and done.set()))
            done.wait()
            stats.append((times[0] - t0, (times[-1] - times[0]) / max(len(times) - 1, 1), len(times)))

    def round_of(n):
        stats = []
        threads = [threading.Thread(target=client, args=(stats,)) for _ in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        return sum(s[2] for s in stats) / wall, [s[0] for s in stats], [s[1] for s in stats]

    def alone():  # sample.py's loop, for one request
        x = torch.randint(0, model.config.vocab_size, (1, cfg.prompt_len))
        t0 = time.perf_counter()
        for _ in generate_stream(model, x, cfg.new_tokens, temperature=0):
            pass
        return cfg.new_tokens / (time.perf_counter() - t0)

    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    results = []
    with decode_layout(model), torch.inference_mode():
        engine.start()
        for _ in range(cfg.warmup):
            round_of(min(2, max(cfg.clients)))
            alone()
        # the client counts take turns within each repeat, so a change in the load from other processes
        # hits them all alike
        rates, ttft, per_token, single = {n: [] for n in cfg.clients}, {n: [] for n in cfg.clients}, \
            {n: [] for n in cfg.clients}, []
        for r in range(cfg.repeats):
            for n in cfg.clients:
                rate, firsts, steps = round_of(n)
                rates[n].append(rate)
                ttft[n] += firsts
                per_token[n] += steps
                print(f"  {n} clients run {r + 1}: {rate:.1f} tok/s", flush=True)
            single.append(alone())
        engine.stop()
        single = statistics.median(single)
        for n in cfg.clients:
            results.append(dict(clients=n, runs=len(rates[n]), tok_s=round(statistics.median(rates[n]), 2),
                                ttft_p50_s=round(pct(ttft[n], 0.5), 3), ttft_p90_s=round(pct(ttft[n], 0.9), 3),
                                per_token_p50_ms=round(pct(per_token[n], 0.5) * 1e3, 1),
                                per_token_p90_ms=round(pct(per_token[n], 0.9) * 1e3, 1)))

    # -------------------------------------------------------------------------
    # report
    base = results[0]["tok_s"] if results[0]["clients"] == 1 else None
    print(f"{'clients':>8}{'tok/s':>10}{'vs 1':>7}{'TTFT p50':>10}{'p90':>8}{'ms/token p50':>14}{'p90':>8}")
    for r in results:
        ratio = f"{r['tok_s'] / base:.2f}x" if base else "-"
        r["vs_one_client"] = round(r["tok_s"] / base, 2) if base else None
        print(f"{r['clients']:>8}{r['tok_s']:>10.1f}{ratio:>7}{r['ttft_p50_s']:>9.2f}s{r['ttft_p90_s']:>7.2f}s"
              f"{r['per_token_p50_ms']:>14.1f}{r['per_token_p90_ms']:>8.1f}")
    print(f"generate_stream alone (sample.py's loop): {single:.1f} tok/s")
    print(json.dumps(dict(mode="serve", device=device, threads=torch.get_num_threads(), quantize=cfg.quantize,
                          model=cfg.init_from or None, n_layer=model.config.n_layer, n_embd=model.config.n_embd, prompt_len=cfg.prompt_len,
                          new_tokens=cfg.new_tokens, client_requests=cfg.client_requests, results=results,
                          generate_stream_tok_s=round(single, 2))))


if __name__ == "__main__":
    {"train": bench_train, "generate": bench_generate, "process": bench_process, "serve": bench_serve}[cfg.mode]()

"""
Sample text from a trained run or from GPT-2, streaming it as it is generated.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=3
    python sample.py --start=FILE:prompt.txt
"""

from gptkit import errors

errors.install()  # first: Ctrl-C while the rest loads ends in one line and status 130

from gptkit import configurator  # noqa: E402
from gptkit import keys  # noqa: E402
from gptkit.configurator import Key  # noqa: E402
from gptkit.stopping import require_stdout  # noqa: E402

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("init_from", "resume", "resume (a run in out_dir), a GPT-2 name (gpt2 ... gpt2-xl), a Hugging Face folder or "
        "hub id (Llama, Qwen2, Qwen3, Mistral, GPT-2)"),
    Key("out_dir", "out", "the run folder, with init_from=resume"),
    keys.CKPT_NAME,
    keys.LORA_BASE,
    Key("start", "\n", "the prompt, or FILE:path to read it from a file"),
    Key("num_samples", 10, "how many samples (with temperature=0 every sample is the same: 1 unless given)", min=1),
    Key("max_new_tokens", 500, "tokens generated per sample", min=1),
    Key("temperature", 0.8, "1.0 samples the model's distribution, lower is more conservative, 0 is greedy", min=0.0),
    Key("top_k", 200, "sample only among the k most likely tokens (None: all)", type=int, min=1),
    Key("top_p", 1.0, "nucleus sampling: the smallest set of tokens whose probability reaches p (1.0: off)",
        above=0.0, max=1.0),
    Key("stop", (), "strings that end a sample, e.g. ('\\n\\n',); the stop string itself is not printed", type=tuple),
    Key("stop_at_eot", True, "end a sample at the model's end-of-text tokens (GPT-2's <|endoftext|>, a Hugging Face "
        "model's eos ids)"),
    Key("seed", 1337, "random seed; the same seed gives the same samples"),
    Key("stream", True, "print tokens as they are generated"),
    Key("device", "auto", "auto, cpu, cuda, cuda:1, mps"),
    Key("dtype", "auto", "auto, float32, bfloat16 or float16"),
    Key("compile", False, "torch.compile decoding, before the first token (a minute or more); on a CPU 1.7x faster "
        "for a small model, 5x slower for GPT-2 124M (docs/gpu.md)"),
    Key("threads", 0, "CPU threads: 0 chooses by timing the first tokens at all cores and at fewer (fewer go "
        "faster while other programs keep the cores busy); N fixes them", min=0),
    Key("quantize", "none", "none, or int8: int8 weights for the Linear layers and the head, CPU only, several "
        "times faster decoding at a small cost in quality (docs/cpu-inference.md)", choices=("none", "int8")),
]
cfg = configurator.configure(KEYS)
require_stdout("the samples")

# the heavy imports come after the knobs so that --help and config errors answer at once
import sys  # noqa: E402

import torch  # noqa: E402

from gptkit import loading, quantize, runtime  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402
from gptkit.generate import compile_for_decoding, decode_layout, generate_stream  # noqa: E402
from gptkit.threads import ThreadChooser  # noqa: E402
from gptkit.tokenizer import StopText, StreamDecoder  # noqa: E402

# -----------------------------------------------------------------------------
# setup
if not all(isinstance(t, str) for t in cfg.stop):
    raise UserError(f"stop={cfg.stop!r} must be a tuple of strings, e.g. --stop=\"('\\n\\n',)\"", status=USAGE)
rt = runtime.setup(cfg.device, cfg.dtype, compile=cfg.compile, distributed=False)
plan, device = rt.plan, rt.device
threads = ThreadChooser(cfg.threads, device, unit="token", say=lambda line: print(line, file=sys.stderr))
if cfg.quantize == "int8":
    quantize.check_supported(device, plan.dtype)  # at once, before the weights are read
model, tok, desc = loading.load_for_inference(cfg.init_from, cfg.out_dir, cfg.ckpt_name, device,
                                              dtype=plan.ptdtype if cfg.quantize == "none" else torch.float32,
                                              lora_base=cfg.lora_base)
model = quantize.for_decoding(model, cfg.quantize)
print(f"sampling from {desc}; {rt.why}{'; int8 weights' if cfg.quantize == 'int8' else ''}", file=sys.stderr)
num_samples = cfg.num_samples if cfg.temperature > 0 or cfg.is_set("num_samples") else 1  # greedy: all alike

start = cfg.start
if start.startswith("FILE:"):
    try:
        with open(start[5:], encoding="utf-8") as f:
            start = f.read()
    except OSError as e:
        raise UserError(f"cannot read the prompt file {start[5:]} ({e.strerror}); check the path after FILE:") from None
    except UnicodeDecodeError as e:
        raise UserError(f"the prompt file {start[5:]} is not UTF-8 text (byte {e.start} cannot be decoded); give a "
                        f"text file after FILE:") from None
if tok.prompt_format is not None and tok.prompt_format.note(start):  # a model of generated problems
    print(tok.prompt_format.note(start), file=sys.stderr)
ids = tok.encode(start)
if not ids:
    if tok.eot is None:
        raise UserError("the prompt is empty; give some text with --start=...")
    ids = [tok.eot]
x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]
stop_tokens = tok.stop_ids if cfg.stop_at_eot else []
generator = torch.Generator(device=device).manual_seed(cfg.seed)
torch.manual_seed(cfg.seed)

# -----------------------------------------------------------------------------
# generate
with torch.no_grad(), plan.autocast_context(), decode_layout(model):
    if rt.compile:  # compiled before the first token, so nothing the compiler says lands amid the text
        model, failure = compile_for_decoding(model)
        if failure:
            print(f"note: compiling failed ({failure}); decoding runs uncompiled", file=sys.stderr)
    for k in range(num_samples):
        out, text = StreamDecoder(tok), StopText(cfg.stop)
        sys.stdout.write(start)
        for token in threads.paced(generate_stream(model, x, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                                   cfg.top_p, generator, stop_tokens=stop_tokens)):
            if int(token[0]) in stop_tokens:
                break
            shown = text.push(out.push(token[0]))
            if cfg.stream:
                sys.stdout.write(shown)
                sys.stdout.flush()
            if text.stopped:
                break
        rest = text.flush()
        sys.stdout.write(rest if cfg.stream else text.text)
        print("\n---------------")

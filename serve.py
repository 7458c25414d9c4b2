"""
Serve a model over OpenAI's API, with a chat page: many requests decoded together (continuous batching).

    python serve.py --init_from=gpt2                      # http://127.0.0.1:8000/ and /v1/chat/completions
    python serve.py --out_dir=out-sft --quantize=int8     # a fine-tuned run, int8 weights on a CPU
    python serve.py --init_from=gpt2 --host=0.0.0.0 --api_key=secret

Any OpenAI client talks to it (base_url http://127.0.0.1:8000/v1); docs/serving.md has the details.
Ctrl-C or SIGTERM stops it: no new requests, those in flight get a few seconds to finish, exit 0.
Needs the serving extras: pip install -e '.[serve]'
"""

from gptkit import configurator
from gptkit import keys
from gptkit.configurator import Key
from gptkit import errors

errors.install()

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("init_from", "resume", "resume (a run in out_dir), a GPT-2 name (gpt2 ... gpt2-xl) or a Hugging Face folder"),
    Key("out_dir", "out", "the run folder, with init_from=resume"),
    keys.CKPT_NAME,
    keys.LORA_BASE,
    Key("device", "auto", "auto, cpu, cuda, cuda:1, mps"),
    Key("dtype", "auto", "auto, float32, bfloat16 or float16"),
    Key("quantize", "none", "none, or int8: int8 weights for the Linear layers and the head, CPU only, several "
        "times faster decoding at a small cost in quality (docs/cpu-inference.md)", choices=("none", "int8")),
    Key("host", "127.0.0.1", "address to listen on; 0.0.0.0 for every interface (then set api_key)"),
    Key("port", 8000, "port to listen on", min=1, max=65535),
    Key("max_batch", 8, "requests decoded together; each holds a KV cache of the model's whole context", min=1),
    Key("max_queue", 32, "requests that may wait for a free slot; past that the answer is 429", min=0),
    Key("max_tokens", 256, "the longest reply a request may ask for (and the default)", min=1),
    Key("api_key", None, "a key clients must send (Authorization: Bearer <key>); none: anyone may connect",
        type=str),
    Key("style", "auto", "how chats are written for the model, as in chat.py: auto (the run's chat template if it "
        "was fine-tuned on conversations, else play for character models, chat otherwise), play or chat",
        choices=("auto", "play", "chat")),
    Key("model_id", None, "the model's name in the API (default: the run folder or init_from)", type=str),
]
cfg = configurator.configure(KEYS)

# the heavy imports come after the knobs so that --help and config errors answer at once
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

try:
    import uvicorn  # noqa: E402

    from gptkit.openai_api import Service, is_loopback, listen, make_app  # noqa: E402
except ImportError as e:
    raise errors.UserError(f"serving needs {e.name}, which is not installed; pip install -e '.[serve]'") from None

from gptkit import conversation, loading, quantize, runtime  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402
from gptkit.generate import decode_layout  # noqa: E402
from gptkit.serving import Engine  # noqa: E402

# -----------------------------------------------------------------------------
# setup
sock = listen(cfg.host, cfg.port)  # first: a port in use is said at once, not after loading the weights
rt = runtime.setup(cfg.device, cfg.dtype, compile=False, distributed=False)
plan, device = rt.plan, rt.device
if cfg.quantize == "int8":
    quantize.check_supported(device, plan.dtype)  # at once, before the weights are read
model, tok, desc = loading.load_for_inference(cfg.init_from, cfg.out_dir, cfg.ckpt_name, device,
                                              lora_base=cfg.lora_base)
model = quantize.for_decoding(model, cfg.quantize)
if tok.prompt_format is not None:
    raise UserError(f"{desc} is a model of {tok.prompt_format.describe()}, not a chat model; ask it with "
                    f"{tok.prompt_format.sample_command(cfg.out_dir)}", status=USAGE)
transcript, style = conversation.transcript_for(tok, cfg.style)
source = cfg.out_dir if cfg.init_from == "resume" else cfg.init_from
model_id = cfg.model_id or os.path.basename(os.path.abspath(source))
engine = Engine(model, tok, max_batch=cfg.max_batch, max_queue=cfg.max_queue, autocast=plan.autocast_context)
service = Service(engine, tok, model_id, transcript, api_key=cfg.api_key, max_tokens=cfg.max_tokens)
app = make_app(service)
if not is_loopback(cfg.host) and cfg.api_key is None:
    print(f"warning: listening on {cfg.host} without --api_key: anyone who can reach this machine can use the "
          f"model", file=sys.stderr)
int8 = "; int8 weights" if cfg.quantize == "int8" else ""
print(f"serving {desc} as {model_id!r}; {rt.why}{int8}; {style} style for chats; up to {cfg.max_batch} requests "
      f"decoded together", file=sys.stderr)

# -----------------------------------------------------------------------------
# serve
# uvicorn answers SIGTERM and Ctrl-C by shutting down (open responses get 5 s), then raises the signal
# again for the handlers it found: these make that a plain exit with status 0
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: None)
server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
with decode_layout(model):  # the weights in the memory order this CPU multiplies fastest, while serving
    print(f"listening on http://{cfg.host}:{cfg.port}/ (the chat page; the API under /v1)", file=sys.stderr,
          flush=True)
    server.run(sockets=[sock])
print("stopped", file=sys.stderr)

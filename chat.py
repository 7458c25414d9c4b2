"""
Talk with a model: a running transcript of speaker-prefixed turns, each reply streamed as it is
generated and ended at the next speaker prefix, the end-of-turn marker of a fine-tuned model, or a
stop token.

    python chat.py --out_dir=out-shakespeare-char-cpu      # a play: you are ROMEO, it is JULIET
    python chat.py --init_from=gpt2                         # "User:" / "Assistant:" lines
    python chat.py --out_dir=out-sft                        # a fine-tuned run: its own chat template
    echo "Hello there" | python chat.py --init_from=gpt2    # piped: one turn per input line
    python chat.py --init_from=gpt2 --prompt="What is a cat?"   # one reply, then exit

Commands inside a chat: /reset forgets the conversation, /quit (or end of input) leaves, /help.
A base model does not know it is chatting; the transcript format is what makes it answer. A run
fine-tuned on conversations (data/chat/prepare.py) learnt a template, recorded in its checkpoint, and
is talked to in exactly that template.
"""

import sys

from gptkit import errors

errors.install()  # first: Ctrl-C while the rest loads ends in one line and status 130

from gptkit import configurator  # noqa: E402
from gptkit import keys  # noqa: E402
from gptkit.configurator import Key  # noqa: E402
from gptkit.stopping import require_stdout  # noqa: E402

# -----------------------------------------------------------------------------
# knobs
KEYS = [
    Key("init_from", "auto", "auto (the run in out_dir), resume, a GPT-2 name (gpt2 ... gpt2-xl), or a Hugging Face "
        "folder or hub id (Llama, Qwen2, Qwen3, Mistral: an instruct model chats in its own template)"),
    Key("out_dir", "out", "the run folder, with init_from=resume"),
    keys.CKPT_NAME,
    keys.LORA_BASE,
    Key("style", "auto", "auto (the run's chat template if it was fine-tuned on conversations, else play for "
        "character models, chat otherwise), template, play or chat: the default prefixes",
        choices=("auto", "template", "play", "chat")),
    Key("user", None, "your speaker prefix (default: 'ROMEO:\\n' in a play, 'User: ' in a chat)", type=str),
    Key("bot", None, "the model's speaker prefix (default: 'JULIET:\\n' in a play, 'Assistant: ' in a chat)", type=str),
    Key("sep", None, "what ends each line of the transcript (default: a blank line in a play, a newline in a chat)", type=str),
    Key("preamble", None, "text before the first turn (default: a line setting the scene for a chat)", type=str),
    Key("stop", (), "more strings that end a reply, besides the speaker prefixes", type=tuple),
    Key("prompt", None, "one-shot: answer this line, print the reply and exit", type=str),
    Key("max_new_tokens", 200, "longest reply, in tokens", min=1),
    Key("temperature", 0.8, "1.0 samples the model's distribution, lower is more conservative, 0 is greedy", min=0.0),
    Key("top_k", 200, "sample only among the k most likely tokens (None: all)", type=int, min=1),
    Key("top_p", 0.95, "nucleus sampling: the smallest set of tokens whose probability reaches p (1.0: off)",
        above=0.0, max=1.0),
    Key("seed", 1337, "random seed; the same seed and input give the same conversation"),
    Key("device", "auto", "auto, cpu, cuda, cuda:1, mps"),
    Key("dtype", "auto", "auto, float32, bfloat16 or float16"),
    Key("threads", 0, "CPU threads: 0 chooses by timing the first tokens at all cores and at fewer (fewer go "
        "faster while other programs keep the cores busy); N fixes them", min=0),
    Key("quantize", "none", "none, or int8: int8 weights for the Linear layers and the head, CPU only, several "
        "times faster replies at a small cost in quality (docs/cpu-inference.md)", choices=("none", "int8")),
]
cfg = configurator.configure(KEYS)
require_stdout("the replies")
if sys.stdin is None and cfg.prompt is None:  # started with <&-: no line will ever come
    raise errors.UserError("standard input is closed (<&-), so there is nothing to reply to; give one line with "
                           "--prompt=... or pipe the lines in", status=errors.USAGE)

import dataclasses  # noqa: E402

import torch  # noqa: E402

from gptkit import checkpoint, conversation, loading, quantize, runtime  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402
from gptkit.generate import decode_layout, generate_stream  # noqa: E402
from gptkit.threads import ThreadChooser  # noqa: E402
from gptkit.tokenizer import StopText, StreamDecoder  # noqa: E402

HELP = "commands: /reset forgets the conversation, /quit leaves (so does end of input), /help shows this"

# -----------------------------------------------------------------------------
# setup
init_from = cfg.init_from
if init_from == "auto":
    if not checkpoint.Store(cfg.out_dir).names():
        raise UserError(f"no trained run in {cfg.out_dir}/ to chat with; train one (python train.py "
                        f"config/train_shakespeare_char_cpu.py) and pass --out_dir=out-shakespeare-char-cpu, or use "
                        f"--init_from=gpt2 for GPT-2's weights")
    init_from = "resume"
rt = runtime.setup(cfg.device, cfg.dtype, compile=False, distributed=False)
plan, device = rt.plan, rt.device
threads = ThreadChooser(cfg.threads, device, unit="token", say=lambda line: print(line, file=sys.stderr))
if cfg.quantize == "int8":
    quantize.check_supported(device, plan.dtype)  # at once, before the weights are read
model, tok, desc = loading.load_for_inference(init_from, cfg.out_dir, cfg.ckpt_name, device,
                                              dtype=plan.ptdtype if cfg.quantize == "none" else torch.float32,
                                              lora_base=cfg.lora_base)
model = quantize.for_decoding(model, cfg.quantize)
block_size = model.config.block_size
if tok.prompt_format is not None:  # no conversation to continue: it knows problems and their answers
    raise UserError(f"{desc} is a model of {tok.prompt_format.describe()}, not a chat model; ask it with "
                    f"{tok.prompt_format.sample_command(cfg.out_dir)}", status=USAGE)

# Speaker prefixes. A fine-tuned run is talked to in the template it learnt. A character model
# trained on plays continues a play: you speak one part and it answers in another, separated by the
# blank lines of the script. A BPE base model continues a transcript of named lines.
if cfg.style == "template" and tok.chat_template is None:
    raise UserError(f"{desc} was not fine-tuned on conversations, so it has no chat template; use --style=auto",
                    status=USAGE)
if cfg.style == "auto" and tok.name == "hf" and tok.chat_template is None:
    raise UserError(f"{desc} has no chat template (a base model, not an instruct one); chat with its instruct "
                    f"release, continue text with python sample.py --init_from={init_from}, or give --style=chat for "
                    f"plain 'User:' / 'Assistant:' lines", status=USAGE)
transcript, style = conversation.transcript_for(tok, cfg.style)


def unescape(text):  # --user='ROMEO:\n' typed in a shell arrives with a backslash and an n
    return text.replace("\\n", "\n").replace("\\t", "\t")


given = {k: unescape(getattr(cfg, k)) for k in ("user", "bot", "sep", "preamble") if getattr(cfg, k) is not None}
if given and not dataclasses.is_dataclass(transcript):  # a Hugging Face model's own Jinja template
    raise UserError(f"--{next(iter(given))} changes the chat or play style's prefixes, but {desc} is talked to in "
                    f"its own chat template; drop it, or give --style=chat", status=USAGE)
transcript = dataclasses.replace(transcript, **given) if given else transcript
if style != "template" and (not transcript.user.strip() or not transcript.bot.strip()):
    raise UserError("the speaker prefixes user and bot must contain some text, e.g. --user='ROMEO:\\n'", status=USAGE)
unspellable = transcript.unspellable(tok)
if unspellable:
    raise UserError(f"the {style} style's prefixes need {unspellable!r}, which the vocabulary of {desc} lacks (it "
                    f"was not trained on chats or plays); give prefixes it can spell (--user=, --bot=, --sep=, "
                    f"--preamble=), or continue text with python sample.py --out_dir={cfg.out_dir}", status=USAGE)
if style == "template":  # what the model reads is markup; what you read is named lines
    user, bot, sep = conversation.CHAT.user, conversation.CHAT.bot, conversation.CHAT.sep
else:
    user, bot, sep = transcript.user, transcript.bot, transcript.sep
stops = [*transcript.stops(), *map(unescape, cfg.stop)]
stop_tokens = tok.stop_ids
# keep room for a whole reply within the context; older turns are dropped first
reserve = min(cfg.max_new_tokens, block_size // 2)

interactive = sys.stdin is not None and sys.stdin.isatty()
if interactive:
    import readline  # noqa: F401  (line editing and up-arrow history for input())
int8 = "; int8 weights" if cfg.quantize == "int8" else ""
print(f"chatting with {desc}; {rt.why}{int8}; {style} style. {HELP}", file=sys.stderr)

generator = torch.Generator(device=device).manual_seed(cfg.seed)
turns = []  # (user line, reply) of the conversation so far


def reply(line):
    ids = transcript.fit(tok.encode, turns, line, block_size - reserve)
    x = torch.tensor(ids, dtype=torch.long, device=device)[None, ...]
    decoder, text = StreamDecoder(tok), StopText(stops, line_stop=transcript.line_stop())
    sys.stdout.write(bot)
    with torch.no_grad(), plan.autocast_context():
        for token in threads.paced(generate_stream(model, x, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                                   cfg.top_p, generator, stop_tokens=stop_tokens)):
            if int(token[0]) in stop_tokens:
                break
            sys.stdout.write(text.push(decoder.push(token[0])))
            sys.stdout.flush()
            if text.stopped:
                break
    if not text.stopped:
        sys.stdout.write(text.flush())
    answer = text.text.strip()
    sys.stdout.write("\n" + ("\n" if style == "play" else ""))
    sys.stdout.flush()
    turns.append((line, answer))
    return answer


# -----------------------------------------------------------------------------
# the conversation
# (the weights in the memory order this CPU multiplies fastest, until the conversation ends)
with decode_layout(model):
    if cfg.prompt is not None:
        reply(cfg.prompt)
        sys.exit(0)

    while True:
        try:
            line = input(user if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print(file=sys.stderr)
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            command = line.split()[0].lower()
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                turns.clear()
                print("(conversation forgotten)", file=sys.stderr)
            elif command == "/help":
                print(HELP, file=sys.stderr)
            else:
                print(f"unknown command {command}; {HELP}", file=sys.stderr)
            continue
        try:
            tok.encode(line)  # a line the vocabulary cannot spell is refused here, and the chat goes on
        except UserError as e:
            print(e, file=sys.stderr)
            continue
        if not interactive:
            sys.stdout.write(f"{user}{line}{sep}")  # piped input is not echoed: show it in the transcript
        try:
            reply(line)
        except KeyboardInterrupt:  # Ctrl-C stops the reply, not the chat
            print(file=sys.stderr)

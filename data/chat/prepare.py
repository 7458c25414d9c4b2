"""
Conversations for supervised fine-tuning (SFT): train.bin and val.bin in GPT-2 BPE, with loss masks
(train_mask.bin, val_mask.bin) that count only the assistant's replies, in data/chat/.

    python data/chat/prepare.py conversations.jsonl            # or --input=FILE_OR_FOLDER of .jsonl files
    pip install datasets && python data/chat/prepare.py --dataset=HuggingFaceTB/smol-smoltalk --limit=50000
    python train.py config/sft_gpt2.py && python chat.py --out_dir=out-sft

Each line of a .jsonl file is one conversation in the format most chat datasets use:
{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}. With --dataset, a
Hugging Face dataset (a hub name, or a builder such as json with --data_files=) with such a column
(--column=messages, --split=train), for users online. A folder contributes every .jsonl under it.

Every conversation is written in conversation.SFT's template (ChatML's markers as plain text in
GPT-2's BPE) and followed by <|endoftext|>. --vocab_from=data/NAME encodes them instead with the
tokenizer trained for that dataset (prepare.py --tokenizer=bpe), copied along, in which the markers
are special tokens: for fine-tuning a model pretrained on that data. --tokenizer=FOLDER_OR_HUB_ID writes
them instead in a Hugging Face model's own chat template and tokenizer (an instruct model's folder or hub
id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct), for fine-tuning that model (train.py
--init_from=FOLDER_OR_HUB_ID), which then chats in its own template. Only the assistant's messages
and their end-of-turn marker count in the loss, so the model learns to reply and to stop, never to
write the user's lines. The template goes into dataset.json; train.py records it in the run, and
chat.py talks to the run in it. Conversations without an assistant message are left out (they would
teach nothing). Every 20th conversation (--val_fraction=0.05), evenly spaced, at least one, is val;
from a small file more, up to a quarter of them, so that val holds one evaluation sequence of
GPT-2's context (1,024 tokens).
"""

import contextlib
import json
import math
import os
import sys

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")

from gptkit import conversation, dataprep
from gptkit.dataset import data_root
from gptkit.errors import USAGE, UserError

ARGS = ["input", "dataset", "data_files", "split", "column", "limit", "val_fraction", "vocab_from", "tokenizer", "out"]
BATCH = 1024  # conversations tokenized at a time (tiktoken's threads share a batch)
MIN_VAL_TOKENS = 1025  # one evaluation sequence of GPT-2's whole context (config/sft_gpt2.py), and so of any shorter
RECIPES = (("config/sft_gpt2_cpu.py", 256), ("config/sft_gpt2.py", 1024))  # the chat recipes and their block_size


def checked(messages, where):
    """The conversation's messages with their content stripped, or a sentence naming what is wrong. The
    content is stripped because chat.py strips what you type and what the model replies."""
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: expected a non-empty list of messages [{{'role': ..., 'content': ...}}, ...]")
    out = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in conversation.ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: a message must be {{'role': 'system'|'user'|'assistant', 'content': "
                            f"'...'}}, not {str(m)[:80]}")
        out.append({"role": m["role"], "content": m["content"].strip()})
    return out


def local_conversations(path, column):
    """(messages, where) of every line of a .jsonl file or of every .jsonl file under a folder."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".jsonl"))
        if not files:
            raise UserError(f"--input={path} holds no .jsonl files")
    elif os.path.isfile(path):
        files = [path]
    else:
        raise UserError(f"--input={path} does not exist; give a .jsonl file or a folder of them")
    for file in files:
        for lineno, line in dataprep.utf8_lines(file):
            if not line.strip():
                continue
            where = f"{file}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where} is not JSON ({e.msg}); each line must be one conversation") from None
            if not isinstance(row, dict) or column not in row:
                raise UserError(f"{where} has no {column!r} field; each line must be {{\"{column}\": [...]}} "
                                f"(another field name: --column=)")
            yield row[column], where


def hub_conversations(args, column):
    try:
        import datasets
    except ImportError:
        raise UserError("--dataset needs the Hugging Face datasets package: pip install datasets (or give local "
                        ".jsonl files with --input=, which does not)") from None
    name, split = args["dataset"], args.get("split", "train")
    kwargs = {"data_files": args["data_files"]} if args.get("data_files") else {}
    try:
        ds = datasets.load_dataset(name, split=split, **kwargs)
    except Exception as e:  # network, hub and file errors come in many types
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load the dataset {name!r} split {split!r} ({reason}); check the connection, the "
                        f"name and --split=, or give local .jsonl files with --input=") from None
    if column not in ds.column_names:
        raise UserError(f"the dataset has no {column!r} column (it has {', '.join(ds.column_names)}); name the "
                        f"conversations' column with --column=")
    for i, row in enumerate(ds):
        yield row[column], f"{name} row {i}"


def trained_tokenizer(folder):
    """The trained tokenizer of a prepared dataset (its meta.pkl names it), or a sentence."""
    from gptkit.tokenizer import load_tokenizer
    meta = dataprep.vocab_from(folder)
    if not meta or not meta.get("tokenizer"):
        raise UserError(f"--vocab_from={folder} holds no trained tokenizer (a meta.pkl naming tokenizer.json); "
                        f"give the folder of a dataset prepared with --tokenizer=bpe", status=USAGE)
    return load_tokenizer(meta, folder)


def main(argv):
    args = dataprep.parse_args(argv, ARGS, __doc__)
    if bool(args.get("input")) == bool(args.get("dataset")):
        raise UserError("give the conversations as a .jsonl file or folder (--input=, or just the path) or as a "
                        "Hugging Face dataset (--dataset=NAME)", status=USAGE)
    try:
        val_fraction = float(args.get("val_fraction", "0.05"))
        limit = int(args.get("limit", "0"))
    except ValueError as e:
        raise UserError(f"a numeric argument is not a number ({e}); e.g. --val_fraction=0.05 --limit=50000",
                        status=USAGE) from None
    if not 0.0 < val_fraction < 1.0 or limit < 0:
        raise UserError("--val_fraction must be between 0 and 1 and --limit >= 0 (0: every conversation)",
                        status=USAGE)
    column = args.get("column", "messages")
    source = (local_conversations(args["input"], column) if args.get("input") else hub_conversations(args, column))

    if args.get("vocab_from") and args.get("tokenizer"):
        raise UserError("--vocab_from and --tokenizer each name the tokenizer; give one", status=USAGE)
    hf_tok = None
    if args.get("tokenizer"):  # a Hugging Face model's own tokenizer and chat template
        from gptkit import hf_tokenizer
        hf_tok = hf_tokenizer.load(args["tokenizer"])
        if hf_tok.chat_template is None:
            raise UserError(f"--tokenizer={args['tokenizer']} has no chat template (a base model); give the folder or "
                            f"hub id of its instruct release, whose template the conversations are written in",
                            status=USAGE)
    template = hf_tok.chat_template if hf_tok else conversation.SFT
    convs, skipped = [], 0
    for messages, where in source:
        messages = checked(messages, where)
        if not any(m["role"] == "assistant" for m in messages):
            skipped += 1
            continue
        convs.append(template.segments(messages))
        if limit and len(convs) == limit:
            break
    n = len(convs)
    if n < 2:
        raise UserError(f"found {n} conversation(s) with an assistant message; it takes at least 2 (one for val)")
    asked = max(1, round(n * val_fraction))

    out = dataprep.out_folder(args, "chat")
    info = {"counted": "assistant tokens",
            "chat_template": {"jinja": hf_tok.template} if hf_tok else template.to_dict()}
    if hf_tok:
        # each conversation is whole in the template (a BOS or role marker opens the next): no end of text after it
        encoder, vocab_size, eot = dataprep.MaskedEncoder(hf_tok), hf_tok.vocab_size, None
        writer = dataprep.DatasetWriter(out, vocab_size, info=info, tokenizer=hf_tok)
    elif args.get("vocab_from"):
        tok = trained_tokenizer(args["vocab_from"])
        encoder, vocab_size, eot = dataprep.MaskedEncoder(tok), tok.vocab_size, tok.eot
        writer = dataprep.DatasetWriter(out, vocab_size, info=info, tokenizer=tok)
    else:
        from gptkit.tokenizer import BPETokenizer
        enc = BPETokenizer().enc
        encoder, vocab_size, eot = dataprep.MaskedEncoder(enc), enc.n_vocab, enc.eot_token
        writer = dataprep.DatasetWriter(out, vocab_size, info=info)
    import numpy as np
    eot_ids = np.array([eot] if eot is not None else [], writer.dtype)
    eot_mask = np.zeros(len(eot_ids), np.uint8)  # the EOT is not a reply

    def write(n_val):
        """Write the splits with n_val evenly spaced conversations in val; (tokens, counted) per split."""
        tokens, counted = {"train": 0, "val": 0}, {"train": 0, "val": 0}
        with contextlib.ExitStack() as files:
            bins = {s: (files.enter_context(writer.bin(s)), files.enter_context(writer.mask_bin(s))) for s in tokens}
            for start in range(0, n, BATCH):
                for i, (ids, mask) in enumerate(encoder.encode_batch(convs[start:start + BATCH]), start):
                    # conversation i is val when the evenly spaced val positions step past it
                    split = "val" if (i + 1) * n_val // n > i * n_val // n else "train"
                    ids_f, mask_f = bins[split]
                    ids.astype(writer.dtype).tofile(ids_f)
                    eot_ids.tofile(ids_f)
                    mask.tofile(mask_f)
                    eot_mask.tofile(mask_f)
                    tokens[split] += len(ids) + len(eot_ids)
                    counted[split] += int(mask.sum())
        return tokens, counted

    # A small file's share of val can be too short for a single evaluation sequence: val then takes more
    # conversations (at most a quarter of them), written again; a few thousand tokens cost nothing to redo.
    n_val = asked
    tokens, counted = write(n_val)
    while tokens["val"] < MIN_VAL_TOKENS and n_val < n // 4:
        n_val = min(n // 4, math.ceil(n_val * 1.2 * MIN_VAL_TOKENS / tokens["val"]))
        tokens, counted = write(n_val)
    counts = writer.finish()
    print(f"{n:,} conversations ({n - n_val:,} train, {n_val:,} val)"
          + (f"; left out {skipped:,} without an assistant message" if skipped else ""))
    if n_val > asked:
        print(f"val takes {n_val:,} conversations, not the {asked:,} of --val_fraction={val_fraction:g}, to hold one "
              f"evaluation sequence of GPT-2's context ({MIN_VAL_TOKENS - 1:,} tokens, config/sft_gpt2.py's block_size)"
              + (" as far as a quarter of them can" if tokens["val"] < MIN_VAL_TOKENS else ""))
    if tokens["val"] < MIN_VAL_TOKENS:  # an evaluation sequence needs block_size + 1 tokens (its targets shifted)
        fit = " and ".join(f"{r} ({b:,})" for r, b in RECIPES if b < tokens["val"])
        short = " and ".join(f"{r} ({b:,})" for r, b in RECIPES if b >= tokens["val"])
        print(f"note: val holds {tokens['val']:,} tokens, one evaluation sequence of a block_size up to "
              f"{tokens['val'] - 1:,}: " + (f"enough for {fit}, not for {short}" if fit else f"not enough for {short}")
              + f"; train with --block_size={tokens['val'] - 1} or less, or give more conversations")
    print(f"the loss counts the assistant's tokens: {counted['train']:,} of {tokens['train']:,} train tokens "
          f"({counted['train'] / tokens['train']:.0%}), {counted['val']:,} of {tokens['val']:,} val tokens")
    dataprep.report_split(out, counts, vocab_size)
    name = os.path.relpath(out, data_root())
    use = f"dataset={name}" if not name.startswith("..") and os.sep not in name else f"data_dir={out}"
    if hf_tok:
        print(f"fine-tune the model on it with: python train.py config/sft_gpt2_cpu.py --init_from={args['tokenizer']} "
              f"--{use} (--lora_rank=8 for LoRA adapters), then chat with the run in the model's template")
    elif args.get("vocab_from"):  # GPT-2's weights do not know this tokenizer: a run pretrained in it does
        print(f"fine-tune a run pretrained on {args['vocab_from']} with: python train.py config/sft_gpt2.py "
              f"--init_from=RUN_FOLDER --{use}")
    else:
        print(f"fine-tune on it with: python train.py config/sft_gpt2.py --{use}  (a GPU), or "
              f"config/sft_gpt2_cpu.py (a CPU, minutes)")


if __name__ == "__main__":
    main(sys.argv[1:])

"""
Evaluation sets as token ids: multiple-choice examples (HellaSwag, a JSONL file of your own) and texts for
bits per byte (a prepared dataset's split, a text file), read, checked and tokenised. No torch:
data/hellaswag/prepare.py checks its download with the code that reads it here.

A multiple-choice example is a context, two or more choices and the index of the right one. Each choice
is scored as the tokens of " " + choice after the context's tokens, as build-nanogpt's HellaSwag and
lm-evaluation-harness do (the harness encodes context and choice together and splits them; for GPT-2's
BPE that gives the same tokens unless the context ends in whitespace, which it then moves into the
choice). Your own file holds one example per line:

    {"context": "The capital of France is", "choices": ["Paris.", "Rome.", "a river."], "label": 0}

A text for bits per byte is scored with lm-evaluation-harness's rolling log-likelihood: every token is
predicted once, in windows of the model's context (see windows()).
"""

import json
import os
from dataclasses import dataclass

import numpy as np

from gptkit import fileio
from gptkit.dataset import Tokens, check_folder, data_root, mask_file
from gptkit.errors import USAGE, UserError
from gptkit.tokenizer import text_ids

# -----------------------------------------------------------------------------
# HellaSwag (Zellers et al. 2019): the files build-nanogpt downloads, and their sizes

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
HELLASWAG_SIZES = {"train": 39905, "val": 10042, "test": 10003}  # examples in the published files
HELLASWAG_SPLITS = tuple(HELLASWAG_SIZES)

# Published HellaSwag (val, 0-shot) levels, drawn as reference lines beside a run's curve (curves.py), by
# metric: build-nanogpt's method for acc and acc_norm (GPT-2 measured by build-nanogpt, GPT-3 from its
# paper, table 3.3, which build-nanogpt and llm.c draw beside acc_norm), lm-evaluation-harness's for
# acc_norm_chars.
REFERENCE_LEVELS = {
    "hellaswag_acc": [("GPT-2 124M", 0.2859), ("GPT-2 1.5B", 0.3842)],
    "hellaswag_acc_norm": [("GPT-2 124M", 0.2955), ("GPT-3 Small (125M)", 0.337), ("GPT-3 Medium (350M)", 0.436),
                           ("GPT-2 1.5B", 0.4893), ("GPT-3 Large (760M)", 0.510), ("GPT-3 XL (1.3B)", 0.547)],
    "hellaswag_acc_norm_chars": [("GPT-2 124M (lm-eval)", 0.3114), ("GPT-2 1.5B (lm-eval)", 0.5089)],
}


def hellaswag_path(split, root=None):
    return os.path.join(root or os.path.join(data_root(), "hellaswag"), f"hellaswag_{split}.jsonl")


def hellaswag_example(row, where, labelled=True):
    """(context, endings, label) of one line of HellaSwag's files, checked, as build-nanogpt renders it:
    the line's ctx and its four endings as they are (label None where the split has none)."""
    if not isinstance(row, dict) or not isinstance(row.get("ctx"), str):
        raise UserError(f"{where}: not a HellaSwag example (no \"ctx\" text); prepare HellaSwag again with "
                        f"data/hellaswag/prepare.py")
    endings = row.get("endings")
    if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) for e in endings)):
        raise UserError(f"{where}: a HellaSwag example has four endings, this one {endings!r:.80}; prepare "
                        f"HellaSwag again with data/hellaswag/prepare.py")
    label = row.get("label")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if labelled and not (type(label) is int and 0 <= label < 4):
        raise UserError(f"{where}: a HellaSwag label is 0 to 3, this one is {label!r}; prepare HellaSwag again "
                        f"with data/hellaswag/prepare.py")
    return row["ctx"], endings, label if labelled else None


def choice_example(row, where):
    """(context, choices, label) of one line of a multiple-choice JSONL file, checked."""
    form = 'each line must be {"context": "...", "choices": ["...", "..."], "label": i}'
    if not isinstance(row, dict):
        raise UserError(f"{where} is not a JSON object; {form}")
    missing = [k for k in ("context", "choices", "label") if k not in row]
    if missing:
        raise UserError(f"{where} has no {' or '.join(repr(k) for k in missing)}; {form}")
    context, choices, label = row["context"], row["choices"], row["label"]
    if not isinstance(context, str) or not context:
        raise UserError(f"{where}: the context must be a non-empty string, not {context!r:.60}; {form}")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise UserError(f"{where}: \"choices\" must be a list of at least two non-empty strings, not "
                        f"{choices!r:.60}; {form}")
    if type(label) is not int or not 0 <= label < len(choices):
        raise UserError(f"{where}: label {label!r} is not the index of one of its {len(choices)} choices "
                        f"(0 to {len(choices) - 1}); labels count from 0")
    twice = [c for i, c in enumerate(choices) if c in choices[:i]]
    if twice:
        # a repeated choice scores exactly as its twin, so a line with the answer twice is a coin toss between
        # them (and one with a wrong choice twice counts it double)
        raise UserError(f"{where}: the choice {twice[0]!r:.60} appears {choices.count(twice[0])} times; each choice of "
                        f"a line must differ from the others")
    return context, choices, label


def parse_lines(lines, name, parse, limit=0):
    """[(line number, parse(row, where))] of JSONL lines, blank ones skipped, at most `limit` (0: all)."""
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{name}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise UserError(f"{where} is not JSON ({fileio.reason(e)}); each line must be one JSON object, one "
                            f"example") from None
        out.append((number, parse(row, where)))
        if limit and len(out) >= limit:
            break
    if not out:
        raise UserError(f"{name} holds no examples; write one JSON object per line")
    return out


def read_lines(path, parse, limit=0):
    """parse_lines of a file, with a sentence for one that cannot be read."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte order mark (Windows Notepad) is no character
            return parse_lines(f, path, parse, limit)
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({fileio.reason(e)}); check the path") from None


# -----------------------------------------------------------------------------
# multiple choice as token ids


@dataclass
class Example:
    context: list   # token ids
    choices: list   # token ids of " " + choice, one list per choice
    label: int
    chars: list     # each choice's length in characters (without the space): the harness's acc_norm divides by it
    line: int       # where it is in its file, for messages


@dataclass
class ChoiceSet:
    name: str       # as asked for: "hellaswag" or the file's path
    examples: list


def unknown_characters(tok, texts):
    """The characters of texts (line, text) a character vocabulary lacks, and the first line with one;
    none for a byte-level BPE, which spells anything."""
    stoi = getattr(tok, "stoi", None)
    if stoi is None:
        return "", None
    missing, first = set(), None
    for line, text in texts:
        new = set(text) - stoi.keys()
        if new and first is None:
            first = line
        missing |= new
    return "".join(sorted(missing)), first


def refuse_unknown(tok, name, texts, what="examples"):
    missing, first = unknown_characters(tok, texts)
    if missing:
        shown = "".join(sorted(missing)[:20]) + ("..." if len(missing) > 20 else "")
        raise UserError(f"{name} has characters outside this character model's vocabulary ({len(missing)}: "
                        f"{shown!r}, the first on line {first}); a character model can score only text made of the "
                        f"characters it was trained on: use {what} written in them, or a GPT-2 BPE model")


def tokenise_choices(name, rows, tok, block_size):
    """A ChoiceSet of (line, (context, choices, label)) rows, every example checked to fit the model."""
    refuse_unknown(tok, name, ((line, c + " " + " ".join(ch)) for line, (c, ch, _) in rows))
    examples = []
    for line, (context, choices, label) in rows:
        ctx = tok.encode(context)
        ends = [text_ids(tok, " " + c) for c in choices]  # (a BOS only before the context)
        for j, end in enumerate(ends):
            # the last token of a choice is only predicted, never read: the model reads len(ctx) + len(end) - 1
            if len(ctx) + len(end) - 1 > block_size:
                raise UserError(f"{name}, line {line}: the context and choice {j} are {len(ctx) + len(end):,} tokens, "
                                f"more than the {block_size:,} the model reads at once (its block_size); shorten the "
                                f"example, or evaluate a model with a longer context")
        examples.append(Example(ctx, ends, label, [len(c) for c in choices], line))
    return ChoiceSet(name, examples)


def load_choices(spec, tok, block_size, split="val", limit=0):
    """The multiple-choice set `spec` names, as token ids: "hellaswag" (its prepared `split`) or the path
    of a JSONL file of your own; the first `limit` examples (0: all)."""
    if spec == "hellaswag":
        if split not in HELLASWAG_SPLITS:
            raise UserError(f"split={split} is not one of HellaSwag's splits ({', '.join(HELLASWAG_SPLITS)})",
                            status=USAGE)
        if split == "test":
            raise UserError("HellaSwag's test split has no labels (they are kept for its leaderboard), so it cannot "
                            "be scored here; use split=val (or train)", status=USAGE)
        path = hellaswag_path(split)
        if not os.path.exists(path):
            raise UserError(f"HellaSwag's {split} split is not prepared ({path} is missing); run python "
                            f"data/hellaswag/prepare.py{' --split=' + split if split != 'val' else ''}")
        rows = read_lines(path, hellaswag_example, limit)
        return tokenise_choices(spec, rows, tok, block_size)
    if os.path.isdir(spec):
        raise UserError(f"task {spec} is a folder; give the path of a .jsonl file of multiple-choice examples",
                        status=USAGE)
    if not spec.endswith(".jsonl") and not os.path.isfile(spec):
        raise UserError(f"task {spec!r} is unknown; give hellaswag, a .jsonl file of multiple-choice examples, "
                        f"val or train (bits per byte of the run's dataset) or text:FILE", status=USAGE)
    if not os.path.isfile(spec):
        raise UserError(f"{spec} does not exist; give the path of a JSONL file of multiple-choice examples")
    return tokenise_choices(spec, read_lines(spec, choice_example, limit), tok, block_size)


def metric_prefix(spec):
    """The name a set's figures carry in metrics.jsonl: hellaswag, or a file's name without .jsonl."""
    return spec if spec == "hellaswag" else os.path.splitext(os.path.basename(spec))[0]


# -----------------------------------------------------------------------------
# texts for bits per byte


@dataclass
class TextSet:
    name: str
    seq: np.ndarray      # token ids; the first is context only, each later one a target
    counted: np.ndarray  # bool, one per target (seq[1:]): whether it is scored
    nbytes: np.ndarray   # bytes of text each target stands for


def _text_set(name, ids, tok, counted=None):
    """Targets: every token, predicted from the one before, the first from the model's BOS, else from
    <|endoftext|> where the tokenizer has one (the harness's rolling rule: a document starts after a prefix
    token). A character vocabulary has no such token, so there the first character is context only.
    Tokens that stand for no text (<|endoftext|> inside a dataset) count in neither the bits nor the bytes."""
    ids = np.asarray(ids, dtype=np.int64)
    counted = np.ones(len(ids), dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
    start = tok.eot if getattr(tok, "bos", None) is None else tok.bos
    if start is not None:
        seq = np.concatenate([np.array([start]), ids])
    else:
        seq, counted = ids, counted[1:]
    if len(seq) < 2:
        raise UserError(f"{name} holds no token to score (a character model needs at least two characters: the "
                        f"first is context only)")
    nbytes = np.asarray(tok.token_bytes(), dtype=np.int64)[seq[1:]]
    return TextSet(name, seq, counted & (nbytes > 0), nbytes)


def load_text(path, tok):
    """A UTF-8 text file as one document."""
    if not path:
        raise UserError("text: names no file; give the path of a text file after it, e.g. --tasks=text:notes.txt",
                        status=USAGE)
    if os.path.isdir(path):
        raise UserError(f"text:{path} is a folder; give the path of a text file after text:", status=USAGE)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({fileio.reason(e)}); give text:PATH of a text file") from None
    refuse_unknown(tok, path, ((n, line) for n, line in enumerate(text.splitlines(), 1)), what="a text")
    return _text_set(f"text:{path}", text_ids(tok, text), tok)


MAX_SPLIT_TOKENS = 200_000_000  # 1.6 GB of int64 ids in memory; OpenWebText's val split is 4M, its train 9B


def load_split(folder, split, tok, name, max_tokens=0):
    """A prepared dataset's split as one stream (its first max_tokens, 0: all), its loss mask respected,
    after checking that its vocabulary is the model's."""
    meta, dtype, manifest, parts = check_folder(folder, os.path.basename(folder))
    if (meta or {}).get("stoi") != getattr(tok, "stoi", None):
        raise UserError(f"{folder} is in another vocabulary than the model's, so its token ids would mean other "
                        f"text; give --dataset=NAME of a dataset prepared in the model's vocabulary", status=USAGE)
    ids = Tokens(parts[split], dtype)  # one file, or shards
    if not max_tokens and len(ids) > MAX_SPLIT_TOKENS:
        raise UserError(f"the {split} split of {folder} holds {len(ids):,} tokens, more than this scores at once; "
                        f"score its start with --limit=N (windows of block_size tokens)", status=USAGE)
    n = min(len(ids), max_tokens or len(ids))
    counted = None
    if manifest and manifest.get("counted"):
        counted = np.memmap(os.path.join(folder, mask_file(split)), dtype=np.uint8, mode="r")[:n] > 0
    return _text_set(name, ids[:n], tok, counted)


def windows(n_targets, block_size, limit=0):
    """lm-evaluation-harness's rolling windows (get_rolling_token_windows with context_len=1) over a
    sequence whose targets are seq[1:]: [(start, length, scored)], the window reading seq[start:start +
    length] and scoring its last `scored` targets. The first window reads up to block_size tokens from
    the start; each next one scores the next block_size targets and reads the block_size tokens before
    each of them, so the last window reaches back to fill its context. Every target is scored once."""
    first = min(block_size, n_targets)
    out = [(0, first, first)]
    done = first
    while done < n_targets and (not limit or len(out) < limit):
        scored = min(n_targets - done, block_size)
        end = done + scored  # seq index of the window's last target
        out.append((end - block_size, block_size, scored))
        done = end
    return out[:limit] if limit else out

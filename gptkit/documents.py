"""
Documents for the prepare scripts of document datasets: a folder of local files or a Hugging Face dataset
(streamed), read from any document on; which documents go to val; a tokenizer trained on them; and the
recipe of data/openwebtext and data/fineweb_edu that tokenizes them into shards (shard_writer.py).
"""

import fractions
import json
import os

import numpy as np

from gptkit.dataprep import out_folder, parse_args, utf8_lines
from gptkit.dataset import token_dtype
from gptkit.errors import USAGE, UserError
from gptkit.shard_writer import ShardWriter, write_documents


# -----------------------------------------------------------------------------
# documents: local files or a Hugging Face dataset, read from any document on

def text_pieces(text, size=2**20):
    """A document cut after line ends into pieces of about `size` characters: the tokenizer trainer
    works on many pieces in parallel, and one 1 GB string would keep one core busy."""
    start = 0
    while start < len(text):
        end = start + size
        if end < len(text):
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        yield text[start:end]
        start = end


def val_rule(val_fraction, total=None):
    """is_val(i) for documents numbered from 0: val_fraction of them, evenly spaced (with 0.1, documents
    9, 19, 29, ...), decided from the number alone. Of a known total, round(total * val_fraction) and at
    least one; of a stream of unknown length, every (1 / val_fraction)th."""
    if total is not None:
        p, q = max(1, round(total * val_fraction)), total
    else:
        f = fractions.Fraction(val_fraction).limit_denominator(10**6)
        p, q = f.numerator, f.denominator
    return lambda i: (i + 1) * p // q > i * p // q


class LocalDocuments:
    """The documents of a folder: every .txt file is one, every line of a .jsonl file one ({"text": ...}),
    files in sorted order."""

    def __init__(self, folder, text_field="text"):
        if not os.path.isdir(folder):
            raise UserError(f"--input={folder} is not a folder; give a folder of .txt and/or .jsonl files")
        self.folder, self.text_field = os.path.abspath(folder), text_field
        self.files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                            if f.endswith((".txt", ".jsonl")))
        if not self.files:
            raise UserError(f"--input={folder} holds no .txt or .jsonl files")

    def describe(self):
        """What identifies the documents (a prepare continues only over the same ones)."""
        return dict(input=self.folder, text_field=self.text_field,
                    files=[[os.path.relpath(f, self.folder), os.path.getsize(f), os.stat(f).st_mtime_ns]
                           for f in self.files])

    def count(self):
        n = 0
        for path in self.files:
            if path.endswith(".txt"):
                n += 1
            else:
                n += sum(1 for _, line in utf8_lines(path) if line.strip())
        return n

    def read(self, start=0, state=None):
        """The texts from document number `start` on (those before are read and passed over)."""
        i = 0
        for path in self.files:
            if path.endswith(".txt"):
                if i >= start:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        yield f.read()
                i += 1
                continue
            for lineno, line in utf8_lines(path):
                if not line.strip():
                    continue
                if i >= start:
                    try:
                        text = json.loads(line)[self.text_field]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        text = None
                    if not isinstance(text, str):
                        raise UserError(f"{path}, line {lineno}: expected a JSON object with a {self.text_field!r} "
                                        f"string; fix the line or name the field with --text_field=")
                    yield text
                i += 1

    def state(self):
        return None  # the document number alone says where to go on


class HubDocuments:
    """The documents of a Hugging Face dataset, streamed (nothing is stored but what is being read): a hub
    name (with a config such as sample-10BT), a builder with data_files (json, parquet), or a folder
    written by Dataset.save_to_disk. A continued prepare starts the stream where the checkpoint's state
    says (datasets' state_dict: the file and row), without reading what came before."""

    def __init__(self, name, config=None, split="train", data_files=None, text_field="text"):
        self.name, self.config, self.split = name, config, split
        self.data_files, self.text_field = data_files, text_field
        self.ds = None

    def describe(self):
        return dict(dataset=self.name, config=self.config, split=self.split, data_files=self.data_files,
                    text_field=self.text_field)

    def _open(self):
        try:
            import datasets
        except ImportError:
            raise UserError("this needs the Hugging Face datasets package: pip install datasets (or give local files "
                            "with --input=FOLDER, which does not)") from None
        try:
            if os.path.isdir(self.name) and not self.data_files:  # Dataset.save_to_disk's folder
                ds = datasets.load_from_disk(self.name)
                ds = (ds[self.split] if isinstance(ds, datasets.DatasetDict) else ds).to_iterable_dataset()
            else:
                kwargs = {"data_files": self.data_files} if self.data_files else {}
                ds = datasets.load_dataset(self.name, self.config, split=self.split, streaming=True, **kwargs)
        except Exception as e:  # network, hub and file errors come in many types
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UserError(f"could not open the dataset {self.name!r} ({reason}); check the connection, the name, "
                            f"the config and --split, or give local files with --input=FOLDER") from None
        return ds

    def count(self):
        """The number of documents where the dataset's card says it, else None."""
        try:
            return self._open().info.splits[self.split].num_examples
        except Exception:  # no card, no split info: the progress bar goes without a total
            return None

    def read(self, start=0, state=None):
        ds = self._open()
        if state is not None:
            ds.load_state_dict(state)
        elif start:
            ds = ds.skip(start)
        self.ds = ds
        for row in ds:
            text = row.get(self.text_field)
            if not isinstance(text, str):
                raise UserError(f"the dataset's rows have no {self.text_field!r} text (they have "
                                f"{', '.join(row)}); name the text column with --text_field=")
            yield text

    def state(self):
        return self.ds.state_dict()


def train_tokenizer(source, is_val, vocab_size, max_chars):
    """A byte-level BPE (tokenizer.train_bpe) fit to the train documents of source, up to max_chars
    characters of them: val documents stay out, so bytes per token on val are measured on unseen text."""
    from gptkit.tokenizer import train_bpe

    def texts():
        seen = 0
        for i, text in enumerate(source.read()):
            if is_val(i):
                continue
            yield from text_pieces(text[:max_chars - seen])
            seen += min(len(text), max_chars - seen)
            if seen >= max_chars:
                return

    return train_bpe(texts(), vocab_size)


# -----------------------------------------------------------------------------
# the recipe of data/openwebtext and data/fineweb_edu

DOCUMENT_ARGS = ["input", "dataset", "config", "split", "data_files", "text_field", "tokenizer", "vocab_size",
                 "tokenizer_chars", "val_fraction", "shard_tokens", "batch_mb", "num_proc", "out"]


def prepare_documents(argv, doc, name, dataset, config=None):
    """Documents (--input=FOLDER, else a Hugging Face dataset, streamed: `dataset` and `config` by
    default) tokenized with GPT-2's BPE or a BPE trained on them, into shards in data/<name>/ that a
    killed run of the same command continues. What the two scripts' --help explains."""
    args = parse_args(argv, DOCUMENT_ARGS, doc)
    try:
        num_proc = int(args.get("num_proc", max(1, (os.cpu_count() or 2) // 2)))
        val_fraction = float(args.get("val_fraction", "0.0005"))  # nanoGPT's: about 4,000 OpenWebText documents
        batch_chars = int(float(args.get("batch_mb", "8")) * 2**20)  # what memory holds: text and its tokens
        # 100M tokens (200 MB of uint16) a shard, as llm.c writes FineWeb: a few dozen files for 10B tokens
        shard_tokens = int(float(args.get("shard_tokens", "1e8")))
        vocab_size = int(args.get("vocab_size", "32768"))
        tokenizer_chars = int(float(args.get("tokenizer_chars", "1e9")))
    except ValueError as e:
        raise UserError(f"a numeric argument is not a number ({e}); e.g. --num_proc=8 --val_fraction=0.0005 "
                        f"--shard_tokens=1e8", status=USAGE) from None
    if num_proc < 1 or not 0.0 < val_fraction < 1.0 or batch_chars < 1 or shard_tokens < 0 or tokenizer_chars < 1:
        raise UserError("--num_proc must be >= 1, --val_fraction between 0 and 1, --batch_mb and --tokenizer_chars "
                        "positive, --shard_tokens >= 0 (0: one train.bin and val.bin)", status=USAGE)
    kind = args.get("tokenizer", "gpt2")
    if kind not in ("gpt2", "bpe"):
        raise UserError(f"--tokenizer={kind} is not known; use --tokenizer=gpt2 (GPT-2's BPE) or --tokenizer=bpe "
                        f"(one trained on these documents, with --vocab_size=N)", status=USAGE)
    if args.get("input") and (args.get("dataset") or args.get("data_files") or args.get("config")):
        raise UserError("give either --input=FOLDER (local files) or --dataset/--config/--data_files (Hugging Face), "
                        "not both", status=USAGE)
    field = args.get("text_field", "text")
    if args.get("input"):
        source = LocalDocuments(args["input"], field)
    else:
        source = HubDocuments(args.get("dataset", dataset), args.get("config", None if args.get("dataset") else config),
                              args.get("split", "train"), args.get("data_files"), field)
    total = source.count()
    if total is not None and total < 2:
        where = f"--input={args['input']}" if args.get("input") else f"the dataset {source.name!r}"
        raise UserError(f"{where} holds {total} document(s); it takes at least 2 (one for val)")
    is_val = val_rule(val_fraction, total)
    tokenizer = dict(kind="bpe", vocab_size=vocab_size, chars=tokenizer_chars) if kind == "bpe" else "gpt2"
    settings = dict(source=source.describe(), tokenizer=tokenizer, val_fraction=val_fraction,
                    shard_tokens=shard_tokens)
    out = out_folder(args, name)
    writer = ShardWriter(out, settings, shard_tokens)
    try:
        counts, docs, tok = _prepare_shards(writer, source, is_val, kind, vocab_size, tokenizer_chars, batch_chars,
                                            num_proc)
    finally:
        writer.lock.release()  # now, not when the process ends: a caller that goes on may prepare again
    done = {s: len(writer.progress["splits"][s]["done"]) for s in ("train", "val")}
    shards = f" in {done['train']} and {done['val']} shards" if shard_tokens else ""
    print(f"{out}: {docs:,} documents; train {counts['train']:,} tokens, val {counts['val']:,} tokens{shards}; "
          f"vocabulary {tok.vocab_size:,} ({'trained BPE' if kind == 'bpe' else 'GPT-2 BPE'}, "
          f"{np.dtype(token_dtype(tok.vocab_size)).name})")


def _prepare_shards(writer, source, is_val, kind, vocab_size, tokenizer_chars, batch_chars, num_proc):
    """The documents tokenized into the writer's shards: (token counts, documents, tokenizer)."""
    tok = writer.tokenizer
    if tok is None and kind == "bpe":
        import time
        print(f"training a byte-level BPE of {vocab_size:,} tokens on the first {tokenizer_chars:,} characters of "
              f"the train documents")
        t0 = time.perf_counter()
        tok = train_tokenizer(source, is_val, vocab_size, tokenizer_chars)
        print(f"trained in {time.perf_counter() - t0:.1f} s")
    elif tok is None:
        from gptkit.tokenizer import BPETokenizer
        tok = BPETokenizer()
    start, state = writer.open(tok)
    docs = write_documents(source, writer, tok, is_val, batch_chars, num_proc, start, state)
    return writer.finish(docs, source.state()), docs, tok

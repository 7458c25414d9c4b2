"""
What the data/<name>/prepare.py scripts share: their arguments and --help, a corpus read from a file
or downloaded once, documents read from local files or a Hugging Face dataset (streamed), a tokenizer
trained on them, and writing a dataset folder that is always either consistent or refused: in one
go (DatasetWriter), or as shards that a killed prepare continues (ShardWriter, write_documents).
"""

import fractions
import json
import os
import re
import shutil
import urllib.request

import numpy as np

from gptkit import fileio, runs
from gptkit.dataset import (HEADER_BYTES, MANIFEST, SPLITS, data_root, file_sha256, mask_file, shard_header,
                            shard_name, token_dtype, tokenizer_id, write_meta)
from gptkit.errors import USAGE, UserError
from gptkit.tokenizer import TOKENIZER_FILE

# what a prepare writes besides dataset.json, meta.pkl and tokenizer.json: one-file splits, shards,
# their unfinished .partial files and loss masks; a new preparation removes those of an earlier one
LOCK = "prepare.lock"
OUTPUT_FILE = re.compile(r"^(train|val)(_\d{6})?\.bin(\.partial)?$|^(train|val)_mask\.bin$")


def remove_outputs(folder, keep=()):
    for name in os.listdir(folder):
        if OUTPUT_FILE.match(name) and name not in keep:
            fileio.remove(os.path.join(folder, name))


def claim(folder):
    """Create folder if needed and take its one-writer lock (prepare.lock, the lock train.py takes on a run
    folder), held until the writer finishes or the process ends: two prepares writing one dataset at once
    would mix their files (and both say they finished), so the second is refused, told who holds it."""
    return runs.RunLock(folder, LOCK, who="another prepare script",
                        instead="choose another --out folder").acquire()


def vocab_from(folder):
    """The meta.pkl of the prepared dataset --vocab_from names (None when it holds none), or one sentence when
    there is no such folder."""
    from gptkit.dataset import read_meta
    if not os.path.isdir(folder):
        raise UserError(f"--vocab_from={folder} is not a folder; give the folder of a prepared dataset "
                        f"(e.g. {os.path.join(data_root(), 'NAME')})", status=USAGE)
    return read_meta(folder)


def parse_args(argv, allowed, doc, positional="input"):
    """A prepare script's --name=value flags as a dict of strings. A bare argument is the value of
    `positional` (`prepare.py book.txt` means --input=book.txt); --help prints the script's doc."""
    if any(a in ("-h", "--help") for a in argv):
        print(doc.strip())
        print("\narguments: " + " ".join(f"--{a}=..." for a in allowed))
        raise SystemExit(0)  # as argparse does
    out = {}
    for arg in argv:
        if not arg.startswith("-") and positional and positional not in out:
            out[positional] = arg
            continue
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if not eq or name not in allowed:
            raise UserError(f"unknown argument {arg!r}; this script takes " + ", ".join(f"--{a}=..." for a in allowed)
                            + " (--help explains them)", status=USAGE)
        out[name] = value
    return out


def out_folder(args, name):
    """--out, else data/<name> under the data root (where dataset=<name> finds it)."""
    return os.path.abspath(args.get("out") or os.path.join(data_root(), name))


def read_utf8(path):
    """A text file's contents, or one sentence when it is not UTF-8 text."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start} cannot be decoded); convert it (e.g. iconv -t "
                        f"utf-8) or leave it out") from None


def utf8_lines(path):
    """(line number, line) of a text file, or one sentence naming the first line that is not UTF-8. A byte
    order mark that some editors put at the start (Windows Notepad) is not part of the first line."""
    lineno = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{path}, line {lineno}, is not UTF-8 text; convert the file (e.g. iconv -t utf-8) or "
                                f"leave it out") from None


def read_text(input_path, url, cache_path):
    """The corpus as a string: from input_path if given, else from cache_path, else downloaded there."""
    if input_path:
        if not os.path.isfile(input_path):
            raise UserError(f"--input={input_path} does not exist; give the path of a text file")
        return read_utf8(input_path)
    if not os.path.exists(cache_path):
        print(f"downloading {url}")
        os.makedirs(os.path.dirname(cache_path), exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=30) as r, fileio.atomic_open(cache_path, "wb") as f:
                shutil.copyfileobj(r, f)
        except (OSError, UserError) as e:
            raise UserError(f"could not download {url} ({fileio.reason(e)}); download it by hand and run again "
                            f"with --input=path/to/input.txt") from None
    return read_utf8(cache_path)


def split_point(n, val_fraction, source, unit="tokens"):
    """Where the train split of n tokens ends (the rest is val), or one sentence when either would be empty."""
    split = int(n * (1 - val_fraction))
    if n == 0:
        raise UserError(f"{source} is empty: there is nothing to train on; give a text file with some text in it")
    if split == 0 or split == n:
        raise UserError(f"{source} is too small to split into train and val ({n} {unit}); give more text"
                        + (" or another --val_fraction" if unit == "tokens" else ""))
    return split


class DatasetWriter:
    """Writes a dataset folder so that training can tell a finished preparation from an interrupted one:
    dataset.json is first rewritten as unfinished, then the bins and meta.pkl are replaced (each
    atomically), and dataset.json is written last with their sizes and the vocabulary's hash.
    `info` goes into dataset.json as it is: "counted" (what the loss masks, written with write(...,
    mask=...), count) and "chat_template" (see dataset.py). With a trained tokenizer (tokenizer.py's
    TrainedTokenizer) the vocabulary is its tokenizer.json and the meta.pkl that names it."""

    def __init__(self, folder, vocab_size, meta=None, info=None, tokenizer=None):
        if tokenizer is not None:
            meta, vocab_size = tokenizer.meta(), tokenizer.vocab_size
        self.folder, self.vocab_size, self.meta, self.info = folder, vocab_size, meta, info or {}
        self.tokenizer = tokenizer
        self.dtype = np.dtype(token_dtype(vocab_size))
        if self.dtype == np.uint32:
            self.meta = dict(meta or {"vocab_size": vocab_size}, dtype="uint32")  # Batches reads the dtype here
        self.lock = claim(folder)
        fileio.remove_stale_temps(folder)
        for f in os.listdir(folder):
            if f.endswith(".tmp"):  # fixed temporary names of earlier versions
                fileio.remove(os.path.join(folder, f))
        self._manifest(complete=False)

    def bin(self, split):
        """A file object for <split>.bin, replaced atomically when the block ends (for streaming)."""
        return fileio.atomic_open(os.path.join(self.folder, f"{split}.bin"), "wb")

    def mask_bin(self, split):
        """A file object for <split>_mask.bin (one uint8 per token: 1 where the target counts)."""
        return fileio.atomic_open(os.path.join(self.folder, mask_file(split)), "wb")

    def write(self, split, ids, mask=None):
        arr = np.asarray(ids, dtype=self.dtype)
        with self.bin(split) as f:
            arr.tofile(f)
        if mask is not None:
            assert len(mask) == len(arr)
            with self.mask_bin(split) as f:
                np.asarray(mask, dtype=np.uint8).tofile(f)
        return len(arr)

    def finish(self):
        meta_path = os.path.join(self.folder, "meta.pkl")
        if self.meta is not None:
            write_meta(self.meta, self.folder)
        else:
            fileio.remove(meta_path)  # a stale character vocabulary would mislead train.py
        files = {f"{s}.bin": {"bytes": os.path.getsize(os.path.join(self.folder, f"{s}.bin"))} for s in SPLITS}
        for s in SPLITS:
            path = os.path.join(self.folder, mask_file(s))
            if self.info.get("counted"):
                files[mask_file(s)] = {"bytes": os.path.getsize(path)}
            else:
                fileio.remove(path)  # a stale mask of an earlier preparation
        remove_outputs(self.folder, keep=files)  # shards of an earlier sharded preparation
        if self.meta is not None:
            files["meta.pkl"] = {"sha256": file_sha256(meta_path)}
        files.update(write_tokenizer(self.tokenizer, self.folder))
        self._manifest(complete=True, files=files)
        self.lock.release()  # finished: the folder is free for the next writer
        return {s: files[f"{s}.bin"]["bytes"] // self.dtype.itemsize for s in SPLITS}

    def _manifest(self, complete, files=None):
        with fileio.atomic_open(os.path.join(self.folder, MANIFEST), "w") as f:
            extra = dict(tokenizer=tokenizer_id(self.meta), **self.info) if complete else {}
            json.dump(dict(complete=complete, vocab_size=self.vocab_size, dtype=self.dtype.name, files=files or {},
                           **extra), f, indent=1)


def write_tokenizer(tokenizer, folder):
    """tokenizer.json of a trained tokenizer (or none, removing a stale one); its entry of dataset.json's files."""
    path = os.path.join(folder, TOKENIZER_FILE)
    if tokenizer is None or not hasattr(tokenizer, "json"):
        fileio.remove(path)
        return {}
    with fileio.atomic_open(path, "wb") as f:
        f.write(tokenizer.json.encode("utf-8"))
    return {TOKENIZER_FILE: {"sha256": tokenizer.sha256}}


class MaskedEncoder:
    """Text pieces, some of which count in the loss, as token ids and a mask (1 for a counted token).
    The pieces are encoded as one text, so the tokens are those of the whole text (what chat.py
    encodes); a token counts when its first byte lies in a counted piece (a token may straddle two
    pieces: GPT-2's BPE joins '.<' across a reply's end and its end marker). `enc` is tiktoken's GPT-2
    encoding (markers are text) or a TrainedTokenizer (markers are its special tokens)."""

    def __init__(self, enc):
        self.enc = enc
        self.trained = hasattr(enc, "encode_with_starts")
        if not self.trained:
            self.token_bytes = np.array([len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)])

    def encode_batch(self, documents, num_threads=8):
        """[(ids, mask)] of documents, each a list of (text, counted) pieces."""
        texts = ["".join(t for t, _ in pieces) for pieces in documents]
        out = []
        if self.trained:  # where each token starts, in characters
            encoded = [(np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64))
                       for ids, starts in self.enc.encode_with_starts(texts)]
            size = len
        else:  # in bytes
            encoded = []
            for ids in self.enc.encode_ordinary_batch(texts, num_threads=num_threads):
                ids = np.asarray(ids, dtype=np.int64)
                encoded.append((ids, np.cumsum(self.token_bytes[ids]) - self.token_bytes[ids]))

            def size(t):
                return len(t.encode("utf-8"))
        for pieces, (ids, starts) in zip(documents, encoded):
            ends = np.cumsum([size(t) for t, _ in pieces])  # end of each piece
            piece = np.searchsorted(ends, starts, side="right")  # the piece each token starts in
            counted = np.array([c for _, c in pieces], dtype=np.uint8)
            out.append((ids, counted[piece]))
        return out


def report_split(folder, counts, vocab_size):
    print(f"{folder}: train.bin {counts['train']:,} tokens, val.bin {counts['val']:,} tokens, vocab {vocab_size:,} "
          f"({np.dtype(token_dtype(vocab_size)).name})")


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
# shards, written so that a killed prepare continues

class ShardWriter:
    """Writes the token streams of a dataset's splits as they come, into numbered shards of shard_tokens
    tokens (dataset.py's format) or, with shard_tokens=0, into one <split>.bin each (nanoGPT's layout),
    so that a prepare killed at any moment continues where it stopped and ends with the very bytes an
    uninterrupted one writes.

    The shard under way is <name>.partial, appended to; a full one gets its header and is renamed to its
    name. After each batch of documents, checkpoint() makes what was appended durable (fsync) and records
    in dataset.json, still marked unfinished, how many documents are done, the source's position and
    each split's shards and tokens. A prepare started again with the same settings cuts the partial
    files back to that record and goes on from its document; with other settings it starts over.
    Memory holds what the caller adds, whatever the shard size.

    Use: writer = ShardWriter(...); tok = writer.tokenizer or make one; start, state = writer.open(tok);
    add(split, tokens) and checkpoint(docs, state) as documents are done; finish(docs, state)."""

    def __init__(self, folder, settings, shard_tokens):
        self.folder, self.shard_tokens = os.path.abspath(folder), shard_tokens
        self.settings = json.loads(json.dumps(settings))  # as it reads back from dataset.json
        self.files = {}
        self.lock = claim(self.folder)  # before reading the progress another prepare may be writing
        self.progress = self._unfinished()
        self.tokenizer = None  # the tokenizer of the prepare being continued
        if self.progress is not None:
            self.tokenizer = self._their_tokenizer()
            if self.tokenizer is None:
                self.progress = None

    # -- the prepare being continued

    def _unfinished(self):
        try:
            with open(os.path.join(self.folder, MANIFEST)) as f:
                manifest = json.load(f)
            progress = manifest["progress"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if manifest.get("complete") or progress.get("settings") != self.settings:
            return None
        return progress

    def _their_tokenizer(self):
        from gptkit.tokenizer import BPETokenizer, TrainedTokenizer
        vocabulary = self.progress.get("vocabulary")
        try:
            if vocabulary == "gpt2":
                return BPETokenizer()
            if isinstance(vocabulary, str) and vocabulary.startswith("bpe:"):
                tok = TrainedTokenizer.load(os.path.join(self.folder, TOKENIZER_FILE))
                return tok if tok.id == vocabulary else None
        except UserError:
            pass
        return None

    def _name(self, split, index):
        return shard_name(split, index) if self.shard_tokens else f"{split}.bin"

    def _header(self):
        return HEADER_BYTES if self.shard_tokens else 0

    def _restore(self):
        """Cut the files back to the last checkpoint; False where they cannot be (then start over)."""
        for split in SPLITS:
            state = self.progress["splits"][split]
            for shard in state["done"]:
                path = os.path.join(self.folder, shard["file"])
                size = self._header() + shard["tokens"] * self.dtype.itemsize
                if not os.path.isfile(path) or os.path.getsize(path) != size:
                    return False
            name = os.path.join(self.folder, self._name(split, len(state["done"])))
            partial, size = name + ".partial", self._header() + state["tokens"] * self.dtype.itemsize
            if state["tokens"] == 0:
                fileio.remove(partial)
                fileio.remove(name)
            elif os.path.isfile(partial) and os.path.getsize(partial) >= size:
                fileio.remove(name)
            elif os.path.isfile(name) and os.path.getsize(name) >= size:
                os.replace(name, partial)  # completed after the checkpoint: it is again the shard under way
            else:
                return False
            if state["tokens"]:
                os.truncate(partial, size)
            keep = {s["file"] for s in state["done"]} | {os.path.basename(partial)}
            for f in os.listdir(self.folder):  # written after the checkpoint
                if OUTPUT_FILE.match(f) and f.startswith(f"{split}_" if self.shard_tokens else f"{split}.") \
                        and f not in keep:
                    fileio.remove(os.path.join(self.folder, f))
        return True

    # -- writing

    def open(self, tok):
        """Start writing in tok's ids: go on with the unfinished prepare (tok is then self.tokenizer), or
        start over. Returns (documents done, the source's state) to read on from."""
        self.tok, self.dtype = tok, np.dtype(token_dtype(tok.vocab_size))
        os.makedirs(self.folder, exist_ok=True)
        fileio.remove_stale_temps(self.folder)
        if self.progress is not None and self.tokenizer is tok and self._restore():
            print(f"continuing the unfinished prepare in {self.folder} from document {self.progress['docs']:,}")
        else:
            self.progress = dict(settings=self.settings, vocabulary=None, docs=0, source=None,
                                 splits={s: {"done": [], "tokens": 0} for s in SPLITS})
            self._manifest()  # unfinished from here on: what the folder held is no longer a dataset
            remove_outputs(self.folder)
            fileio.remove(os.path.join(self.folder, "meta.pkl"))
            write_tokenizer(tok, self.folder)
            self.progress["vocabulary"] = tok.id
            self._manifest()
        return self.progress["docs"], self.progress["source"]

    def _file(self, split):
        if split not in self.files:
            index = len(self.progress["splits"][split]["done"])
            path = os.path.join(self.folder, self._name(split, index)) + ".partial"
            if os.path.exists(path):
                f = open(path, "r+b")
                f.seek(0, os.SEEK_END)
            else:
                f = open(path, "w+b")
                f.write(b"\0" * self._header())  # the header is written when the shard is full
            self.files[split] = f
        return self.files[split]

    def add(self, split, tokens):
        """Append tokens (an array of the dataset's dtype) to the split, starting new shards as they fill."""
        state = self.progress["splits"][split]
        while len(tokens):
            room = self.shard_tokens - state["tokens"] if self.shard_tokens else len(tokens)
            self._file(split).write(tokens[:room].tobytes())
            state["tokens"] += len(tokens[:room])
            tokens = tokens[room:]
            if self.shard_tokens and state["tokens"] == self.shard_tokens:
                self._close(split)

    def _close(self, split):
        """Give the shard under way its header and its name."""
        state = self.progress["splits"][split]
        f = self._file(split)
        name = self._name(split, len(state["done"]))
        if self.shard_tokens:
            f.seek(0)
            f.write(shard_header(split, len(state["done"]), state["tokens"], self.dtype, self.tok.id))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        del self.files[split]
        os.replace(os.path.join(self.folder, name + ".partial"), os.path.join(self.folder, name))
        state["done"].append(dict(file=name, tokens=state["tokens"]))
        state["tokens"] = 0

    def checkpoint(self, docs, source_state):
        """Record that the first `docs` documents are written (durably) and where the source goes on."""
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
        fileio.fsync_folder(self.folder)  # the renames of shards completed since the last checkpoint
        self.progress.update(docs=docs, source=source_state)
        self._manifest()

    def _manifest(self, complete=None):
        body = complete or dict(complete=False, files={}, progress=self.progress)
        with fileio.atomic_open(os.path.join(self.folder, MANIFEST), "w") as f:
            json.dump(dict(vocab_size=self.tok.vocab_size, dtype=self.dtype.name, **body), f, indent=1)

    def finish(self, docs, source_state):
        """Close the last shards and write meta.pkl and the finished dataset.json. Returns the token counts."""
        self.checkpoint(docs, source_state)
        splits = self.progress["splits"]
        for split in SPLITS:
            if splits[split]["tokens"]:
                self._close(split)
            if not splits[split]["done"]:
                raise UserError(f"the {split} split got no document ({docs:,} documents in all); give more documents "
                                f"or a larger --val_fraction")
        meta = self.tok.meta()
        if meta is not None and self.dtype == np.uint32:
            meta = dict(meta, dtype="uint32")  # Batches reads the dtype here
        files = {}
        if meta is not None:
            write_meta(meta, self.folder)
            files["meta.pkl"] = {"sha256": file_sha256(os.path.join(self.folder, "meta.pkl"))}
        if hasattr(self.tok, "json"):
            files[TOKENIZER_FILE] = {"sha256": self.tok.sha256}
        counts = {s: sum(d["tokens"] for d in splits[s]["done"]) for s in SPLITS}
        body = dict(complete=True, tokenizer=self.tok.id, eot=self.tok.eot, documents=docs, tokens=counts)
        if self.shard_tokens:
            body.update(files=files, shards={s: splits[s]["done"] for s in SPLITS})
        else:
            body.update(files={**files, **{f"{s}.bin": {"bytes": counts[s] * self.dtype.itemsize} for s in SPLITS}})
        self._manifest(body)
        self.lock.release()  # finished: the folder is free for the next writer
        return counts


def write_documents(source, writer, tok, is_val, batch_chars, num_threads=8, start=0, state=None):
    """Tokenize the documents of source, from document `start` (at the source's `state`), a batch of
    batch_chars characters at a time, each document followed by end of text, into the writer's train
    or val split by is_val(document number); a checkpoint after every batch. Returns the number of
    documents."""
    from tqdm import tqdm

    def flush(texts, first):
        out = {s: [] for s in SPLITS}
        for i, ids in enumerate(tok.encode_ordinary_batch(texts, num_threads=num_threads), first):
            doc = np.empty(len(ids) + 1, dtype=writer.dtype)
            doc[:-1] = ids
            doc[-1] = tok.eot  # end of text closes every document
            out["val" if is_val(i) else "train"].append(doc)
        for split, docs in out.items():
            if docs:
                writer.add(split, np.concatenate(docs))

    bar = tqdm(total=source.count(), initial=start, unit="doc", desc="tokenizing", dynamic_ncols=True)
    texts, chars, n = [], 0, start
    try:
        for text in source.read(start, state):
            texts.append(text)
            chars += len(text)
            n += 1
            if chars >= batch_chars:
                flush(texts, n - len(texts))
                writer.checkpoint(n, source.state())
                bar.update(len(texts))
                texts, chars = [], 0
        flush(texts, n - len(texts))
        bar.update(len(texts))
    finally:
        bar.close()  # ends the progress line, so an error starts its own
    return n


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

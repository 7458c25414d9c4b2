"""
What every data/<name>/prepare.py script shares: its arguments and --help, the folder it claims, a corpus
read from a file or downloaded once, and a dataset folder written in one go that is always either
consistent or refused (DatasetWriter). Document datasets: documents.py; shards a killed prepare
continues: shard_writer.py.
"""

import json
import os
import re
import shutil
import urllib.request

import numpy as np

from gptkit import fileio, runs
from gptkit.dataset import MANIFEST, SPLITS, data_root, file_sha256, mask_file, token_dtype, tokenizer_id, write_meta
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

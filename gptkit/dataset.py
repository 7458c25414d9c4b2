"""
A prepared dataset on disk: its token files, vocabulary and manifest, the check that they belong
together, and a split's tokens read as one stream (gptkit/batches.py draws the batches from them).

A prepared dataset is a folder data/<name>/ with train.bin and val.bin (flat arrays of token ids,
uint16, or uint32 when the vocabulary does not fit in 16 bits), for character-level data meta.pkl
({'vocab_size', 'stoi', 'itos'}, the layout nanoGPT writes; a uint32 dataset also records its dtype
there), and dataset.json, written last by this project's prepare scripts: the sizes, dtype and
vocabulary of the other files, so that a folder left half-rewritten by a killed prepare is refused
instead of trained on. Folders prepared by nanoGPT have no dataset.json and train as they always did.

A dataset may also say which targets count in the loss: train_mask.bin and val_mask.bin (one uint8 per
token, 1 where predicting that token counts), named in dataset.json with what they count ("counted",
e.g. "assistant tokens"). Batches then carry -1, which the loss ignores, at the other targets.
dataset.json may also hold the chat template the data was written in (data/chat/prepare.py), which
training passes on to the run so that chat.py talks in it.

A dataset prepared with a trained tokenizer (data/corpus/prepare.py --tokenizer=bpe) holds it as
tokenizer.json, named in meta.pkl with its hash; train.py copies both into the run (copy_vocabulary).

A large dataset is split into numbered shards, train_000000.bin, train_000001.bin, ... and
val_000000.bin, ... (data/fineweb_edu/prepare.py), listed in dataset.json. Each shard is a 1 KiB
header (a magic line, then JSON: split, index, tokens, dtype, tokenizer) and its tokens; the shards of
a split read as one stream, exactly the tokens a single <split>.bin would hold, so the batches of a
sharded dataset are those of the same dataset in one file. Each shard is memory-mapped when a row
first falls in it: a process reads only the pages its rows touch.
"""

import hashlib
import json
import os
import pickle

import numpy as np

from gptkit import fileio
from gptkit.errors import UserError
from gptkit.tokenizer import GPT2_EOT, TOKENIZER_FILE

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder of train.py and data/
MANIFEST = "dataset.json"
SPLITS = ("train", "val")


def data_root():
    """Where dataset=<name> is looked up: data/ beside the code, or $GPT_DATA_ROOT (datasets on
    another disk; the tests keep theirs out of the checkout this way)."""
    return os.environ.get("GPT_DATA_ROOT") or os.path.join(PROJECT, "data")


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


# -----------------------------------------------------------------------------
# meta.pkl: read with an unpickler that builds nothing but plain values

class _Refused(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """meta.pkl holds dicts, lists, strings and numbers, which pickle stores without naming any class.
    A file that names one (a class, a function such as os.system) is refused before anything runs."""

    def find_class(self, module, name):
        raise _Refused(f"it refers to {module}.{name}")


def check_meta(meta, path):
    """The vocabulary a meta.pkl must describe, or a sentence saying what is wrong with it."""
    if not isinstance(meta, dict) or not isinstance(meta.get("vocab_size"), int) or meta["vocab_size"] < 1:
        raise UserError(f"{path} is not a vocabulary file: it should be a dict with a positive 'vocab_size' "
                        f"(nanoGPT's layout); prepare the dataset again")
    if "stoi" in meta or "itos" in meta:
        stoi, itos = meta.get("stoi"), meta.get("itos")
        ok = (isinstance(stoi, dict) and isinstance(itos, dict) and len(stoi) == len(itos) == meta["vocab_size"]
              and all(isinstance(k, str) and isinstance(v, int) for k, v in stoi.items())
              and all(isinstance(k, int) and isinstance(v, str) for k, v in itos.items()))
        if not ok:
            raise UserError(f"{path} has a broken character vocabulary (stoi/itos do not match vocab_size "
                            f"{meta['vocab_size']}); prepare the dataset again")
    if meta.get("dtype", "uint16") not in ("uint16", "uint32"):
        raise UserError(f"{path} names the token dtype {meta.get('dtype')!r}; only uint16 and uint32 are read")
    if "tokenizer" in meta and not (meta["tokenizer"] == TOKENIZER_FILE and isinstance(meta.get("eot"), int)
                                    and isinstance(meta.get("tokenizer_sha256"), str)):
        raise UserError(f"{path} names a trained tokenizer but not as a prepare script writes it ({TOKENIZER_FILE}, "
                        f"its hash and its end-of-text id); prepare the dataset again")
    return meta


def read_meta(folder):
    """The folder's meta.pkl (None when it has none), read safely: see _PlainUnpickler."""
    path = os.path.join(folder, "meta.pkl")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            meta = _PlainUnpickler(f).load()
    except _Refused as e:
        raise UserError(f"{path} was not loaded: {fileio.reason(e)}, and a vocabulary file holds only plain "
                        f"values, so loading it could run code; delete it and prepare the dataset again") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OSError) as e:
        raise UserError(f"{path} is truncated or not a pickle ({fileio.reason(e)}); prepare the dataset "
                        f"again") from None
    return check_meta(meta, path)


def same_vocabulary(a, b):
    """Whether two vocabularies (meta.pkl dicts, None for GPT-2's BPE) give every token id the same text:
    the same size is not enough, a re-prepared corpus can map the same number of characters otherwise
    (or train another tokenizer of the same size)."""
    if a is None or b is None:
        return a is None and b is None
    return (a.get("vocab_size"), a.get("stoi"), a.get("tokenizer_sha256")) == \
        (b.get("vocab_size"), b.get("stoi"), b.get("tokenizer_sha256"))


def write_meta(meta, folder):
    with fileio.atomic_open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump(meta, f)


def copy_vocabulary(meta, source, folder):
    """Make folder's vocabulary files those of meta, read from the folder `source`: meta.pkl, and the
    tokenizer.json it names (a trained tokenizer); files of another vocabulary are removed, so that
    a run's folder always holds the vocabulary it was trained in (sample.py, chat.py, export.py read it)."""
    tokenizer = os.path.join(folder, TOKENIZER_FILE)
    if meta is not None and meta.get("tokenizer"):
        src = os.path.join(source, meta["tokenizer"])
        if os.path.abspath(src) != os.path.abspath(tokenizer):
            with open(src, "rb") as f:
                data = f.read()
            with fileio.atomic_open(tokenizer, "wb") as f:
                f.write(data)
    else:
        fileio.remove(tokenizer)
    if meta is not None:
        write_meta(meta, folder)
    else:
        fileio.remove(os.path.join(folder, "meta.pkl"))


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_id(meta):
    """What dataset.json and every shard record as the data's tokenizer: gpt2 (no meta.pkl), bpe:<hash>
    for a trained tokenizer (its file's sha256), char:<hash> for a character vocabulary."""
    if meta is None:
        return "gpt2"
    if meta.get("tokenizer"):
        return f"bpe:{meta['tokenizer_sha256'][:16]}"
    if "stoi" in meta:
        chars = json.dumps(sorted(meta["stoi"].items(), key=lambda kv: kv[1]))
        return f"char:{hashlib.sha256(chars.encode()).hexdigest()[:16]}"
    return f"ids:{meta['vocab_size']}"


def end_of_text(meta):
    """The end-of-text id of a dataset's vocabulary: GPT-2's without meta.pkl, the trained tokenizer's,
    None for characters (a character vocabulary has no such token)."""
    if meta is None:
        return GPT2_EOT
    return None if "stoi" in meta else meta.get("eot")


# -----------------------------------------------------------------------------
# shards

SHARD_MAGIC = b"gptkit shard\n"
HEADER_BYTES = 1024  # a multiple of 4, so that uint32 tokens stay aligned after it


def shard_name(split, index):
    return f"{split}_{index:06d}.bin"


def shard_header(split, index, tokens, dtype, tokenizer):
    """A shard's first HEADER_BYTES: readable with `head -c 1024`, and enough to tell a shard of
    another preparation, another tokenizer or a copy cut short."""
    info = json.dumps(dict(split=split, index=index, tokens=int(tokens), dtype=np.dtype(dtype).name,
                           tokenizer=tokenizer), sort_keys=True).encode()
    head = SHARD_MAGIC + info + b"\n"
    assert len(head) <= HEADER_BYTES
    return head.ljust(HEADER_BYTES, b" ")


def read_shard_header(path):
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    try:
        info = json.loads(head[len(SHARD_MAGIC):].decode()) if head.startswith(SHARD_MAGIC) else None
    except ValueError:
        info = None
    if not isinstance(info, dict) or len(head) != HEADER_BYTES:
        raise UserError(f"{path} is not a shard (its first {HEADER_BYTES} bytes are not a shard header): it is "
                        f"damaged; prepare the dataset again")
    return info


# -----------------------------------------------------------------------------
# consistency

def prepare_hint(dataset):
    script = os.path.join("data", dataset, "prepare.py")
    if os.path.exists(os.path.join(PROJECT, script)):
        return f"run `python {script}` first"
    return f"prepare it first (data/<name>/prepare.py writes train.bin and val.bin into data/{dataset}/)"


def mask_file(split):
    return f"{split}_mask.bin"


def read_manifest(data_dir):
    """dataset.json of a folder (None where there is none), refused unless its prepare finished."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
        complete = bool(manifest.get("complete"))
    except (OSError, ValueError, AttributeError) as e:
        why = fileio.reason(e) if isinstance(e, OSError) else "not the JSON a prepare script writes"
        raise UserError(f"{path} is damaged ({why}), so which files belong to the dataset is unknown; prepare the "
                        f"dataset again") from None
    if not complete:
        raise UserError(f"{data_dir} was left half-prepared (its prepare.py stopped before it finished, so its "
                        f"files may mix two versions); run the prepare script again (a sharded prepare continues "
                        f"where it stopped)")
    return manifest


def check_shards(data_dir, manifest, dtype):
    """{split: [(path, byte offset, tokens)]} of a sharded dataset, after checking every shard dataset.json
    lists against its size and header, and that no other shard lies in the folder."""
    parts = {}
    tokenizer = manifest.get("tokenizer")
    for split in SPLITS:
        listed = manifest["shards"].get(split) or []
        if not listed:
            raise UserError(f"{data_dir}/{MANIFEST} lists no {split} shards; prepare the dataset again")
        parts[split] = []
        for index, shard in enumerate(listed):
            path = os.path.join(data_dir, shard["file"])
            if not os.path.exists(path):
                raise UserError(f"{path} is missing ({MANIFEST} lists {len(listed)} {split} shards); copy it back "
                                f"or prepare the dataset again")
            size, expected = os.path.getsize(path), HEADER_BYTES + shard["tokens"] * dtype.itemsize
            if size != expected:
                raise UserError(f"{path} holds {size:,} bytes where {MANIFEST} recorded {expected:,}: it is "
                                f"{'cut short' if size < expected else 'not the shard it recorded'}; copy it again or "
                                f"prepare the dataset again")
            head = read_shard_header(path)
            if head.get("tokenizer") != tokenizer:
                raise UserError(f"{path} was written with another tokenizer ({head.get('tokenizer')}) than the rest "
                                f"of the dataset ({tokenizer}): the folder mixes shards of two preparations, whose "
                                f"token ids mean different text; prepare the dataset again")
            if (head.get("split"), head.get("index"), head.get("tokens"), head.get("dtype")) != \
                    (split, index, shard["tokens"], dtype.name):
                raise UserError(f"{path} is not the shard {MANIFEST} lists there (its header says {split} shard "
                                f"{head.get('index')} of {head.get('tokens')} tokens): the folder mixes two "
                                f"preparations; prepare the dataset again")
            parts[split].append((path, HEADER_BYTES, shard["tokens"]))
        names = {shard["file"] for shard in listed}
        for name in sorted(os.listdir(data_dir)):
            if name.startswith(f"{split}_") and name.endswith(".bin") and name not in names:
                raise UserError(f"{os.path.join(data_dir, name)} is not one of the {len(listed)} {split} shards "
                                f"{MANIFEST} lists: the folder mixes two preparations; remove it, or prepare the "
                                f"dataset again")
    return parts


def check_folder(data_dir, dataset):
    """(meta, dtype, manifest, parts) of a prepared folder after checking it: both splits present
    (train.bin and val.bin, or the shards dataset.json lists), sizes whole tokens, and, where
    dataset.json exists (else the manifest is None), every file as it recorded, loss masks and the
    trained tokenizer included. parts is {split: [(path, byte offset, tokens)]}, what Tokens reads.
    One sentence for anything wrong."""
    meta = read_meta(data_dir)
    dtype = np.dtype((meta or {}).get("dtype", "uint16"))
    manifest = read_manifest(data_dir)
    if manifest is not None:
        dtype = np.dtype(manifest["dtype"])
    if manifest is not None and manifest.get("shards"):
        parts = check_shards(data_dir, manifest, dtype)
    else:
        parts = {}
        for split in SPLITS:
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.exists(path):
                raise UserError(f"{path} is missing: {prepare_hint(dataset)}")
            size = os.path.getsize(path)
            if size == 0 or size % dtype.itemsize:
                raise UserError(f"{path} holds {size} bytes, {'nothing' if size == 0 else 'not a whole number of'} "
                                f"{dtype.name} tokens; it is damaged or cut short: prepare the dataset again")
            if manifest is not None and manifest["files"].get(f"{split}.bin", {}).get("bytes") != size:
                raise UserError(f"{path} is not the file {MANIFEST} recorded (a different size): the folder mixes "
                                f"two preparations; prepare the dataset again")
            if manifest is not None and manifest.get("counted"):
                mask_path = os.path.join(data_dir, mask_file(split))
                if not os.path.exists(mask_path) or os.path.getsize(mask_path) != size // dtype.itemsize:
                    raise UserError(f"{mask_path}, the loss mask of {split}.bin, is missing or not one byte per "
                                    f"token; prepare the dataset again")
            parts[split] = [(path, 0, size // dtype.itemsize)]
    if manifest is not None:
        recorded = manifest["files"].get("meta.pkl")
        meta_path = os.path.join(data_dir, "meta.pkl")
        if (recorded is None) != (meta is None) or (recorded and recorded.get("sha256") != file_sha256(meta_path)):
            raise UserError(f"{meta_path} is not the vocabulary {MANIFEST} recorded: the folder mixes two "
                            f"preparations; prepare the dataset again")
    if meta is not None and meta.get("tokenizer"):
        from gptkit.tokenizer import load_tokenizer  # here: hashes the file against meta.pkl's record
        load_tokenizer(meta, data_dir)
    return meta, dtype, manifest, parts


# -----------------------------------------------------------------------------
# reading

class Tokens:
    """A split's tokens as one array-like stream (len, and slices [i:j]) over its parts: one file, or
    shards whose rows may span two. A part is memory-mapped when a slice first falls in it."""

    def __init__(self, parts, dtype):
        self.parts, self.dtype = parts, dtype
        self.ends = np.cumsum([n for _, _, n in parts])  # token offset where each part ends
        self._maps = {}

    def __len__(self):
        return int(self.ends[-1])

    def _map(self, k):
        if k not in self._maps:
            path, offset, n = self.parts[k]
            self._maps[k] = np.memmap(path, dtype=self.dtype, mode="r", offset=offset, shape=(n,))
        return self._maps[k]

    def __getitem__(self, s):
        assert isinstance(s, slice) and s.step is None
        start, stop = s.start or 0, len(self) if s.stop is None else min(s.stop, len(self))
        k = int(np.searchsorted(self.ends, start, side="right"))
        if k == len(self.parts):
            return np.empty(0, self.dtype)
        base = int(self.ends[k - 1]) if k else 0
        if stop <= self.ends[k]:  # the common case: within one part
            return self._map(k)[start - base:stop - base]
        pieces = []
        while start < stop:
            end = min(stop, int(self.ends[k]))
            pieces.append(self._map(k)[start - base:end - base])
            start, base, k = end, int(self.ends[k]), k + 1
        return np.concatenate(pieces)

    def positions_after(self, token, chunk=2**26):
        """Every offset that follows `token` (an end of text: the first token of the next document), read a
        chunk at a time (64M tokens, 128 MB of uint16), so memory holds the result, not the split."""
        found = []
        for k, (_, _, n) in enumerate(self.parts):
            base = int(self.ends[k - 1]) if k else 0
            for i in range(0, n, chunk):
                found.append(np.flatnonzero(self._map(k)[i:i + chunk] == token) + (base + i + 1))
        return np.concatenate(found) if found else np.empty(0, np.int64)

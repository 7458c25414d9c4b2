"""
Dataset folders written as shards, so that a killed prepare continues where it stopped and ends with the
very bytes an uninterrupted one writes (ShardWriter), and documents tokenized into them (write_documents).
"""

import json
import os

import numpy as np

from gptkit import fileio
from gptkit.dataprep import OUTPUT_FILE, claim, remove_outputs, write_tokenizer
from gptkit.dataset import (HEADER_BYTES, MANIFEST, SPLITS, file_sha256, shard_header, shard_name, token_dtype,
                            write_meta)
from gptkit.errors import UserError
from gptkit.tokenizer import TOKENIZER_FILE


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

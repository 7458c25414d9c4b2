"""
Your own corpus: any text file, or a folder of them, tokenized into train.bin / val.bin (and meta.pkl)
in the layout train.py reads, so that `dataset=` in a config points at it.

    python data/corpus/prepare.py mybook.txt                               # GPT-2 BPE, into data/corpus/
    python data/corpus/prepare.py --input=notes/ --tokenizer=char --out=data/notes_char
    python train.py config/train_shakespeare_char.py --dataset=notes_char
    python data/corpus/prepare.py books/ --tokenizer=char --vocab_from=data/shakespeare_char --out=data/books_char
    python data/corpus/prepare.py --input=bengali/ --tokenizer=bpe --vocab_size=8192 --out=data/bengali

--tokenizer=gpt2 (default) uses GPT-2's BPE, with <|endoftext|> after each file, for training from
scratch or fine-tuning GPT-2. --tokenizer=char makes a vocabulary of the corpus's characters (meta.pkl
in nanoGPT's layout). --tokenizer=bpe trains a byte-level BPE of --vocab_size tokens (4096) on the
train text (Hugging Face tokenizers, seconds for a few MB), with <|endoftext|>, <|im_start|> and
<|im_end|> as special tokens and <|endoftext|> after each file; it is saved as tokenizer.json (with a
meta.pkl naming it) and every run trained on the data carries it (docs/data.md). A folder contributes
every .txt and .md file under it, in sorted order. The first 90% of the tokens (--val_fraction=0.1;
with --tokenizer=bpe and char, of the text) are train, the rest val. The corpus is read into memory;
for one larger than memory use data/openwebtext/prepare.py --input=FOLDER, which streams.

--tokenizer=FOLDER_OR_HUB_ID prepares the text in a Hugging Face model's own tokenizer (its tokenizer.json,
e.g. --tokenizer=HuggingFaceTB/SmolLM2-135M), each file ended by the model's end-of-sequence token, for
fine-tuning that model (train.py --init_from=FOLDER_OR_HUB_ID).

--vocab_from=FOLDER uses the vocabulary of another prepared dataset instead: with --tokenizer=char its
characters, dropping those it lacks (their count is printed); with --tokenizer=bpe its trained
tokenizer, copied along. A model pretrained on one dataset then fits the other, for pretraining on a
large corpus and fine-tuning on a small one.
"""

import os
import sys

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")

from gptkit import dataprep
from gptkit.dataset import data_root
from gptkit.tokenizer import load_tokenizer
from gptkit.errors import USAGE, UserError

SUFFIXES = (".txt", ".md")


def corpus_files(path):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"--input={path} does not exist; give a text file or a folder of .txt/.md files")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(SUFFIXES))
    if not files:
        raise UserError(f"--input={path} holds no .txt or .md files; put the corpus in such files")
    return files


def read_docs(files):
    docs = []
    for path in files:
        docs.append(dataprep.read_utf8(path))
    return docs


def prepare_bpe(args, docs, files, vocab_size, val_fraction, out, tok=None):
    """A byte-level BPE trained on the train text (or tok, another dataset's), then both splits in it. The
    text is split first, at a character, so that the tokenizer never sees the val text it is measured on."""
    import time

    from gptkit.documents import text_pieces
    from gptkit.tokenizer import train_bpe
    total = sum(map(len, docs))
    cut = dataprep.split_point(total, val_fraction, args["input"], unit="characters")
    parts = {"train": [], "val": []}  # (text, ends its file)
    seen = 0
    for doc in docs:
        if seen + len(doc) <= cut:
            parts["train"].append((doc, True))
        elif seen >= cut:
            parts["val"].append((doc, True))
        else:
            parts["train"].append((doc[:cut - seen], False))
            parts["val"].append((doc[cut - seen:], True))
        seen += len(doc)
    t0 = time.perf_counter()
    if tok is None:
        tok = train_bpe((piece for text, _ in parts["train"] for piece in text_pieces(text)), vocab_size)
        made = (f"a byte-level BPE of {vocab_size:,} tokens trained on the train text in "
                f"{time.perf_counter() - t0:.1f} s")
    elif args.get("vocab_from"):
        made = f"the trained tokenizer of {args['vocab_from']} ({tok.vocab_size:,} tokens)"
    else:
        made = f"the tokenizer of {args['tokenizer']} ({tok.vocab_size:,} tokens)"
    writer = dataprep.DatasetWriter(out, tok.vocab_size, tokenizer=tok)
    for split, pieces in parts.items():
        ids = []
        for (_, ends), piece_ids in zip(pieces, tok.encode_ordinary_batch([text for text, _ in pieces])):
            ids.extend(piece_ids)
            if ends:
                ids.append(tok.eot)  # documents end with <|endoftext|>, as with GPT-2's BPE
        writer.write(split, ids)
    counts = writer.finish()
    val_bytes = sum(len(text.encode("utf-8")) for text, _ in parts["val"])
    print(f"{len(files)} file(s), {total:,} characters; {made} ({out}/tokenizer.json), {val_bytes / counts['val']:.2f} "
          f"bytes per token on val (end of text = {tok.eot} after each file)")
    print(f"split: first {1 - val_fraction:.0%} of the text train, the rest val")
    dataprep.report_split(out, counts, tok.vocab_size)
    print_use(out)


def print_use(out):
    name = os.path.relpath(out, data_root())
    use = f"dataset={name}" if not name.startswith("..") and os.sep not in name else f"data_dir={out}"
    print(f"train on it with --{use}")


def main(argv):
    args = dataprep.parse_args(argv, ["input", "tokenizer", "vocab_size", "out", "val_fraction", "vocab_from"],
                               __doc__)
    if not args.get("input"):
        raise UserError("give the corpus as a path (or --input=FILE_OR_FOLDER)", status=USAGE)
    kind = args.get("tokenizer", "gpt2")
    model_tokenizer = kind not in ("char", "gpt2", "bpe") and (os.path.isdir(kind) or "/" in kind)
    if kind not in ("char", "gpt2", "bpe") and not model_tokenizer:
        raise UserError(f"--tokenizer={kind} is not known; use --tokenizer=char, gpt2, bpe (with --vocab_size=N), or a "
                        f"Hugging Face model's folder or hub id", status=USAGE)
    try:
        val_fraction = float(args.get("val_fraction", "0.1"))
    except ValueError:
        val_fraction = -1.0
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction={args.get('val_fraction')} must be a number between 0 and 1, e.g. 0.1",
                        status=USAGE)
    if model_tokenizer:  # a Hugging Face model's own tokenizer
        if args.get("vocab_from") or args.get("vocab_size"):
            raise UserError(f"--tokenizer={kind} is a model's own tokenizer; drop --vocab_from and --vocab_size",
                            status=USAGE)
        from gptkit import hf_tokenizer
        tok = hf_tokenizer.load(kind)
        out = dataprep.out_folder(args, "corpus")
        files = corpus_files(args["input"])
        prepare_bpe(args, read_docs(files), files, tok.vocab_size, val_fraction, out, tok)
        return
    if args.get("vocab_size") and kind != "bpe":
        raise UserError("--vocab_size is the size of a trained tokenizer; use it with --tokenizer=bpe", status=USAGE)
    try:
        vocab_size = int(args.get("vocab_size", "4096"))
    except ValueError:
        raise UserError(f"--vocab_size={args['vocab_size']} is not a whole number; e.g. --vocab_size=4096",
                        status=USAGE) from None
    vocab = None
    if args.get("vocab_from"):
        if kind == "gpt2":
            raise UserError("--vocab_from takes a character vocabulary or a trained tokenizer; use it with "
                            "--tokenizer=char or --tokenizer=bpe", status=USAGE)
        if args.get("vocab_size"):
            raise UserError("--vocab_from's tokenizer has its own size; give --vocab_size or --vocab_from, not both",
                            status=USAGE)
        vocab = dataprep.vocab_from(args["vocab_from"])
        if vocab is None or ("stoi" if kind == "char" else "tokenizer") not in vocab:
            what = ("character vocabulary (meta.pkl with stoi)" if kind == "char"
                    else "trained tokenizer (tokenizer.json)")
            raise UserError(f"--vocab_from={args['vocab_from']} holds no {what}; give a dataset prepared with "
                            f"--tokenizer={kind}", status=USAGE)
    out = dataprep.out_folder(args, "corpus")
    files = corpus_files(args["input"])
    docs = read_docs(files)

    meta = None
    if kind == "bpe":
        tok = load_tokenizer(vocab, args["vocab_from"]) if vocab is not None else None
        prepare_bpe(args, docs, files, vocab_size, val_fraction, out, tok)
        return
    if kind == "char":
        # files are simply concatenated: a character vocabulary has no end-of-text token
        text = "".join(docs)
        if vocab is not None:
            meta, stoi = vocab, vocab["stoi"]
            kept = [c for c in text if c in stoi]
            dropped = len(text) - len(kept)
            ids = [stoi[c] for c in kept]
            vocab_size = vocab["vocab_size"]
            vocab_line = (f"the character vocabulary of {args['vocab_from']} ({vocab_size}); {dropped:,} characters "
                          f"outside it dropped ({dropped / max(1, len(text)):.1%})")
        else:
            chars = sorted(set(text))
            vocab_size = len(chars)
            stoi = {ch: i for i, ch in enumerate(chars)}
            ids = [stoi[c] for c in text]
            meta = {"vocab_size": vocab_size, "itos": dict(enumerate(chars)), "stoi": stoi}
            shown = "".join(chars) if vocab_size <= 100 else "".join(chars[:100]) + "..."
            vocab_line = f"character vocabulary of {vocab_size}: {shown!r}"
    else:
        from gptkit.tokenizer import BPETokenizer
        tok = BPETokenizer()
        vocab_size = tok.vocab_size
        ids = []
        for doc_ids in tok.enc.encode_ordinary_batch(docs):
            ids.extend(doc_ids)
            ids.append(tok.eot)  # documents end with <|endoftext|>, as GPT-2 was trained
        vocab_line = f"GPT-2 BPE vocabulary of {vocab_size} (<|endoftext|> = {tok.eot} after each file)"

    split = dataprep.split_point(len(ids), val_fraction, args["input"])
    writer = dataprep.DatasetWriter(out, vocab_size, meta)
    writer.write("train", ids[:split])
    writer.write("val", ids[split:])
    counts = writer.finish()
    print(f"{len(files)} file(s), {sum(map(len, docs)):,} characters; {vocab_line}")
    print(f"split: first {1 - val_fraction:.0%} of the tokens train, the rest val")
    dataprep.report_split(out, counts, vocab_size)
    print_use(out)


if __name__ == "__main__":
    main(sys.argv[1:])

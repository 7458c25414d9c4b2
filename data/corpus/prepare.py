"""
Your own corpus: any text file, or a folder of them, tokenized into train.bin / val.bin (and meta.pkl)
in the layout train.py reads, so that `dataset=` in a config points at it.

    python data/corpus/prepare.py mybook.txt                               # GPT-2 BPE, into data/corpus/
    python data/corpus/prepare.py --input=notes/ --tokenizer=char --out=data/notes_char
    python train.py config/train_shakespeare_char.py --dataset=notes_char
    python data/corpus/prepare.py books/ --tokenizer=char --vocab_from=data/shakespeare_char --out=data/books_char

--tokenizer=gpt2 (default) uses GPT-2's BPE, with <|endoftext|> after each file, for training from
scratch or fine-tuning GPT-2. --tokenizer=char makes a vocabulary of the corpus's characters (meta.pkl
in nanoGPT's layout). A folder contributes every .txt and .md file under it, in sorted order. The
first 90% of the tokens (--val_fraction=0.1) are train, the rest val. The corpus is read into memory;
for one larger than memory use data/openwebtext/prepare.py --input=FOLDER, which streams.

--vocab_from=FOLDER (with --tokenizer=char) uses the character vocabulary of another prepared dataset
instead, dropping the characters it lacks (their count is printed): a model pretrained on this corpus
then fits that dataset, for pretraining on a large corpus and fine-tuning on a small one.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from gptkit import dataprep, errors  # noqa: E402
from gptkit.dataset import data_root, read_meta  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402

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


def main(argv):
    args = dataprep.parse_args(argv, ["input", "tokenizer", "out", "val_fraction", "vocab_from"], __doc__)
    if not args.get("input"):
        raise UserError("give the corpus as a path (or --input=FILE_OR_FOLDER)", status=USAGE)
    kind = args.get("tokenizer", "gpt2")
    if kind not in ("char", "gpt2"):
        raise UserError(f"--tokenizer={kind} is not known; use --tokenizer=char or --tokenizer=gpt2", status=USAGE)
    try:
        val_fraction = float(args.get("val_fraction", "0.1"))
    except ValueError:
        val_fraction = -1.0
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val_fraction={args.get('val_fraction')} must be a number between 0 and 1, e.g. 0.1",
                        status=USAGE)
    vocab = None
    if args.get("vocab_from"):
        if kind != "char":
            raise UserError("--vocab_from takes a character vocabulary; use it with --tokenizer=char", status=USAGE)
        vocab = read_meta(args["vocab_from"])
        if vocab is None or "stoi" not in vocab:
            raise UserError(f"--vocab_from={args['vocab_from']} holds no character vocabulary (meta.pkl with stoi); "
                            f"give a dataset prepared with --tokenizer=char", status=USAGE)
    out = dataprep.out_folder(args, "corpus")
    files = corpus_files(args["input"])
    docs = read_docs(files)

    meta = None
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
    name = os.path.relpath(out, data_root())
    use = f"dataset={name}" if not name.startswith("..") and os.sep not in name else f"data_dir={out}"
    print(f"train on it with --{use}")


if __name__ == "__main__":
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")
    main(sys.argv[1:])

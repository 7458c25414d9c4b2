"""
Tiny Shakespeare at the character level: train.bin, val.bin and meta.pkl in data/shakespeare_char/.

    python data/shakespeare_char/prepare.py                    # downloads input.txt (1.1 MB) once
    python data/shakespeare_char/prepare.py path/to/input.txt  # or --input=path/to/input.txt
    python data/shakespeare_char/prepare.py --out=somewhere/else

The vocabulary is the sorted set of characters (65); meta.pkl has nanoGPT's layout
({'vocab_size', 'itos', 'stoi'}) so checkpoints trained with nanoGPT find their vocabulary here.
The first 90% of the text is train, the rest val.
"""

import os
import sys

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")

from gptkit import dataprep

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main(argv):
    args = dataprep.parse_args(argv, ["input", "out"], __doc__)
    out = dataprep.out_folder(args, "shakespeare_char")
    text = dataprep.read_text(args.get("input"), URL, os.path.join(out, "input.txt"))
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    split = dataprep.split_point(len(text), 0.1, args.get("input") or "the downloaded text", "characters")
    writer = dataprep.DatasetWriter(out, len(chars), {"vocab_size": len(chars), "itos": itos, "stoi": stoi})
    writer.write("train", [stoi[c] for c in text[:split]])
    writer.write("val", [stoi[c] for c in text[split:]])
    counts = writer.finish()
    print(f"{len(text):,} characters, vocabulary of {len(chars)}: {''.join(chars)!r}")
    dataprep.report_split(out, counts, len(chars))


if __name__ == "__main__":
    main(sys.argv[1:])

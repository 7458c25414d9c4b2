"""
Tiny Shakespeare in GPT-2's BPE (tiktoken): train.bin and val.bin in data/shakespeare/, for
fine-tuning GPT-2 (config/finetune_shakespeare.py).

    python data/shakespeare/prepare.py                    # downloads input.txt (1.1 MB) once
    python data/shakespeare/prepare.py path/to/input.txt  # or --input=path/to/input.txt
    python data/shakespeare/prepare.py --out=somewhere/else

The first 90% of the text is train, the rest val.
"""

import os
import sys

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")

from gptkit import dataprep
from gptkit.tokenizer import BPETokenizer

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main(argv):
    args = dataprep.parse_args(argv, ["input", "out"], __doc__)
    out = dataprep.out_folder(args, "shakespeare")
    text = dataprep.read_text(args.get("input"), URL, os.path.join(out, "input.txt"))
    tok = BPETokenizer()
    split = dataprep.split_point(len(text), 0.1, args.get("input") or "the downloaded text", "characters")
    writer = dataprep.DatasetWriter(out, tok.vocab_size)
    writer.write("train", tok.enc.encode_ordinary(text[:split]))
    writer.write("val", tok.enc.encode_ordinary(text[split:]))
    dataprep.report_split(out, writer.finish(), tok.vocab_size)


if __name__ == "__main__":
    main(sys.argv[1:])

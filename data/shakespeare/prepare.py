"""
Tiny Shakespeare in GPT-2's BPE (tiktoken): train.bin and val.bin in this folder, for fine-tuning
GPT-2 (config/finetune_shakespeare.py).

    python data/shakespeare/prepare.py                    # downloads input.txt (1.1 MB)
    python data/shakespeare/prepare.py --input=path/to/input.txt
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import dataset  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main(argv):
    args = dataset.parse_prepare_args(argv, ["input"])
    text = dataset.read_text(args.get("input"), URL, os.path.join(HERE, "input.txt"))
    tok = BPETokenizer("gpt2")
    split = int(len(text) * 0.9)  # first 90% train, last 10% val
    train_ids = tok.enc.encode_ordinary(text[:split])
    val_ids = tok.enc.encode_ordinary(text[split:])
    train_n = dataset.write_tokens(train_ids, os.path.join(HERE, "train.bin"), tok.vocab_size)
    val_n = dataset.write_tokens(val_ids, os.path.join(HERE, "val.bin"), tok.vocab_size)
    dataset.report_split(HERE, train_n, val_n, tok.vocab_size)


if __name__ == "__main__":
    dataset.main_guard(main)

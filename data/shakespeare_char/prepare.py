"""
Tiny Shakespeare at the character level: train.bin, val.bin and meta.pkl in this folder.

    python data/shakespeare_char/prepare.py                    # downloads input.txt (1.1 MB)
    python data/shakespeare_char/prepare.py --input=path/to/input.txt

The vocabulary is the sorted set of characters (65); meta.pkl has nanoGPT's layout
({'vocab_size', 'itos', 'stoi'}) so checkpoints trained with nanoGPT find their vocabulary here.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import dataset  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main(argv):
    args = dataset.parse_prepare_args(argv, ["input"])
    text = dataset.read_text(args.get("input"), URL, os.path.join(HERE, "input.txt"))
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    split = int(n * 0.9)  # first 90% train, last 10% val
    train_n = dataset.write_tokens([stoi[c] for c in text[:split]], os.path.join(HERE, "train.bin"), len(chars))
    val_n = dataset.write_tokens([stoi[c] for c in text[split:]], os.path.join(HERE, "val.bin"), len(chars))
    dataset.write_meta({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, HERE)
    print(f"{n:,} characters, vocabulary of {len(chars)}: {''.join(chars)!r}")
    dataset.report_split(HERE, train_n, val_n, len(chars))


if __name__ == "__main__":
    dataset.main_guard(main)

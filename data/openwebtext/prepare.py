"""
OpenWebText (or any document collection) tokenized into shards in data/openwebtext/, each document
followed by <|endoftext|>, for config/train_gpt2.py.

    pip install datasets && python data/openwebtext/prepare.py   # streams the hub's 8M documents, ~9B tokens
    python data/openwebtext/prepare.py --input=my_docs/          # local .txt (one document per file) and
                                                                 # .jsonl ({"text": ...} per line) files
    python data/openwebtext/prepare.py --dataset=json --data_files='shards/*.jsonl'   # any datasets builder
    python data/openwebtext/prepare.py --tokenizer=bpe --vocab_size=32768   # a tokenizer trained on the corpus

The tokens go into numbered shards of --shard_tokens (100M tokens, 200 MB of uint16: train_000000.bin,
..., val_000000.bin, listed in dataset.json); --shard_tokens=0 writes nanoGPT's single train.bin and
val.bin instead. Memory stays bounded whatever the corpus size: documents are streamed (a hub dataset
is read as it downloads, nothing else is stored) and tokenized in batches of --batch_mb (8) MB of text.
Killed (Ctrl-C, a lost connection, SIGKILL, a power cut)? Run the same command again: it continues
from its last batch and writes the very files an uninterrupted run writes.

--tokenizer=gpt2 (default) is GPT-2's BPE. --tokenizer=bpe trains a byte-level BPE of --vocab_size
tokens (32768) on the first --tokenizer_chars characters (1e9) of the train documents, saved as the
dataset's tokenizer.json: every run trained on the data carries it (docs/data.md).
Every 2000th document (--val_fraction=0.0005), evenly spaced, is val. --dataset, --config, --split
(train) and --text_field (text) choose a Hugging Face dataset, a folder written by save_to_disk included.
--num_proc: tokenizer threads for GPT-2's BPE (a trained one uses every core).
"""

import sys

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; run the same command again to continue from its last batch")

from gptkit import documents


def main(argv):
    documents.prepare_documents(argv, __doc__, "openwebtext", dataset="openwebtext")


if __name__ == "__main__":
    main(sys.argv[1:])

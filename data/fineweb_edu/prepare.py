"""
FineWeb-Edu (HuggingFaceFW/fineweb-edu), the educational web text nanochat, llm.c and modded-nanogpt
train on, tokenized into shards in data/fineweb_edu/, each document followed by <|endoftext|>.

    pip install datasets && python data/fineweb_edu/prepare.py        # sample-10BT: 9.7M documents, ~10B GPT-2 tokens
    python data/fineweb_edu/prepare.py --config=sample-100BT          # or sample-350BT, default (all of it)
    python data/fineweb_edu/prepare.py --tokenizer=bpe --vocab_size=65536   # a tokenizer trained on it
    python train.py config/train_gpt2.py --dataset=fineweb_edu

The dataset is streamed: nothing is downloaded ahead or kept but the shards written, 100M tokens
(200 MB) each (--shard_tokens; 0 writes one train.bin and val.bin), about 100 of them for sample-10BT.
Killed or disconnected? Run the same command again: it continues from its last batch of documents
(--batch_mb=8 MB of text) and writes the very files an uninterrupted run writes.

--tokenizer=gpt2 (default) is GPT-2's BPE, as llm.c and modded-nanogpt use. --tokenizer=bpe trains a
byte-level BPE of --vocab_size tokens (32768) on the first --tokenizer_chars characters (1e9) of the
train documents, saved as the dataset's tokenizer.json (docs/data.md). Every 2000th document
(--val_fraction=0.0005) is val, about 5M tokens. The arguments are those of data/openwebtext/prepare.py.
"""

import sys

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; run the same command again to continue from its last batch")

from gptkit import documents


def main(argv):
    documents.prepare_documents(argv, __doc__, "fineweb_edu", dataset="HuggingFaceFW/fineweb-edu", config="sample-10BT")


if __name__ == "__main__":
    main(sys.argv[1:])

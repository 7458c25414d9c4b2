"""
OpenWebText (or any document collection) in GPT-2 BPE: train.bin and val.bin in data/openwebtext/, each
document followed by <|endoftext|>, for config/train_gpt2.py.

    pip install datasets && python data/openwebtext/prepare.py --num_proc=8   # ~54 GB download, 8M documents
    python data/openwebtext/prepare.py --input=my_docs/      # local .txt (one document per file) and
                                                             # .jsonl ({"text": ...} per line) files
    python data/openwebtext/prepare.py --dataset=json --data_files='shards/*.jsonl'   # any datasets builder

OpenWebText gives about 9B train and 4M val tokens (17 GB and 8.5 MB of uint16). Memory stays bounded
whatever the corpus size: the Hugging Face path tokenizes into datasets' on-disk Arrow cache and writes
the bins a batch at a time; the --input path streams documents in batches of --batch_mb of text.
Validation documents are chosen deterministically (a shuffled split with a fixed seed for datasets,
evenly spaced documents for --input), --val_fraction of them, at least one.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from gptkit import dataprep, errors  # noqa: E402
from gptkit.errors import USAGE, UserError  # noqa: E402


class BadDocument(ValueError):
    pass


ARGS = ["input", "dataset", "data_files", "text_field", "num_proc", "val_fraction", "seed", "batch_mb", "out"]


# -----------------------------------------------------------------------------
# local documents: streamed in batches, tokenized with tiktoken's threads (its Rust core releases the GIL)

def local_files(folder):
    if not os.path.isdir(folder):
        raise UserError(f"--input={folder} is not a folder; give a folder of .txt and/or .jsonl files")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith((".txt", ".jsonl")))
    if not files:
        raise UserError(f"--input={folder} holds no .txt or .jsonl files")
    return files


def local_documents(files, text_field):
    for path in files:
        if path.endswith(".txt"):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield f.read()
            continue
        for lineno, line in dataprep.utf8_lines(path):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row[text_field]
            except (json.JSONDecodeError, KeyError, TypeError):
                text = None
            if not isinstance(text, str):
                raise BadDocument(f"{path}, line {lineno}: expected a JSON object with a {text_field!r} string; "
                                  f"fix the line or name the field with --text_field=")
            yield text


def count_documents(files):
    n = 0
    for path in files:
        if path.endswith(".txt"):
            n += 1
        else:
            n += sum(1 for _, line in dataprep.utf8_lines(path) if line.strip())
    return n


def prepare_local(args, enc, writer, num_proc, val_fraction, batch_chars):
    import numpy as np
    from tqdm import tqdm
    files = local_files(args["input"])
    n_docs = count_documents(files)
    n_val = max(1, round(n_docs * val_fraction))
    if n_docs < 2:
        raise UserError(f"--input={args['input']} holds {n_docs} document(s); it takes at least 2 (one for val)")
    eot = np.array([enc.eot_token], dtype=np.uint16)
    with writer.bin("train") as train, writer.bin("val") as val:
        def flush(batch):
            for i, ids in zip(batch["index"], enc.encode_ordinary_batch(batch["text"], num_threads=num_proc)):
                # document i is val when the evenly spaced val positions step past it
                f = val if (i + 1) * n_val // n_docs > i * n_val // n_docs else train
                np.array(ids, dtype=np.uint16).tofile(f)
                eot.tofile(f)
            batch["index"], batch["text"], batch["chars"] = [], [], 0

        batch = {"index": [], "text": [], "chars": 0}
        bar = tqdm(total=n_docs, unit="doc", desc="tokenizing")
        try:
            for i, text in enumerate(local_documents(files, args.get("text_field", "text"))):
                batch["index"].append(i)
                batch["text"].append(text)
                batch["chars"] += len(text)
                bar.update()
                if batch["chars"] >= batch_chars:
                    flush(batch)
            flush(batch)
        except BadDocument as e:
            raise UserError(str(e)) from None  # the unfinished bins are removed on the way out
        finally:
            bar.close()  # ends the progress line, so an error starts its own


# -----------------------------------------------------------------------------
# the Hugging Face datasets pipeline (nanoGPT's recipe)

def prepare_hf(args, enc, writer, num_proc, val_fraction, seed):
    import numpy as np
    from tqdm import tqdm
    try:
        import datasets
    except ImportError:
        raise UserError("this needs the Hugging Face datasets package: pip install datasets "
                        "(or give local files with --input=FOLDER, which does not)") from None
    name = args.get("dataset", "openwebtext")
    field = args.get("text_field", "text")
    kwargs = {"data_files": args["data_files"]} if args.get("data_files") else {}
    try:
        ds = datasets.load_dataset(name, num_proc=num_proc, **kwargs)
    except Exception as e:  # network, hub and file errors come in many types
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"could not load the dataset {name!r} ({reason}); check the connection and the name, "
                        f"or give local files with --input=FOLDER") from None
    ds = ds["train"]
    if field not in ds.column_names:
        raise UserError(f"the dataset has no {field!r} column (it has {', '.join(ds.column_names)}); name it "
                        f"with --text_field=")
    n_val = max(1, round(len(ds) * val_fraction))
    if len(ds) < 2:
        raise UserError(f"the dataset holds {len(ds)} document(s); it takes at least 2 (one for val)")
    splits = ds.train_test_split(test_size=n_val, seed=seed, shuffle=True)
    splits["val"] = splits.pop("test")

    def tokenize(row):
        ids = enc.encode_ordinary(row[field])
        ids.append(enc.eot_token)  # <|endoftext|> closes every document
        return {"ids": ids, "len": len(ids)}

    # datasets writes the tokenized columns to its on-disk cache, num_proc processes at a time
    tokenized = splits.map(tokenize, remove_columns=splits["train"].column_names, desc="tokenizing",
                           num_proc=num_proc)
    for split in ("train", "val"):
        part = tokenized[split].with_format("numpy")
        batch = 1024  # documents per write; the Arrow cache is memory-mapped, so memory stays flat
        with writer.bin(split) as f:
            for start in tqdm(range(0, len(part), batch), desc=f"writing {split}.bin", unit="batch"):
                rows = part[start:start + batch]["ids"]
                if len(rows):
                    np.concatenate(list(rows)).astype(np.uint16, copy=False).tofile(f)


def main(argv):
    args = dataprep.parse_args(argv, ARGS, __doc__)
    try:
        num_proc = int(args.get("num_proc", max(1, (os.cpu_count() or 2) // 2)))
        val_fraction = float(args.get("val_fraction", "0.0005"))  # nanoGPT's: about 4,000 documents
        seed = int(args.get("seed", "2357"))
        batch_chars = int(float(args.get("batch_mb", "64")) * 2**20)
    except ValueError as e:
        raise UserError(f"a numeric argument is not a number ({e}); e.g. --num_proc=8 --val_fraction=0.0005",
                        status=USAGE) from None
    if num_proc < 1 or not 0.0 < val_fraction < 1.0 or batch_chars < 1:
        raise UserError("--num_proc must be >= 1, --val_fraction between 0 and 1 and --batch_mb positive", status=USAGE)
    if args.get("input") and (args.get("dataset") or args.get("data_files")):
        raise UserError("give either --input=FOLDER (local files) or --dataset/--data_files (Hugging Face), not both",
                        status=USAGE)
    out = dataprep.out_folder(args, "openwebtext")
    from gptkit.tokenizer import BPETokenizer
    enc = BPETokenizer().enc
    writer = dataprep.DatasetWriter(out, enc.n_vocab)
    if args.get("input"):
        prepare_local(args, enc, writer, num_proc, val_fraction, batch_chars)
    else:
        prepare_hf(args, enc, writer, num_proc, val_fraction, seed)
    dataprep.report_split(out, writer.finish(), enc.n_vocab)


if __name__ == "__main__":
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")
    main(sys.argv[1:])

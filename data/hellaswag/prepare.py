"""
HellaSwag (Zellers et al. 2019), the yardstick of build-nanogpt's and llm.c's GPT-2 reproductions: one
published split as data/hellaswag/hellaswag_<split>.jsonl, which eval.py --tasks=hellaswag and train.py
--eval_tasks=hellaswag read.

    python data/hellaswag/prepare.py                       # downloads the val split (10,042 examples) once
    python data/hellaswag/prepare.py --split=train         # 39,905 examples; test (no labels) too
    python data/hellaswag/prepare.py --input=path/to/hellaswag_val.jsonl   # a copy you have (offline)

The files are the HellaSwag authors' (github.com/rowanz/hellaswag), as build-nanogpt downloads them.
Every line is checked (a context, four endings, a label 0 to 3) before the file is written, atomically.
"""

import os
import sys
import urllib.request

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; nothing was written, run it again to finish")

from gptkit import benchmarks, dataprep, fileio
from gptkit.errors import USAGE, UserError


def check(text, name, split):
    """The number of examples in text, after checking every line."""
    labelled = split != "test"
    return len(benchmarks.parse_lines(text.splitlines(), name,
                                      lambda row, where: benchmarks.hellaswag_example(row, where, labelled)))


def download(url):
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"could not download {url} ({fileio.reason(e)}); download it on a machine with internet and "
                        f"run again with --input=path/to/{os.path.basename(url)}") from None


def main(argv):
    args = dataprep.parse_args(argv, ["input", "split", "out"], __doc__)
    split = args.get("split", "val")
    if split not in benchmarks.HELLASWAG_SPLITS:
        raise UserError(f"--split={split} is not one of HellaSwag's splits: {', '.join(benchmarks.HELLASWAG_SPLITS)}",
                        status=USAGE)
    out = dataprep.out_folder(args, "hellaswag")
    dest = benchmarks.hellaswag_path(split, out)
    url = benchmarks.HELLASWAG_URL.format(split=split)
    expected = benchmarks.HELLASWAG_SIZES[split]
    if args.get("input"):
        source = args["input"]
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read --input={source} ({fileio.reason(e)}); give the path of "
                            f"{os.path.basename(dest)}") from None
        n = check(text, source, split)
        if n != expected:
            print(f"note: {source} holds {n:,} examples; HellaSwag's published {split} split has {expected:,}")
    elif os.path.exists(dest):
        with open(dest, encoding="utf-8") as f:
            n = check(f.read(), dest, split)
        print(f"{dest}: already prepared, {n:,} examples")
        return
    else:
        text = download(url)
        n = check(text, url, split)
        if n != expected:
            raise UserError(f"{url} gave {n:,} examples where HellaSwag's {split} split has {expected:,}; the download "
                            f"is incomplete or the file changed: run again, or use --input=a copy you trust")
    dataprep.claim(out)  # one writer at a time
    with fileio.atomic_open(dest, "w", advice="choose a writable --out folder") as f:
        f.write(text)
    print(f"{dest}: {n:,} examples of HellaSwag's {split} split")


if __name__ == "__main__":
    main(sys.argv[1:])

"""
GSM8K (Cobbe et al. 2021), grade-school math word problems whose answer is one number: the files of the
GPU recipe in docs/rl.md, in data/gsm8k/.

    python data/gsm8k/prepare.py                        # downloads train (7,473) and test (1,319) once
    python data/gsm8k/prepare.py --input=path/to/folder # a copy you have (offline): train.jsonl, test.jsonl

From the authors' files (github.com/openai/grade-school-math), whose lines are {"question", "answer"}
with the worked solution in the answer, calculator notes such as <<48/2=24>> in it, and the final
number after "#### ", it writes:

- sft.jsonl: the training problems as conversations, {"messages": [user: the question, assistant: the
  solution without calculator notes, ending "The answer is 72."]}, for data/chat/prepare.py (supervised
  fine-tuning teaches the format and the way of working);
- train.jsonl and test.jsonl: {"prompt": the question, "answer": "72"}, for rl.py --prompts and
  --val_prompts with --answer_match=last_number (the completion's last number is its answer).
"""

import json
import os
import re
import sys
import urllib.request

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")

from gptkit import dataprep, fileio
from gptkit.errors import UserError

URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
SIZES = {"train": 7473, "test": 1319}
CALCULATOR = re.compile(r"<<[^>]*>>")


def read(split, folder):
    """The split's lines, from --input's folder or downloaded."""
    if folder:
        path = os.path.join(folder, f"{split}.jsonl")
        if not os.path.isfile(path):
            raise UserError(f"--input={folder} has no {split}.jsonl; give the folder holding GSM8K's train.jsonl "
                            f"and test.jsonl")
        return dataprep.read_utf8(path), path
    url = URL.format(split=split)
    print(f"downloading {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.read().decode("utf-8"), url
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"could not download {url} ({fileio.reason(e)}); download train.jsonl and test.jsonl on a "
                        f"machine with internet and run again with --input=FOLDER") from None


def problems(text, where):
    """[(question, solution, final number)] of a GSM8K file, every line checked."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            question, answer = row["question"].strip(), row["answer"]
            solution, final = answer.rsplit("####", 1)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{where}, line {n}, is not a GSM8K problem: each line must be "
                            f'{{"question": ..., "answer": "... #### NUMBER"}}') from None
        final = final.strip().replace(",", "")
        out.append((question, CALCULATOR.sub("", solution).strip(), final))
    if not out:
        raise UserError(f"{where} holds no problems")
    return out


def write_jsonl(path, rows):
    with fileio.atomic_open(path, "w", advice="choose a writable --out folder") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def main(argv):
    args = dataprep.parse_args(argv, ["input", "out"], __doc__)
    out = dataprep.out_folder(args, "gsm8k")
    dataprep.claim(out)  # one writer at a time
    for split in ("train", "test"):
        text, where = read(split, args.get("input"))
        rows = problems(text, where)
        if len(rows) != SIZES[split]:
            print(f"note: {where} holds {len(rows):,} problems; GSM8K's published {split} split has {SIZES[split]:,}")
        write_jsonl(os.path.join(out, f"{split}.jsonl"), [dict(prompt=q, answer=a) for q, _, a in rows])
        if split == "train":
            write_jsonl(os.path.join(out, "sft.jsonl"), [
                dict(messages=[dict(role="user", content=q),
                               dict(role="assistant", content=f"{s}\nThe answer is {a}.")]) for q, s, a in rows])
        print(f"{os.path.join(out, split + '.jsonl')}: {len(rows):,} problems")
    print(f"{os.path.join(out, 'sft.jsonl')}: the training problems as conversations; next: python "
          f"data/chat/prepare.py {os.path.join(out, 'sft.jsonl')} --out={out}_chat")


if __name__ == "__main__":
    main(sys.argv[1:])

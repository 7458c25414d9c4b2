"""
Addition (and subtraction, multiplication) problems need no preparing: train.py draws them as it trains
(dataset=addition, see gptkit/arithmetic.py), so there is no train.bin or val.bin to write. This script writes what
you may want to look at or use elsewhere, in data/addition/:

    python data/addition/prepare.py                       # 3 digits, answers reversed, train.py's seed
    python data/addition/prepare.py --digits=5 --reverse=False --task=subtraction --count=1000
    python data/addition/prepare.py --task=multiplication --digits=2 --scratchpad=True

- val.txt: the held-out problems, in the order train.py's evaluation scores them (with the same
  --seed and --digits: the first eval_iters x batch_size lines), one per line, answer included, as
  the model sees them: 123+456=975 (with --scratchpad=True, a multiplication's partial products
  before its answer: 12*34=840+0630=804)
- meta.pkl: the 15-character vocabulary in nanoGPT's layout (train.py also copies it into every run).

Which problems are held out depends on the problem alone, never on the seed, so no training run can
draw one; the seed only orders them.
"""

import os
import sys

from gptkit import errors

if __name__ == "__main__":  # first: Ctrl-C while the rest loads ends in one line and status 130
    errors.install(interrupted="interrupted; nothing was half-written, run it again to finish")

from gptkit import arithmetic, dataprep, dataset, fileio
from gptkit.errors import USAGE, UserError


def main(argv):
    args = dataprep.parse_args(argv, ["task", "digits", "reverse", "scratchpad", "seed", "count", "out"], __doc__,
                               positional=None)
    try:
        digits, seed, count = int(args.get("digits", "3")), int(args.get("seed", "1337")), int(args.get("count", "10240"))
    except ValueError as e:
        raise UserError(f"a numeric argument is not a number ({e}); e.g. --digits=3 --count=10240", status=USAGE) from None
    reverse, scratchpad = args.get("reverse", "True").lower(), args.get("scratchpad", "False").lower()
    if reverse not in ("true", "false") or scratchpad not in ("true", "false") or count < 1:
        raise UserError("--reverse and --scratchpad must be True or False and --count at least 1", status=USAGE)
    task = args.get("task", "addition")
    problems = arithmetic.Arithmetic(task, digits, reverse == "true", block_size=64, batch_size=1, seed=seed,
                                     device="cpu", scratchpad=scratchpad == "true")
    a, b = problems.held_out_problems(count)
    out = dataprep.out_folder(args, "addition")
    dataprep.claim(out)  # one writer at a time
    with fileio.atomic_open(os.path.join(out, "val.txt"), "w") as f:
        for x, y in zip(a.tolist(), b.tolist()):
            f.write("".join(problems.problem(x, y)) + "\n")
    dataset.write_meta(arithmetic.META, out)
    print(f"{out}: val.txt with {count:,} held-out {digits}-digit {task} problems (seed {seed}), e.g. "
          f"{''.join(problems.problem(int(a[0]), int(b[0])))}; meta.pkl ({arithmetic.META['vocab_size']} characters)")
    recipe = "config/train_multiplication.py" if scratchpad == "true" else f"config/train_addition.py --dataset={task}"
    print(f"nothing else to prepare: python train.py {recipe} --digits={digits}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""
A run's metrics.jsonl read back into arrays: one Run per folder, its step and evaluation rows as columns.

    run = run_metrics.read_run("out-shakespeare-char-cpu")
    run.series("val_loss", x="tokens"); run_metrics.summarize(run)

metrics.jsonl holds one JSON object per line: step rows (iter, loss, lr, grad_norm, ms, tok_s, mfu,
tokens) and evaluation rows (iter, train_loss, val_loss, train_bpb, val_bpb, lr, elapsed_s, and the
figures of multiple-choice sets such as hellaswag_acc_norm); rl.py's step rows have reward, right and length,
its evaluation rows val_pass1, val_pass_k, val_reward and val_length. A file may be read while train.py appends
to it, after a crash, or after a resume; whatever cannot be read is skipped. Drawing them: curves.py.
"""

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from gptkit.errors import USAGE, UserError

STEP, EVAL = "step", "eval"


class PlotError(UserError):
    """Something a user asked for that cannot be read or drawn (a usage error: exit status 2)."""

    def __init__(self, sentence):
        super().__init__(sentence, status=USAGE)



def _parse(line):
    """One metrics row as (kind, iter, {name: float}), or None for a line that is not a row."""
    try:
        row = json.loads(line)  # json writes NaN and Infinity bare, and reads them back the same way
    except ValueError:  # a line cut short by a crash or still being written; UnicodeDecodeError too
        return None
    it = row.get("iter") if isinstance(row, dict) else None
    if type(it) is not int or it < 0:  # type(), not isinstance(): True is not an iteration
        return None
    values = {}
    for k, v in row.items():
        if v is None:  # e.g. mfu when the device's peak is unknown
            values[k] = math.nan
        elif type(v) in (int, float):
            values[k] = float(v)
    # an evaluation's figures are named for their split: train_loss, val_loss, val_pass1 (rl.py) ...
    kind = EVAL if any(k.startswith(("val_", "train_")) for k in row) else STEP
    return kind, it, values


class _Columns:
    """One kind of row (steps or evaluations) as growing columns, in file order; a repeated
    iteration replaces its earlier row in place."""

    def __init__(self):
        self.iters, self.columns, self.where = [], {}, {}

    def add(self, it, values):
        i = self.where.get(it)
        if i is None:
            i = self.where[it] = len(self.iters)
            self.iters.append(it)
            for column in self.columns.values():
                column.append(math.nan)
        else:
            for column in self.columns.values():
                column[i] = math.nan
        for name, v in values.items():
            if name != "iter":
                if name not in self.columns:
                    self.columns[name] = [math.nan] * len(self.iters)
                self.columns[name][i] = v

    def table(self):
        # train.py writes iterations in order; a file pieced together by hand may not be
        order = np.argsort(np.array(self.iters, dtype=np.int64), kind="stable")
        table = {"iter": np.array(self.iters, dtype=np.int64)[order]}
        for name in sorted(self.columns):
            table[name] = np.array(self.columns[name], dtype=np.float64)[order]
        return table


class MetricsReader:
    """A metrics.jsonl followed as it grows: each read() parses only the lines added since the last
    and keeps the rows as columns, so redrawing a long run after every evaluation neither re-reads
    nor re-assembles its whole history (600,000 rows on a 2-core CPU: 0.25 s a read, against 6 s to
    parse the file again)."""

    def __init__(self, path, name=None):
        self.path = path
        self.name = name if name is not None else os.path.basename(os.path.dirname(os.path.abspath(path)))
        self._kinds = {STEP: _Columns(), EVAL: _Columns()}
        self._offset, self._inode = 0, None

    def read(self):
        """The run as it is on disk now."""
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_ino != self._inode or st.st_size < self._offset:
                # train.py rewrites the file (a new inode) when it resumes: start over
                self._kinds = {STEP: _Columns(), EVAL: _Columns()}
                self._offset, self._inode = 0, st.st_ino
            f.seek(self._offset)
            data = f.read()
        # whole lines only: the text after the last newline may still be being written. It counts if
        # it is a whole JSON object (a row closes only at its last brace): a file that lacks its final
        # newline, or a row whose newline is on its way (then an empty line, skipped).
        done = data.rfind(b"\n") + 1
        lines = data[:done].splitlines()
        if data[done:].strip() and _parse(data[done:]) is not None:
            lines.append(data[done:])
            done = len(data)
        for line in lines:
            parsed = _parse(line)
            if parsed is not None:
                kind, it, values = parsed
                self._kinds[kind].add(it, values)
        self._offset += done
        return Run(self.name, self._kinds[STEP].table(), self._kinds[EVAL].table())


def read_run(folder_or_file, name=None):
    """A run folder (or its metrics.jsonl) read once; the name is the folder as given."""
    path = folder_or_file if os.path.isfile(folder_or_file) else os.path.join(folder_or_file, "metrics.jsonl")
    if not os.path.isfile(path):
        raise PlotError(f"{folder_or_file} is not a run folder: it has no metrics.jsonl")
    return MetricsReader(path, name if name is not None else os.path.normpath(folder_or_file)).read()


@dataclass
class Run:
    """A run's rows as columns: steps and evals map each metric name to an array over the rows,
    sorted by iteration, NaN where a row lacks the metric."""
    name: str
    steps: dict
    evals: dict

    def metrics(self):
        return sorted((set(self.steps) | set(self.evals)) - {"iter"})

    def iterations(self):
        """Iterations done: one past the last step row, or the last evaluation (which comes after it)."""
        last_step = self.steps["iter"][-1] + 1 if len(self.steps["iter"]) else 0
        last_eval = self.evals["iter"][-1] if len(self.evals["iter"]) else 0
        return int(max(last_step, last_eval))

    def series(self, y, x="iter"):
        """(xs, ys, kind) of metric y over x, from the step rows if they have it (lr is in both)."""
        for kind, table in ((STEP, self.steps), (EVAL, self.evals)):
            if y in table and np.isfinite(table[y]).any():
                break
        else:
            return np.zeros(0), np.zeros(0), None
        its = table["iter"]
        if x == "iter":
            return its.astype(np.float64), table[y], kind
        # a step row's figures are taken after its step; an evaluation at iteration N runs before step N
        done = its + 1 if kind == STEP else its
        return self.along(x, done), table[y], kind

    def along(self, axis, done):
        """Tokens seen, or seconds of training, after `done` iterations (an array)."""
        its = self.steps["iter"]
        if axis == "tokens":
            values = self.steps.get("tokens", np.full(len(its), math.nan))
        elif np.isfinite(self.steps.get("elapsed_s", np.full(len(its), math.nan))).any():
            # wall time since the run started, as train.py logs it on every row (continued across resumes)
            values = self.steps["elapsed_s"]
        else:
            # Runs written before step rows carried elapsed_s: the sum of ms over the iterations each
            # row covers, i.e. training time without evaluations, saves and start-up.
            ms = self.steps.get("ms", np.full(len(its), math.nan))
            covered = np.diff(its, prepend=-1)
            values = np.cumsum(np.nan_to_num(ms) * covered) / 1000.0
            if not np.isfinite(ms).any():
                values[:] = math.nan
        ok = np.isfinite(values)
        p = np.concatenate([[0.0], (its[ok] + 1).astype(np.float64)])
        v = np.concatenate([[0.0], values[ok]])
        done = np.asarray(done, dtype=np.float64)
        out = np.interp(done, p, v)
        beyond = done > p[-1]  # evaluations after the last logged step: continue the last rate
        if len(p) >= 2:
            out[beyond] = v[-1] + (done[beyond] - p[-1]) * (v[-1] - v[-2]) / (p[-1] - p[-2])
        else:
            out[beyond] = math.nan
        return out


def summarize(run):
    """Best and last val loss, iterations, tokens and training seconds of a run; None where unknown
    (a last val loss of NaN is known: the run diverged)."""
    val = run.evals.get("val_loss", np.zeros(0))
    finite = np.isfinite(val)
    n = run.iterations()
    tokens, seconds = (float(run.along(axis, [n])[0]) for axis in ("tokens", "time"))
    return dict(
        best_val=float(val[finite].min()) if finite.any() else None,
        best_iter=int(run.evals["iter"][finite][np.argmin(val[finite])]) if finite.any() else None,
        last_val=float(val[-1]) if len(val) else None,
        iterations=n,
        tokens=tokens if math.isfinite(tokens) else None,
        seconds=seconds if math.isfinite(seconds) else None,
    )

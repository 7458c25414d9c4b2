"""
How many CPU threads the work runs on: all cores, or fewer when timing the work itself shows that
fewer go faster (other programs busy on the CPU), timed again now and then.

    threads = ThreadChooser(requested=cfg.threads, device=device, unit="step", say=print)
    threads.probe(lambda: model(X, Y))       # optional: a first choice from a few timed calls
    with threads.timed():                    # each unit of the loop (a training step) ...
        step(...)
    for token in threads.paced(tokens):      # ... or each item of a stream (a decoded token)
        ...
    threads.close()                          # the thread count the process had before

Why: PyTorch's CPU kernels split each operation over all cores and wait for the slowest part. On an
idle 2-core machine two threads train the CPU recipe 1.4x as fast as one, but while another program
keeps a core busy, one of the two threads waits for its turn on that core at every operation: the
recipe took 374-486 s instead of 25 s with two threads, and 34-40 s with one (a 2-core AMD EPYC,
two other processes spinning). Which count wins depends on the CPU, the model and what else runs, so
it is measured, on the work itself: the candidates (all cores, then halves down to 1) take turns
unit by unit, the fastest median wins, and the choice is timed again after a while, sooner when
the chosen count's units become much slower than when it was chosen.
"""

import contextlib
import os
import statistics
import time

import torch

# Time spent on a candidate slower than the chosen one, as a share of the time it is then held for:
# re-timing costs at most about this much of a run's time (plus the first trial).
TRIAL_BUDGET = 0.02
FIRST_HOLD = 5.0     # seconds before the first re-timing; each one that keeps the choice doubles it
LONGEST_HOLD = 600.0
ROUNDS = 3           # units of each candidate per trial, taking turns; the median of them counts
SLOWER = 2.0         # the chosen count's recent median this many times its trial median: time again
FEWER_BY = 0.97      # fewer threads must be at least 3% faster to be chosen (a tie keeps all cores)
BUSY_BY = 1.5        # all cores this many times slower than the choice: other programs are busy, said once


def ladder(most):
    """The candidate counts: most, then halves down to 1 (16, 8, 4, 2, 1)."""
    counts = [most]
    while counts[-1] > 1:
        counts.append(counts[-1] // 2)
    return counts


class ThreadChooser:
    """The process's torch thread count, chosen by timing the caller's units of work when `requested`
    is 0 on a CPU device and OMP_NUM_THREADS is not set (an explicit count is the user's choice); fixed
    otherwise (requested > 0 sets it). `say` gets one line, once: when fewer threads than cores are
    chosen, or, with a fixed count, when units take far longer than they did at first."""

    def __init__(self, requested=0, device="cpu", unit="step", say=None, clock=time.perf_counter):
        self.before = torch.get_num_threads()
        if requested > 0:
            torch.set_num_threads(requested)
        self.most, self.unit, self.say, self.clock = torch.get_num_threads(), unit, say, clock
        env = os.environ.get("OMP_NUM_THREADS")
        self.fixed = (f"--threads={requested}" if requested > 0 else f"OMP_NUM_THREADS={env}" if env else
                      None if str(device).startswith("cpu") else "not a CPU run")
        self.cpu = str(device).startswith("cpu")
        self.candidates = ladder(self.most) if self.fixed is None else [self.most]
        self.auto = len(self.candidates) > 1
        self.said = False
        self.turns = []          # the counts the next units run with, during a trial
        self.times = {}          # count -> this trial's unit times
        self.chosen, self.chosen_time = self.most, None
        self.hold, self.left = FIRST_HOLD, 0.0
        self.recent = []         # the chosen count's latest unit times, between trials
        self.first_time = None   # a fixed count's median over its first units
        self.skip = 1            # the first unit pays for allocation: not timed
        if self.auto:
            self._start_trial()

    @property
    def count(self):
        return torch.get_num_threads()

    def describe(self):
        """For the run's set-up line."""
        if self.auto:
            return f"threads {self.most} or fewer, chosen by timing the {_plural(self.unit)} (--threads=N fixes them)"
        return f"threads {self.most}" + (f" ({self.fixed})" if self.fixed != "not a CPU run" else "")

    # -- the loop's side

    @contextlib.contextmanager
    def timed(self):
        t0 = self.clock()
        yield
        self.record(self.clock() - t0)

    def paced(self, items):
        """The items of an iterator, each one's production timed as a unit; the first (a prompt's
        prefill, where the items are tokens) is not timed."""
        items = iter(items)
        first = True
        try:
            while True:
                t0 = self.clock()
                try:
                    item = next(items)
                except StopIteration:
                    return
                if not first:
                    self.record(self.clock() - t0)
                first = False
                yield item
        finally:  # the caller stopped early (a stop string): the stream's own clean-up runs now
            if hasattr(items, "close"):
                items.close()

    def probe(self, fn):
        """A first choice before the loop, from calls of fn (a forward pass) taking turns over the
        candidates: what runs before the first timed unit (a first evaluation) then runs with it.
        Returns the median call's seconds at the count chosen (or fixed)."""
        if self.auto:  # the warm-up on one thread: cheap on a busy machine, and on an idle one too
            torch.set_num_threads(1)
        t0 = self.clock()
        fn()  # warm-up: allocation, the first call's one-time costs
        rounds = 1 if self.clock() - t0 > 1 else ROUNDS  # calls of seconds (a big model on a CPU): one each
        if not self.auto:
            times = []
            for _ in range(rounds):
                t0 = self.clock()
                fn()
                times.append(self.clock() - t0)
            return statistics.median(times)
        self._start_trial(rounds)
        self.skip, unit, self.unit = 0, self.unit, "forward pass"
        while self.turns:
            t0 = self.clock()
            fn()
            self.record(self.clock() - t0)
        # the loop's units are not fn's: their pace at the chosen count is taken from the first ones
        seconds, self.chosen_time, self.skip, self.unit = self.chosen_time, None, 1, unit
        return seconds

    def record(self, seconds):
        """One unit's time, at the current count; sets the count the next unit runs with."""
        if self.skip:
            self.skip -= 1
            return
        if not self.auto:
            self._watch_fixed(seconds)
            return
        if self.turns:
            self.times.setdefault(self.count, []).append(seconds)
            self.turns.pop(0)
            if len(self.turns) % len(self.candidates) == 0 and self._decided():
                self.turns = []
            if self.turns:
                torch.set_num_threads(self.turns[0])
            else:
                self._decide()
            return
        self.recent = (self.recent + [seconds])[-ROUNDS:]
        self.left -= seconds
        if self.chosen_time is None and len(self.recent) == ROUNDS:
            self.chosen_time = statistics.median(self.recent)
        # much slower than when chosen: other work started, and fewer threads may now be faster (at 1
        # thread there are none fewer; that more would help is found at the next re-timing)
        slower = (self.chosen > 1 and self.chosen_time is not None and len(self.recent) == ROUNDS
                  and statistics.median(self.recent) > SLOWER * self.chosen_time)
        if self.left <= 0 or slower:
            if slower:
                self.hold = FIRST_HOLD
            self._start_trial()

    def close(self):
        torch.set_num_threads(self.before)

    # -- inside

    def _start_trial(self, rounds=ROUNDS):
        # the chosen count first: a trial costs least when it starts with what has been running
        order = [self.chosen] + [c for c in self.candidates if c != self.chosen]
        self.turns = order * rounds
        self.times = {}
        torch.set_num_threads(self.turns[0])

    def _decided(self):
        """After a round: one candidate's slowest unit under half of every other's fastest settles it
        (a busy machine's 10x shows in one round; an idle machine's few tens of percent take all)."""
        best = min(self.times, key=lambda c: max(self.times[c]))
        return all(min(t) > 2 * max(self.times[best]) for c, t in self.times.items() if c != best)

    def _decide(self):
        medians = {c: statistics.median(t) for c, t in self.times.items()}
        best = self.most
        for c in self.candidates[1:]:  # fewer threads only where clearly faster
            if medians[c] < FEWER_BY * medians[best]:
                best = c
        # what the slower candidates cost this trial, over the fastest
        cost = sum(sum(t) - len(t) * medians[best] for c, t in self.times.items() if c != best)
        self.hold = min(LONGEST_HOLD, self.hold * 2 if best == self.chosen else FIRST_HOLD)
        self.left = max(self.hold, cost / TRIAL_BUDGET)
        self.chosen, self.chosen_time, self.recent = best, medians[best], []
        torch.set_num_threads(best)
        # (a small model is often a little faster on fewer threads on an idle machine too: that is not news)
        if best < self.most and medians[self.most] >= BUSY_BY * medians[best] and not self.said and self.say:
            self.said = True
            self.say(f"note: the CPU is busy with other work: {_plural(self.unit)} took "
                     f"{medians[self.most] * 1000:,.1f} ms at {_threads(self.most)} and {medians[best] * 1000:,.1f} ms "
                     f"at {_threads(best)}, so this run uses {best} (timed again now and then; --threads=N fixes "
                     f"the count)")

    def _watch_fixed(self, seconds):
        self.recent = (self.recent + [seconds])[-ROUNDS:]
        if len(self.recent) < ROUNDS:
            return
        if self.first_time is None:
            self.first_time = statistics.median(self.recent)
            return
        now = statistics.median(self.recent)
        if self.cpu and self.most > 1 and not self.said and self.say and now > 3 * self.first_time:
            self.said = True
            way = ("leave --threads unset to let the run choose by timing" if self.fixed.startswith("--")
                   else "unset OMP_NUM_THREADS to let the run choose by timing")
            self.say(f"note: {_plural(self.unit)} take {now / self.first_time:.1f}x as long as at first "
                     f"({now * 1000:,.1f} ms against {self.first_time * 1000:,.1f}): if other programs are busy on "
                     f"this CPU, fewer threads than {self.most} can be much faster ({way})")


def _threads(n):
    return f"{n} thread{'s' * (n != 1)}"


def _plural(unit):
    return unit + ("es" if unit.endswith("s") else "s")

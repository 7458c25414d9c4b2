"""A run's pace: the CPU thread count chosen by timing the work (gptkit/threads.py), on a simulated clock
whose units cost what a busy or an idle 2-core machine was measured to charge; and the forecast of a
run's time from its own steps (gptkit/training.py), against the time a real run took."""

import re

import pytest
import torch

from conftest import run
from gptkit.threads import ThreadChooser, ladder
from gptkit.loggers import Forecast, evaluations_left


class Machine:
    """A clock, and units of work whose cost depends on torch's thread count at the time they run."""

    def __init__(self, cost):
        self.now, self.cost, self.counts = 0.0, cost, []

    def clock(self):
        return self.now

    def work(self):
        self.counts.append(torch.get_num_threads())
        self.now += self.cost(torch.get_num_threads())


@pytest.fixture
def two_cores(monkeypatch):
    """torch at 2 threads with OMP_NUM_THREADS unset (the tests' processes set it), restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def run_units(chooser, machine, n):
    for _ in range(n):
        with chooser.timed():
            machine.work()


# the CPU recipe's steps on a 2-core machine: idle, and with two other processes spinning
IDLE = {2: 0.070, 1: 0.100}
BUSY = {2: 1.400, 1: 0.115}


def test_a_busy_machine_runs_on_fewer_threads_and_says_so_once(two_cores):
    said = []
    machine = Machine(lambda n: BUSY[n])
    chooser = ThreadChooser(device="cpu", say=said.append, clock=machine.clock)
    run_units(chooser, machine, 300)
    assert torch.get_num_threads() == 1
    assert len(said) == 1 and "1,400.0 ms at 2 threads and 115.0 ms at 1 thread, so this run uses 1" in said[0]
    # the slow count was tried only while choosing: the run's time stays within 2x of the best possible
    assert machine.now < 2 * 300 * BUSY[1]
    chooser.close()
    assert torch.get_num_threads() == 2


def test_an_idle_machine_keeps_all_cores_and_spends_little_time_trying_fewer(two_cores):
    said = []
    machine = Machine(lambda n: IDLE[n])
    chooser = ThreadChooser(device="cpu", say=said.append, clock=machine.clock)
    run_units(chooser, machine, 3000)  # 3.5 minutes of steps
    assert torch.get_num_threads() == 2 and not said
    assert machine.now < 1.02 * 3000 * IDLE[2]  # re-timing costs under 2%


def test_a_model_a_little_faster_on_fewer_threads_uses_them_without_a_word(two_cores):
    said = []
    machine = Machine(lambda n: {2: 0.0038, 1: 0.0034}[n])  # a tiny model's decoded tokens on an idle machine
    chooser = ThreadChooser(device="cpu", unit="token", say=said.append, clock=machine.clock)
    run_units(chooser, machine, 200)
    assert torch.get_num_threads() == 1 and not said


def test_load_that_arrives_midway_is_noticed_within_a_few_units(two_cores):
    machine = Machine(lambda n: IDLE[n])
    chooser = ThreadChooser(device="cpu", clock=machine.clock)
    run_units(chooser, machine, 500)
    assert torch.get_num_threads() == 2
    machine.cost = lambda n: BUSY[n]
    run_units(chooser, machine, 15)
    assert torch.get_num_threads() == 1
    assert machine.counts[-5:] == [1] * 5


def test_a_probe_chooses_before_the_loop_and_the_stream_of_tokens_is_paced(two_cores):
    machine = Machine(lambda n: BUSY[n])
    chooser = ThreadChooser(device="cpu", unit="token", clock=machine.clock)
    assert chooser.probe(machine.work) == pytest.approx(BUSY[1]) and torch.get_num_threads() == 1

    closed = []

    def tokens():
        try:
            for i in range(100):
                machine.work()
                yield i
        finally:
            closed.append(True)

    for i in chooser.paced(tokens()):
        if i == 50:
            break
    assert closed and torch.get_num_threads() == 1  # a stream left early is closed; no retrial at 2 threads
    assert machine.counts[-50:] == [1] * 50


def test_a_fixed_count_is_kept_and_a_slowdown_is_said_once_with_the_setting_that_helps(two_cores, monkeypatch):
    said = []
    machine = Machine(lambda n: IDLE[n])
    chooser = ThreadChooser(requested=2, device="cpu", say=said.append, clock=machine.clock)
    run_units(chooser, machine, 20)
    machine.cost = lambda n: BUSY[n]
    run_units(chooser, machine, 20)
    assert set(machine.counts) == {2}
    assert len(said) == 1 and "20.0x as long as at first" in said[0] and "leave --threads unset" in said[0]

    assert not ThreadChooser(device="cuda").auto  # the CPU's threads are not what a GPU run waits for
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    chooser = ThreadChooser(device="cpu", say=said.append, clock=machine.clock)
    assert not chooser.auto and "OMP_NUM_THREADS=2" in chooser.describe()


def test_the_candidates_halve_down_to_one():
    assert ladder(16) == [16, 8, 4, 2, 1] and ladder(6) == [6, 3, 1] and ladder(1) == [1]


def test_evaluations_left_count_what_the_loop_evaluates():
    for max_iters in range(0, 25):
        for interval in (1, 4, 5, 30):
            for it in range(0, max_iters + 1):
                # the loop evaluates at every multiple of eval_interval and at max_iters
                expected = sum(1 for k in range(it + 1, max_iters + 1) if k % interval == 0 or k == max_iters)
                assert evaluations_left(it, max_iters, interval) == expected, (it, max_iters, interval)


def test_the_forecast_is_the_median_of_recent_steps_without_the_first():
    forecast = Forecast(window=5)
    for seconds in (9.0, 0.1, 0.1, 5.0, 0.1, 0.2, 0.1):
        forecast.step(seconds)
    assert forecast.step_time() == pytest.approx(0.1)
    forecast.evaluation(2.0)
    assert forecast.remaining(100, 2) == pytest.approx(14.0)


def test_the_forecast_of_the_cpu_recipe_is_within_2x_of_the_time_it_takes(char_data, tmp_path):
    # the CPU recipe's model and settings on the tests' corpus, shortened; evaluations at 0, 20 and 40
    p = run("train.py", "config/train_shakespeare_char_cpu.py", "--dataset=play_char", "--max_iters=40",
            "--lr_decay_iters=40", "--eval_interval=20", "--eval_iters=4", f"--out_dir={tmp_path / 'run'}")
    expected = re.search(r"^expect \(from the first \d+ steps\): each step ~[\d.,]+ ms, each evaluation ~[\d.]+ s, "
                         r"the whole run ~([\d.]+) s$", p.stdout, re.M)
    took = re.search(r"^done in ([\d.]+) s", p.stdout, re.M)
    assert expected and took, p.stdout
    assert 0.5 < float(expected[1]) / float(took[1]) < 2, (expected[0], took[0])

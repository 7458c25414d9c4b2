"""The scripts as real processes (`python script.py ...`, as a user starts them), where the tests' launcher
could hide what matters: closed streams (`>&-`, `2>&-`, `<&-`), a reader that leaves (`| head`), Ctrl-C
while a script loads, two prepares into one folder, and exit statuses. Each case is also run through
the launcher the other tests use, which must behave as the real process does."""

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import CORPUS, ROOT, TINY, assert_clean_error, digests, run

pytestmark = pytest.mark.slow

STREAMS = ("stdin", "stdout", "stderr")  # file descriptors 0, 1 and 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SAMPLE = ["--device=cpu", "--num_samples=1", "--max_new_tokens=8"]


def closing(closed):
    """What the shell does for `>&-` and the like: the child starts with those descriptors closed."""
    return lambda: [os.close(STREAMS.index(name)) for name in closed]


def real(script, *args, closed=(), input=None, timeout=120):
    """`python script args` run to its end as a user runs it, with the streams in `closed` closed."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=ENV, text=True,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, preexec_fn=closing(closed), timeout=timeout)


def start_real(script, *args, stdout=subprocess.PIPE):
    return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT, env=ENV, text=True,
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE)


def errors_of(p):
    return [line for line in p.stderr.splitlines() if line.startswith("error:")]


# (script, arguments, closed streams, expected status, words of the one error sentence: none for a success)
CASES = {
    "sample": ("sample.py", SAMPLE, (), 0, None),
    "sample >&-": ("sample.py", SAMPLE, ("stdout",), 1, ["standard output is closed"]),
    "sample 2>&-": ("sample.py", SAMPLE, ("stderr",), 0, None),
    "sample 2>&- of no run": ("sample.py", ["--out_dir=/nonexistent/run", "--device=cpu"], ("stderr",), 1, None),
    "sample, an unknown key": ("sample.py", ["--temprature=0.5"], (), 2, ["temprature", "temperature"]),
    "sample, no run": ("sample.py", ["--out_dir=/nonexistent/run", "--device=cpu"], (), 1, ["/nonexistent/run"]),
    "chat <&-": ("chat.py", ["--device=cpu"], ("stdin",), 2, ["standard input is closed"]),
    "train >&-": ("train.py", ["--dataset=play_char", *TINY, "--max_iters=1"], ("stdout",), 1,
                  ["standard output is closed"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_closed_streams_and_exit_statuses_as_a_real_process_and_in_the_launcher(case, char_run, char_data):
    """A real process ends with the expected status, one sentence and never a traceback, and the launcher
    gives the same status, output and sentence."""
    script, args, closed, status, words = CASES[case]
    if script in ("sample.py", "chat.py") and not any(a.startswith("--out_dir") for a in args):
        args = [f"--out_dir={char_run}", *args]
    p = real(script, *args, closed=closed)
    assert p.returncode == status, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "Error in sys.excepthook" not in p.stderr, p.stderr
    if words is not None:
        assert_clean_error(p, status, words)
    elif "stderr" not in closed:
        assert not errors_of(p), p.stderr
    launched = run(script, *args, closed=closed, check=False)
    assert (launched.returncode, launched.stdout, errors_of(launched)) == (p.returncode, p.stdout, errors_of(p))


def test_sampling_into_a_reader_that_leaves_ends_quietly(char_run):
    """`python sample.py | head -n 1`: the reader leaves; no traceback, status 0, in a real process and in
    the launcher alike."""
    args = [f"--out_dir={char_run}", "--device=cpu", "--num_samples=20", "--max_new_tokens=200"]
    import launcher
    for p in (start_real("sample.py", *args), launcher.start("sample.py", args, None)):
        p.stdout.readline()
        p.stdout.close()  # the reader leaves
        p.wait(timeout=120)
        stderr = p.stderr.read()
        assert p.returncode == 0 and "Traceback" not in stderr, (type(p).__name__, p.returncode, stderr)


def interrupt_while_loading(p, library):
    """Send Ctrl-C's SIGINT as soon as the process maps `library`'s compiled code (an import under way)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/maps") as f:
                if library in f.read():
                    break
        except OSError:
            pass
        time.sleep(0.002)
    else:
        pytest.fail(f"{library} was never loaded")
    p.send_signal(signal.SIGINT)
    return p.communicate(timeout=60)


@pytest.mark.serial
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="watches /proc/PID/maps (Linux) to see an import under way")
@pytest.mark.parametrize("script, library", [("sample.py", "libtorch"), ("data/shakespeare_char/prepare.py", "numpy")])
def test_ctrl_c_while_a_script_loads_ends_with_130_and_one_line(script, library, char_run, tmp_path):
    out = tmp_path / "out"
    args = ([f"--out_dir={char_run}", *SAMPLE] if script == "sample.py" else [CORPUS, f"--out={out}"])
    p = start_real(script, *args)
    stdout, stderr = interrupt_while_loading(p, library)
    assert p.returncode == 130, (p.returncode, stderr)
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("interrupted"), stderr
    assert stdout == "" and not out.exists()


def test_two_prepares_into_one_folder_leave_what_one_prepare_writes(tmp_path):
    """Two prepares of one corpus started at once into one folder: the one that finds the folder taken
    says so (naming the other's PID), and the folder ends byte for byte as a lone prepare leaves it."""
    big = tmp_path / "big.txt"
    big.write_text(CORPUS.read_text(encoding="utf-8") * 4, encoding="utf-8")
    alone, shared = tmp_path / "alone", tmp_path / "shared"
    assert real("data/shakespeare_char/prepare.py", big, f"--out={alone}").returncode == 0
    first = start_real("data/shakespeare_char/prepare.py", big, f"--out={shared}")
    second = start_real("data/shakespeare_char/prepare.py", big, f"--out={shared}")
    results = [(p, *p.communicate(timeout=120)) for p in (first, second)]
    refused = [(p, err) for p, _, err in results if p.returncode != 0]
    for p, err in refused:
        other = second if p is first else first
        assert p.returncode == 1 and "Traceback" not in err, err
        assert f"in use by another prepare script (PID {other.pid})" in err, err
    assert len(refused) <= 1

    def data(folder):  # the lock file holds its last holder's PID
        return {name: digest for name, digest in digests(folder).items() if name != "prepare.lock"}
    assert data(shared) == data(alone)


SCRIPTS = ["train.py", "sample.py", "chat.py", "eval.py", "export.py", "bench.py", "plot.py",
           *sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("data/*/prepare.py"))]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_a_mistyped_argument_with_one_sentence_and_status_2(script):
    p = real(script, "--no_such_setting=1")
    assert_clean_error(p, 2, ["no_such_setting"])


def no_room():
    """A disk that is full for this process: files may not grow past 64 bytes (writes fail with EFBIG; Python
    ignores the signal that would otherwise come with it)."""
    import resource
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


def temporaries(folder):
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def test_every_write_path_answers_a_full_disk_and_an_unwritable_folder_with_one_sentence(prepare_inputs, char_run,
                                                                                        tmp_path):
    """Every prepare script, plot.py and export.py, run with no room on the disk, and with a destination in a
    folder nobody may write to (/sys): one sentence, never a traceback, and no temporary left behind."""
    writers = {f"data/{name}/prepare.py": (args, "--out={}") for name, args in prepare_inputs.items()}
    writers["plot.py"] = ([char_run], "--out={}.png")
    writers["export.py"] = ([f"--out_dir={char_run}"], "--export_dir={}")
    unwritable = "/sys/gpt-test-output"  # even root may not create files there
    for script, (args, dest) in writers.items():
        full = tmp_path / "full" / script.replace("/", "-")
        full.parent.mkdir(exist_ok=True)
        p = subprocess.run([sys.executable, str(ROOT / script), *map(str, args), dest.format(full)], cwd=ROOT, env=ENV,
                           text=True, capture_output=True, stdin=subprocess.DEVNULL, preexec_fn=no_room, timeout=300)
        assert_clean_error(p, words=["could not "])
        assert not temporaries(full.parent), (script, temporaries(full.parent))
        if os.path.isdir("/sys"):
            p = run(script, *args, dest.format(unwritable), check=False)  # the launcher: no real process needed
            assert p.returncode != 0 and "Traceback" not in p.stderr and len(errors_of(p)) == 1, (script, p.stderr)


def test_an_uncaught_user_error_ends_the_process_as_any_exit_does():
    """errors.install's hook: the sentence and its status, with finally blocks, atexit functions and a
    non-daemon thread's work all done first (nothing is cut short as by an immediate exit)."""
    code = ("import atexit, sys, threading, time\n"
            "from gptkit import errors\n"
            "errors.install()\n"
            "atexit.register(lambda: print('atexit ran', flush=True))\n"
            "threading.Thread(target=lambda: (time.sleep(0.3), print('thread finished', flush=True))).start()\n"
            "try:\n"
            "    raise errors.UserError('the file is missing; give another', status=3)\n"
            "finally:\n"
            "    print('finally ran', flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, text=True, capture_output=True, timeout=60)
    assert p.returncode == 3 and p.stderr == "error: the file is missing; give another\n", (p.returncode, p.stderr)
    assert p.stdout.splitlines() == ["finally ran", "thread finished", "atexit ran"], p.stdout

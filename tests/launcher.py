"""
The project's scripts run as fresh child processes that start in milliseconds instead of seconds: each
is forked from a server process that imported torch, numpy, matplotlib and the project once
(multiprocessing's forkserver), then runs the script as `python script.py args` would (runpy, its
own sys.argv, environment, working directory, stdin, stdout, stderr and signal handlers). A run shares
no state with the test process or with other runs: its locks, signals and globals are its own, and
it exits as the interpreter would, with the script's status (an `error: ...` sentence and its status through
errors.install's hook, 130 after Ctrl-C, -N when killed by signal N).

Environment variables read as the interpreter starts or a module is imported are those of the server:
a run that sets one of those (PYTHONPATH; HF_*, which huggingface_hub reads at import) is started as a
plain subprocess instead.
"""

import atexit
import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# imported once by the server; each fork inherits them (a run that sets HF_*, which transformers' hub
# client reads at import, gets a plain subprocess: see needs_plain_process)
PRELOAD = ["torch", "torch._dynamo", "numpy", "tiktoken", "matplotlib.figure", "matplotlib.backends.backend_agg",
           "safetensors.torch", "transformers", "transformers.models.gpt2.modeling_gpt2",
           "transformers.models.llama.modeling_llama", "transformers.models.qwen3.modeling_qwen3",
           "model", "configurator", "gptkit.checkpoint", "gptkit.curves", "gptkit.dataset", "gptkit.dataprep",
           "gptkit.generate", "gptkit.hf", "gptkit.init_from", "gptkit.loading", "gptkit.loggers", "gptkit.optim",
           "gptkit.runtime", "gptkit.training", "gptkit.tokenizer", "gptkit.arithmetic", "gptkit.conversation",
           "gptkit.documents"]
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


class _Fd:
    """A file descriptor handed to the child: duplicated into it as the process is started (a plain int
    would name nothing there, since the child is forked from the server, not from this process)."""

    def __init__(self, fd):
        self.fd = fd

    def __reduce__(self):
        return _detach, (multiprocessing.reduction.DupFd(self.fd),)


def _detach(dup):
    return dup.detach()


STREAMS = ("stdin", "stdout", "stderr")  # file descriptors 0, 1 and 2


def _child(script, argv, env, cwd, umask, stdin_path, stdout_fd, stderr_path, closed=()):
    """Runs in the forked process: become `python script argv...` and exit with its status. The streams
    named in `closed` are closed, as `<&-`, `>&-` or `2>&-` start a process: the descriptor is not open and
    the interpreter's sys.stdin, sys.stdout or sys.stderr is None."""
    os.chdir(cwd)
    os.umask(umask)
    os.environ.clear()
    os.environ.update(env)
    stdin = os.open(stdin_path or os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    if stdout_fd is None:
        stdout_fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(stdout_fd, 1)
    err = os.open(stderr_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(err, 2)
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    # unbuffered, as PYTHONUNBUFFERED=1 makes them: a test reads lines as they are printed
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True,
                                  write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", line_buffering=True,
                                  write_through=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr
    for name in closed:
        os.close(STREAMS.index(name))
        setattr(sys, name, None)
        setattr(sys, f"__{name}__", None)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import torch
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    sys.argv = [script, *argv]
    sys.path[0] = os.path.dirname(script)
    status = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        status = _exit_status(e)
    except BaseException:
        try:
            sys.excepthook(*sys.exc_info())  # the script's own (errors.install): a sentence and its status
            status = 1
        except SystemExit as e:  # the way errors.install's hook ends a script with its status
            status = _exit_status(e)
    try:
        # as the interpreter ends: the main thread counts as ended and the other non-daemon threads
        # are waited for (threading's own exit step), then the atexit functions run
        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    finally:
        os._exit(status)


def _exit_status(e):
    if isinstance(e.code, str):
        print(e.code, file=sys.stderr)
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


class Child:
    """A running script, with the parts of subprocess.Popen the tests use: pid, stdout (text, read as
    it is written, when started with pipe_stdout), poll, wait, send_signal, communicate."""

    def __init__(self, script, args, env, cwd, input=None, pipe_stdout=False, closed=()):
        self._files = tempfile.TemporaryDirectory(prefix="script-")
        stdin_path = None
        if input is not None:
            stdin_path = os.path.join(self._files.name, "stdin")
            with open(stdin_path, "w", encoding="utf-8") as f:
                f.write(input)
        self._stderr_path = os.path.join(self._files.name, "stderr")
        self._stdout_path = os.path.join(self._files.name, "stdout")
        open(self._stderr_path, "w").close()
        if pipe_stdout:
            read, write = os.pipe()
        else:
            read, write = None, os.open(self._stdout_path, os.O_WRONLY | os.O_CREAT, 0o644)
        umask = os.umask(0o022)  # this process's umask, which a subprocess would inherit
        os.umask(umask)
        self.process = _server().Process(target=_child, args=(script, list(args), env, cwd, umask, stdin_path,
                                                              _Fd(write), self._stderr_path, tuple(closed)))
        self.process.start()
        os.close(write)
        self.pid = self.process.pid
        self.stdout = os.fdopen(read, encoding="utf-8") if pipe_stdout else None
        self.returncode = None

    @property
    def stderr(self):
        """What the script has written to stderr so far, as a file to read."""
        return open(self._stderr_path, encoding="utf-8", errors="replace")

    def poll(self):
        if self.returncode is None and not self.process.is_alive():
            self.process.join()
            self.returncode = self.process.exitcode
        return self.returncode

    def wait(self, timeout=None):
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(self.process.name, timeout)
        self.returncode = self.process.exitcode
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout=None):
        """(stdout, stderr) once the script has ended; it is killed after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = self.stdout.read() if self.stdout is not None and not self.stdout.closed else None
        try:
            self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        if out is None:
            out = ""
            if os.path.exists(self._stdout_path):
                with open(self._stdout_path, encoding="utf-8", errors="replace") as f:
                    out = f.read()
        with open(self._stderr_path, encoding="utf-8", errors="replace") as f:
            err = f.read()
        if self.stdout is not None:
            self.stdout.close()
        self._files.cleanup()
        return out, err


def needs_plain_process(env):
    """Whether env sets what is read as the interpreter starts (PYTHONPATH, ...) or as a module is imported
    (huggingface_hub's HF_*): those take a plain subprocess."""
    return any(k.startswith(("HF_", "PYTHON")) and k != "PYTHONUNBUFFERED" for k in env or {})


def start(script, args, env, cwd=ROOT, input=None, pipe_stdout=True, closed=()):
    """A script started as a child; a plain subprocess where the environment must be read at import.
    `closed`: the streams ("stdin", "stdout", "stderr") it starts without, as after `>&-`."""
    script = os.path.join(ROOT, script) if not os.path.isabs(script) else script
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if needs_plain_process(env):
        return subprocess.Popen([sys.executable, script, *map(str, args)], cwd=cwd, env=full_env, text=True,
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=(lambda: [os.close(STREAMS.index(n)) for n in closed]) if closed else None)
    return Child(script, [str(a) for a in args], full_env, str(cwd), input=input, pipe_stdout=pipe_stdout,
                 closed=closed)


def run(script, args, env=None, cwd=ROOT, input=None, timeout=600, closed=()):
    """A script run to its end: subprocess.CompletedProcess with its status, stdout and stderr."""
    child = start(script, args, env, cwd, input=input, pipe_stdout=False, closed=closed)
    if isinstance(child, subprocess.Popen):
        out, err = child.communicate(input=input, timeout=timeout)
    else:
        out, err = child.communicate(timeout=timeout)
    script = os.path.join(ROOT, script) if not os.path.isabs(script) else script
    return subprocess.CompletedProcess([sys.executable, script, *map(str, args)], child.returncode, out, err)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(script, args, nprocs=2, env=None, cwd=ROOT, timeout=600):
    """A script run as the nprocs processes of one torchrun job on this machine (the environment torchrun
    gives its workers: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), each forked from the server
    like any other run. torchrun's own part (restarts, forwarding signals) is not involved: tests of that
    start torchrun itself. Returns each rank's CompletedProcess, rank 0 first; if one rank ends badly,
    the others are killed rather than left waiting for it."""
    port = free_port()
    children = [start(script, args, {**(env or {}), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(nprocs),
                                      "LOCAL_WORLD_SIZE": str(nprocs), "MASTER_ADDR": "127.0.0.1",
                                      "MASTER_PORT": str(port)}, cwd, pipe_stdout=False)
                for r in range(nprocs)]
    deadline = time.monotonic() + timeout
    while any(c.poll() is None for c in children):
        failed = any(c.returncode not in (None, 0) for c in children)
        if failed or time.monotonic() > deadline:
            time.sleep(2.0 if failed else 0)  # a failed rank's partners get a moment to end on their own
            for c in children:
                c.kill()
            break
        time.sleep(0.05)
    results = []
    for c in children:
        out, err = c.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(c.pid, c.returncode, out, err))
    return results

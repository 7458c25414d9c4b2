"""
serve.py with int8 weights against llama-cpp-python's server (`python -m llama_cpp.server`) on a Q8_0 GGUF
of the same weights, both asked through the `openai` client: aggregate tokens/s for 1 and for 8 concurrent
clients, each request 128 greedy tokens after the same prompt, medians of --repeats rounds. The model is
random weights in GPT-2 124M's shape (the weights do not change the time), saved as a run and exported
with `export.py --format=gguf --gguf_type=q8_0`. Both servers get the same thread count (OMP_NUM_THREADS for serve.py, n_threads for llama.cpp).

    python experiments/serve_vs_llamacpp.py --llama_python=path/to/python-with-llama-cpp-python --threads=2

--llama_python: a Python where `pip install 'llama-cpp-python[server]'` was run (it compiles llama.cpp,
which takes over ten minutes); this Python by default.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import openai
import torch

from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
TOKENS = 128

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--llama_python", default=sys.executable)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--repeats", type=int, default=3)
args = parser.parse_args()

work = tempfile.mkdtemp(prefix="serve-vs-llamacpp-")
run = os.path.join(work, "run")
os.makedirs(run)
torch.manual_seed(0)
shape = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True, dropout=0.0)
torch.save(dict(model=GPT(GPTConfig(**shape)).state_dict(), model_args=shape, iter_num=0, best_val_loss=0.0,
                config={}), os.path.join(run, "ckpt.pt"))
env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
subprocess.run([sys.executable, "export.py", f"--out_dir={run}", "--format=gguf", "--gguf_type=q8_0"], cwd=ROOT,
               check=True, env=env, stdout=subprocess.DEVNULL)
gguf = os.path.join(run, "model-q8_0.gguf")
servers = {
    "serve.py int8": ([sys.executable, "serve.py", f"--out_dir={run}", "--quantize=int8", "--port=8101",
                       "--max_batch=8", f"--max_tokens={TOKENS}"], 8101, ROOT),
    "llama_cpp.server Q8_0": ([args.llama_python, "-m", "llama_cpp.server", "--model", gguf, "--port", "8102",
                               "--n_ctx", "2048", "--n_threads", str(args.threads)], 8102, work),
}


def tokens_per_s(client, name, n):
    """Aggregate completion tokens a second of n clients, each sending one request at once."""
    counts = [0] * n

    def ask(i):
        r = client.completions.create(model=name, prompt=PROMPT, max_tokens=TOKENS, temperature=0.0)
        counts[i] = r.usage.completion_tokens

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


medians = {}
for label, (command, port, cwd) in servers.items():
    server = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)
        for _ in range(300):  # until it answers
            try:
                name = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                time.sleep(1)
        tokens_per_s(client, name, 1)  # warm-up
        for n in (1, 8):
            rounds = [tokens_per_s(client, name, n) for _ in range(args.repeats)]
            medians[label, n] = statistics.median(rounds)
            print(f"{label}, {n} client(s): {medians[label, n]:.1f} tok/s (rounds: "
                  f"{', '.join(f'{r:.1f}' for r in rounds)})", flush=True)
    finally:
        server.terminate()
        server.wait()
for n in (1, 8):
    ours, theirs = (medians[label, n] for label in servers)
    print(f"{n} client(s): serve.py int8 / llama.cpp Q8_0 = {ours / theirs:.2f}")

"""
Loading a Hugging Face model: this project's reader (gptkit.hf_models) against transformers'
AutoModelForCausalLM.from_pretrained, each as a whole process (imports included), wall time and peak
resident memory, medians of --repeats runs. The model is random weights in Qwen2.5-0.5B's shape, saved
once as a local folder in --dtype (Qwen2.5-0.5B ships bfloat16), and both load it in that dtype, then run
one forward of 8 tokens: transformers 5 leaves the weights in the file's memory map, read from disk on
first use, so a load alone would not count their memory (nor the time to read them) on its side.

    python experiments/hf_load_time.py --folder=/tmp/qwen2.5-0.5b-shape --repeats=3
"""

import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
             rms_norm_eps=1e-6, tie_word_embeddings=True)


def make(folder, dtype):
    import torch
    import transformers
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, dtype))
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**SHAPE))
    model.save_pretrained(folder)
    print(f"wrote {sum(p.numel() for p in model.parameters()):,} parameters to {folder}")


LOADERS = {
    "gptkit": "import torch; from gptkit import loading; "
              "m, _ = loading.load_pretrained({folder!r}, dtype=torch.{dtype}); m(torch.zeros(1, 8, dtype=torch.long))",
    "transformers": "import torch; from transformers import AutoModelForCausalLM; "
                    "m = AutoModelForCausalLM.from_pretrained({folder!r}, dtype=torch.{dtype}); "
                    "m(torch.zeros(1, 8, dtype=torch.long))",
}


def measure(code):
    """(wall seconds, peak RSS in MB) of a fresh Python running code."""
    p = subprocess.run(["/usr/bin/time", "-f", "%e %M", sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    wall, rss = p.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/qwen2.5-0.5b-shape")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(args.folder, "config.json")):
        make(args.folder, args.dtype)
    runs = {name: [] for name in LOADERS}
    for _ in range(args.repeats):  # interleaved, so a busy spell of the machine hits both alike
        for name, code in LOADERS.items():
            runs[name].append(measure(code.format(folder=args.folder, dtype=args.dtype)))
    for name, results in runs.items():
        walls, rss = zip(*results)
        print(f"{name:>12}: wall {statistics.median(walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}), "
              f"peak RSS {statistics.median(rss):,.0f} MB (runs {', '.join(f'{r:,.0f}' for r in rss)})")


if __name__ == "__main__":
    main()

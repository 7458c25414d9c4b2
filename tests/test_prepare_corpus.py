"""data/openwebtext/prepare.py and data/corpus/prepare.py: bins that decode back to the documents,
<|endoftext|> after each one, memory that does not grow with the corpus, clear failures. (Shards, trained
tokenizers and continued prepares: test_data.py.)"""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from conftest import CORPUS, CORPUS_VOCAB, DATA_ROOT, ROOT, TINY, assert_clean_error, run

EOT = 50256


@pytest.fixture(scope="module")
def enc(gpt2_encoding):
    return gpt2_encoding


def documents(n, seed=0):
    """n documents cut from the tests' corpus at random places and lengths, some with non-ASCII text."""
    text = CORPUS.read_text(encoding="utf-8")
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        start = int(rng.integers(0, len(text) - 3000))
        doc = text[start:start + int(rng.integers(1, 3000))]
        docs.append(doc + (" — naïve café 東京\n" if i % 3 == 0 else ""))
    return docs


def write_local(folder, docs):
    """Half the documents as lines of a .jsonl file, the rest as .txt files: the local layout."""
    folder.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    with open(folder / "a.jsonl", "w", encoding="utf-8") as f:
        for d in docs[:half]:
            f.write(json.dumps({"text": d}) + "\n")
    for i, d in enumerate(docs[half:]):
        (folder / f"b{i:04d}.txt").write_text(d, encoding="utf-8")
    return folder


def split_documents(path, enc):
    """The documents of a bin: every one must end with <|endoftext|>."""
    ids = np.fromfile(path, dtype=np.uint16).tolist()
    assert ids and ids[-1] == EOT
    out, cur = [], []
    for t in ids:
        if t == EOT:
            out.append(enc.decode(cur))
            cur = []
        else:
            cur.append(t)
    return out


@pytest.mark.slow
def test_openwebtext_local_input_decodes_to_the_documents(tmp_path, enc):
    docs = documents(40)
    src = write_local(tmp_path / "in", docs)
    out = tmp_path / "out"
    run("data/openwebtext/prepare.py", f"--input={src}", f"--out={out}", "--val_fraction=0.1", "--num_proc=2",
        "--shard_tokens=0")  # nanoGPT's layout: one train.bin and val.bin
    train, val = split_documents(out / "train.bin", enc), split_documents(out / "val.bin", enc)
    # 4 evenly spaced documents are val, the rest train, each in its original order
    val_index = [i for i in range(40) if (i + 1) * 4 // 40 > i * 4 // 40]
    assert val == [docs[i] for i in val_index]
    assert train == [d for i, d in enumerate(docs) if i not in val_index]
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_openwebtext_datasets_pipeline_on_a_local_dataset(tmp_path, enc):
    pytest.importorskip("datasets")
    docs = documents(30, seed=1)
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    out = tmp_path / "out"
    run("data/openwebtext/prepare.py", "--dataset=json", f"--data_files={tmp_path / 'docs.jsonl'}", f"--out={out}",
        "--val_fraction=0.1", "--num_proc=2", "--shard_tokens=0",
        env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    train, val = split_documents(out / "train.bin", enc), split_documents(out / "val.bin", enc)
    assert val == docs[9::10] and train == [d for i, d in enumerate(docs) if i % 10 != 9]  # streamed in order


MEASURE = """
import resource, runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mb(src, out):
    p = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT / "data/openwebtext/prepare.py"), f"--input={src}",
                        f"--out={out}", "--batch_mb=1", "--num_proc=2", "--shard_tokens=0"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split("maxrss_kb")[-1]) / 1024


@pytest.mark.slow
def test_openwebtext_peak_memory_does_not_grow_with_the_corpus(tmp_path, gpt2_encoding):
    # 1 MB and 8 MB of text, tokenized in batches of 1 MB. Holding the corpus or its token list would
    # add 7 MB of text and about 50 MB of Python ints to the larger run's peak.
    one = documents(800, seed=2)  # about 1.2 MB
    small = write_local(tmp_path / "small", one)
    big = write_local(tmp_path / "big", one * 8)
    sizes = [sum(f.stat().st_size for f in d.iterdir()) / 2**20 for d in (small, big)]
    assert sizes[1] > 7 * sizes[0] > 7
    peak_small = peak_rss_mb(small, tmp_path / "o1")
    peak_big = peak_rss_mb(big, tmp_path / "o2")
    assert (tmp_path / "o2" / "train.bin").stat().st_size > 7 * (tmp_path / "o1" / "train.bin").stat().st_size
    assert peak_big - peak_small < 5, (peak_small, peak_big)


@pytest.mark.slow
def test_openwebtext_bad_input_is_one_sentence(tmp_path, gpt2_encoding):
    p = run("data/openwebtext/prepare.py", f"--input={tmp_path / 'nope'}", check=False)
    assert_clean_error(p, words=["nope"])
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    p = run("data/openwebtext/prepare.py", f"--input={tmp_path}", f"--out={tmp_path / 'o'}", check=False)
    assert_clean_error(p, words=["bad.jsonl, line 2", "--text_field"])


# -----------------------------------------------------------------------------
# your own corpus

@pytest.mark.slow
def test_corpus_folder_in_gpt2_bpe_has_eot_after_each_file(tmp_path, enc):
    docs = documents(5, seed=3)
    src = tmp_path / "in"
    src.mkdir()
    for i, d in enumerate(docs):
        (src / f"{i}.txt").write_text(d, encoding="utf-8")
    (src / "skip.bin").write_bytes(b"\xff\xfe")  # not a text file: left out
    p = run("data/corpus/prepare.py", f"--input={src}", "--tokenizer=gpt2", f"--out={tmp_path / 'out'}")
    assert "5 file(s)" in p.stdout and "vocabulary of 50257" in p.stdout and "train.bin" in p.stdout
    ids = np.concatenate([np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert enc.decode(ids.tolist()) == "".join(d + "<|endoftext|>" for d in docs)
    assert not (tmp_path / "out" / "meta.pkl").exists()


@pytest.mark.slow
def test_corpus_char_round_trips_and_goes_to_uint32_when_needed(tmp_path):
    # 70,000 distinct characters do not fit in uint16 token ids
    text = "".join(chr(0x10000 + i) for i in range(70000)) + "abc\n" * 1000
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    p = run("data/corpus/prepare.py", f"--input={tmp_path / 'wide.txt'}", "--tokenizer=char", f"--out={out}")
    assert "uint32" in p.stdout and "vocabulary of 70004" in p.stdout
    with open(out / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    assert meta["vocab_size"] == 70004 and meta["dtype"] == "uint32"
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=np.uint32) for s in ("train", "val")])
    assert "".join(meta["itos"][int(i)] for i in ids) == text
    assert len(np.fromfile(out / "train.bin", dtype=np.uint32)) == int(len(text) * 0.9)


@pytest.mark.slow
def test_dataset_key_points_at_a_prepared_corpus(tmp_path):
    name = f"test_corpus_{tmp_path.name}"
    folder = DATA_ROOT / name  # where dataset=<name> looks (GPT_DATA_ROOT, set by conftest)
    p = run("data/corpus/prepare.py", f"--input={CORPUS}", "--tokenizer=char", f"--out={folder}")
    assert f"--dataset={name}" in p.stdout
    out = tmp_path / "run"
    run("train.py", f"--dataset={name}", *TINY, "--gradient_accumulation_steps=1", "--max_iters=2",
        "--eval_interval=2", "--eval_iters=1", f"--out_dir={out}")
    with open(out / "meta.pkl", "rb") as f:
        assert pickle.load(f)["vocab_size"] == CORPUS_VOCAB


@pytest.mark.slow
def test_corpus_bad_arguments_are_one_sentence(tmp_path):
    p = run("data/corpus/prepare.py", f"--input={tmp_path / 'none.txt'}", check=False)
    assert_clean_error(p, words=["none.txt"])
    (tmp_path / "a.txt").write_text("hello")
    p = run("data/corpus/prepare.py", f"--input={tmp_path / 'a.txt'}", "--tokenizer=words", check=False)
    assert_clean_error(p, status=2, words=["--tokenizer=words", "char", "gpt2", "bpe"])
    p = run("data/corpus/prepare.py", check=False)
    assert_clean_error(p, status=2, words=["--input"])


WITHOUT_DATASETS = """
import runpy, sys
sys.modules["datasets"] = None  # as if it were not installed: importing it raises ImportError
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_openwebtext_needs_datasets_only_for_the_hub(tmp_path, gpt2_encoding):
    script = str(ROOT / "data/openwebtext/prepare.py")
    src = write_local(tmp_path / "in", documents(4, seed=4))
    p = subprocess.run([sys.executable, "-c", WITHOUT_DATASETS, script, f"--input={src}", f"--out={tmp_path / 'o'}"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-c", WITHOUT_DATASETS, script, f"--out={tmp_path / 'o'}"],
                       capture_output=True, text=True, timeout=300)
    assert_clean_error(p, words=["pip install datasets", "--input"])


@pytest.mark.slow
def test_corpus_with_another_datasets_vocabulary_fits_it(char_data, tmp_path):
    """--vocab_from: pretraining data a character model can then be fine-tuned from on char_data."""
    (tmp_path / "more.txt").write_text("Some more text, with a café and a \t tab.\n" * 200, encoding="utf-8")
    out = tmp_path / "more_char"
    p = run("data/corpus/prepare.py", tmp_path / "more.txt", "--tokenizer=char", f"--vocab_from={char_data}",
            f"--out={out}")
    assert "characters outside it dropped" in p.stdout
    with open(out / "meta.pkl", "rb") as f, open(char_data / "meta.pkl", "rb") as g:
        meta, theirs = pickle.load(f), pickle.load(g)
    assert meta == theirs
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    kept = "".join(c for c in (tmp_path / "more.txt").read_text(encoding="utf-8") if c in theirs["stoi"])
    assert "".join(meta["itos"][int(i)] for i in ids) == kept and "\u00e9" not in kept

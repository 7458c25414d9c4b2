"""The prepare scripts: bins that decode back to the corpus, nanoGPT's meta.pkl layout, clear failures."""

import pickle
import subprocess
import sys

import numpy as np

from conftest import ROOT, SHAKESPEARE, assert_clean_error, run


def test_char_prepare_round_trips(char_data):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    with open(char_data / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    assert set(meta) == {"vocab_size", "itos", "stoi"} and meta["vocab_size"] == 65
    train = np.fromfile(char_data / "train.bin", dtype=np.uint16)
    val = np.fromfile(char_data / "val.bin", dtype=np.uint16)
    assert len(train) == int(len(text) * 0.9)
    decoded = "".join(meta["itos"][i] for i in train) + "".join(meta["itos"][i] for i in val)
    assert decoded == text


def test_bpe_prepare_round_trips(char_data):  # char_data: the corpus is on disk
    import tiktoken
    run("data/shakespeare/prepare.py", f"--input={SHAKESPEARE}")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    enc = tiktoken.get_encoding("gpt2")
    folder = ROOT / "data" / "shakespeare"
    train = np.fromfile(folder / "train.bin", dtype=np.uint16).tolist()
    val = np.fromfile(folder / "val.bin", dtype=np.uint16).tolist()
    split = int(len(text) * 0.9)
    assert enc.decode(train) == text[:split] and enc.decode(val) == text[split:]


def test_missing_input_file_is_one_sentence(tmp_path):
    p = run("data/shakespeare_char/prepare.py", f"--input={tmp_path}/nope.txt", check=False)
    assert_clean_error(p, words=["nope.txt"])
    p = run("data/shakespeare_char/prepare.py", "--inptu=x", check=False)
    assert_clean_error(p, status=2, words=["--inptu=x"])


def test_failed_download_says_what_to_do(tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import dataset; "
            f"dataset.read_text(None, 'http://127.0.0.1:9/input.txt', {str(tmp_path / 'input.txt')!r})")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert_clean_error(p, words=["could not download", "--input="])
    assert not (tmp_path / "input.txt").exists()

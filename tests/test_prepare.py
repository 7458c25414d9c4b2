"""The prepare scripts: bins that decode back to the corpus, nanoGPT's meta.pkl layout, clear failures."""

import os
import pickle

import numpy as np
import pytest

from conftest import CORPUS, CORPUS_VOCAB, assert_clean_error, run
from gptkit import dataprep
from gptkit.errors import UserError


def test_char_prepare_round_trips(char_data):
    text = CORPUS.read_text(encoding="utf-8")
    with open(char_data / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    assert set(meta) == {"vocab_size", "itos", "stoi"} and meta["vocab_size"] == CORPUS_VOCAB
    train = np.fromfile(char_data / "train.bin", dtype=np.uint16)
    val = np.fromfile(char_data / "val.bin", dtype=np.uint16)
    assert len(train) == int(len(text) * 0.9)
    decoded = "".join(meta["itos"][i] for i in train) + "".join(meta["itos"][i] for i in val)
    assert decoded == text


@pytest.mark.slow
def test_bpe_prepare_round_trips(gpt2_encoding, tmp_path):
    run("data/shakespeare/prepare.py", f"--input={CORPUS}", f"--out={tmp_path}")
    text = CORPUS.read_text(encoding="utf-8")
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist()
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16).tolist()
    split = int(len(text) * 0.9)
    assert gpt2_encoding.decode(train) == text[:split] and gpt2_encoding.decode(val) == text[split:]


@pytest.mark.slow
def test_missing_input_file_is_one_sentence(tmp_path):
    p = run("data/shakespeare_char/prepare.py", f"--input={tmp_path}/nope.txt", check=False)
    assert_clean_error(p, words=["nope.txt"])
    p = run("data/shakespeare_char/prepare.py", "--inptu=x", check=False)
    assert_clean_error(p, status=2, words=["--inptu=x"])


def test_failed_download_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="could not download .*--input="):
        dataprep.read_text(None, "http://127.0.0.1:9/input.txt", str(tmp_path / "input.txt"))
    assert not list(tmp_path.iterdir())  # no partial download left


@pytest.mark.slow
def test_every_prepare_script_refuses_a_folder_another_prepare_is_writing(tmp_path, prepare_inputs):
    """Each prepare script, run while another process holds its output folder's lock, says which process
    it is and leaves the folder as it was, byte for byte."""
    from conftest import digests, script
    for name, args in prepare_inputs.items():
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / "notes.txt").write_text("mine", encoding="utf-8")
        holder = dataprep.claim(str(out))  # what a prepare under way holds (a second descriptor conflicts)
        before = digests(out)  # the lock file included: the refused script must not touch it either
        try:
            e = script(f"data/{name}/prepare.py", *args, f"--out={out}")
            after = digests(out)
        finally:
            holder.release()
        assert "in use by another prepare script" in str(e) and f"PID {os.getpid()}" in str(e), (name, str(e))
        assert after == before, name

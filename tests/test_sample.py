"""sample.py on this project's runs and on checkpoints written by nanoGPT."""

import pickle

import pytest

from conftest import assert_clean_error, nanogpt_checkpoint, run


@pytest.mark.slow
def test_nanogpt_checkpoint_samples(char_data, tmp_path):
    nanogpt_checkpoint(tmp_path / "ckpt.pt")  # no meta.pkl beside it: found via config['dataset']
    p = run("sample.py", f"--out_dir={tmp_path}", "--num_samples=2", "--max_new_tokens=40", "--device=cpu",
            "--start=ROMEO:")
    with open(char_data / "meta.pkl", "rb") as f:
        vocab = set(pickle.load(f)["stoi"])
    samples = [s for s in p.stdout.split("---------------") if s.strip()]
    assert len(samples) == 2
    for s in samples:
        body = s.strip("\n")
        assert body.startswith("ROMEO:") and len(body) >= 40 and set(body) <= vocab


@pytest.mark.slow
def test_same_seed_same_samples(char_data, tmp_path):
    nanogpt_checkpoint(tmp_path / "ckpt.pt")
    args = [f"--out_dir={tmp_path}", "--num_samples=1", "--max_new_tokens=30", "--top_p=0.9"]
    a, b = run("sample.py", *args).stdout, run("sample.py", *args).stdout
    assert a == b and a != run("sample.py", *args, "--seed=7").stdout


@pytest.mark.slow
def test_prompt_file_and_bad_prompt(char_data, tmp_path):
    nanogpt_checkpoint(tmp_path / "ckpt.pt")
    (tmp_path / "prompt.txt").write_text("JULIET:")
    p = run("sample.py", f"--out_dir={tmp_path}", f"--start=FILE:{tmp_path}/prompt.txt", "--num_samples=1",
            "--max_new_tokens=5")
    assert p.stdout.lstrip().startswith("JULIET:")
    p = run("sample.py", f"--out_dir={tmp_path}", "--start=FILE:/nonexistent.txt", check=False)
    assert_clean_error(p, words=["/nonexistent.txt"])
    p = run("sample.py", f"--out_dir={tmp_path}", "--start=\u00e9t\u00e9", check=False)
    assert_clean_error(p, words=["vocabulary"])

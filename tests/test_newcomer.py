"""What a newcomer meets in the first hour: a GPU-sized config on a CPU says what to expect,
offline look-ups answer at once, exported folders work as printed, the install line is on the first
screen, prepare scripts take --help and a path, a run ends by saying what to run next, written files
get the usual permissions, and a play-style chat reply ends where the speech does."""

import os
import re
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, assert_clean_error, offline, run, start
from gptkit.conversation import PLAY, speaker_line
from gptkit.tokenizer import StopText


@pytest.mark.slow
def test_a_gpu_sized_config_on_a_cpu_says_what_to_expect_before_its_first_evaluation(char_data, tmp_path):
    # the GPU recipe as it is, with a smaller batch so that its timed forward passes take seconds, not minutes
    p = start("train.py", "config/train_shakespeare_char.py", "--dataset=play_char", "--device=cpu", "--batch_size=8",
              f"--out_dir={tmp_path / 'run'}")
    seen = []
    try:
        for line in p.stdout:
            seen.append(line)
            if line.startswith("note: this config is sized for a GPU"):
                break
    finally:
        p.kill()
        p.wait()
    text = "".join(seen)
    expect = re.search(r"the first evaluation takes ~([\d.]+ (s|min|h)) \(\d+ forward passes of [\d,]+ ms\)", text)
    assert expect, text[-2000:]
    assert "config/train_shakespeare_char_cpu.py" in text and "eval 0:" not in text  # said before evaluating


@pytest.mark.slow
def test_offline_look_ups_answer_at_once(tmp_path):
    p = run("chat.py", "--init_from=huggingface", "--device=cpu", check=False, env=offline(tmp_path), timeout=60)
    assert_clean_error(p, words=["init_from=huggingface is not", "gpt2", "openai-community/gpt2"])
    p = run("sample.py", "--init_from=gpt2", "--device=cpu", check=False, env=offline(tmp_path), timeout=60)
    assert_clean_error(p, words=["'gpt2' is not in the local Hugging Face cache", "connect to the internet once"])


def test_the_first_screen_of_the_readme_says_how_to_install_torch_without_cuda():
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    cpu_route = first_screen.find("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    # said before the command a newcomer pastes, which would otherwise fetch the CUDA build first
    assert 0 <= cpu_route < first_screen.find("pip install -e .")


@pytest.mark.parametrize("script", ["data/shakespeare_char/prepare.py", "data/shakespeare/prepare.py",
                                    "data/corpus/prepare.py", "data/openwebtext/prepare.py"])
def test_prepare_scripts_answer_help(script):
    p = run(script, "--help")
    assert p.stdout.lstrip().startswith(open(ROOT / script).read().split('"""')[1].strip()[:40])
    assert "arguments: --input=..." in p.stdout and not p.stderr


@pytest.mark.slow
def test_a_plain_path_is_the_input(tmp_path):
    (tmp_path / "book.txt").write_text("To be, or not to be: that is the question.\n" * 40)
    p = run("data/shakespeare_char/prepare.py", tmp_path / "book.txt", f"--out={tmp_path / 'book_char'}")
    assert "vocabulary of" in p.stdout and (tmp_path / "book_char" / "train.bin").exists()
    p = run("data/shakespeare_char/prepare.py", tmp_path / "book.txt", "extra.txt", check=False)
    assert_clean_error(p, status=2, words=["unknown argument 'extra.txt'"])


@pytest.mark.slow
def test_a_run_ends_saying_where_it_is_and_what_next_and_a_finished_one_says_how_to_go_on(char_data, tmp_path):
    out = tmp_path / "run"
    p = run("train.py", "--dataset=play_char", *TINY, "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
            f"--out_dir={out}")
    assert f"the run is in {out}/: ckpt.pt (latest)" in p.stdout
    for command in (f"python sample.py --out_dir={out}", f"python chat.py --out_dir={out}", f"python plot.py {out}",
                    f"python export.py --out_dir={out}",
                    f"more steps: python train.py --init_from=resume --out_dir={out} --max_iters=N"):
        assert command in p.stdout
    before = {f: (out / f).read_bytes() for f in os.listdir(out) if (out / f).is_file()}
    p = run("train.py", "--init_from=resume", f"--out_dir={out}")
    assert "nothing to do: the run is at iteration 2 and max_iters=2; give a larger --max_iters" in p.stdout
    assert {f: (out / f).read_bytes() for f in os.listdir(out) if (out / f).is_file()} == before


@pytest.mark.slow
def test_written_files_get_the_usual_permissions(char_data, tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "run"
    umask = 0o027  # a stricter umask than the usual, so the check cannot pass by accident
    before = os.umask(umask)  # the scripts' processes inherit it, as from a shell
    try:
        run("train.py", "--dataset=play_char", *TINY, "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
            f"--out_dir={out}")
        run("export.py", f"--out_dir={out}", f"--export_dir={tmp_path / 'hf'}")
    finally:
        os.umask(before)
    for path in (out / "ckpt.pt", out / "config.json", out / "loss.png", tmp_path / "hf" / "model.safetensors",
                 tmp_path / "hf" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_reply_in_a_play_ends_where_the_speech_does():
    assert all(map(speaker_line, ["JULIET:", "First Citizen:", "KING RICHARD III:", "Firstick, CORIOLANUS:"]))
    assert not any(map(speaker_line, ["Hear me speak:", "O Romeo, Romeo! wherefore art thou Romeo?", ""]))

    def reply(generated):  # what chat.py shows of a reply, streamed one character at a time
        text = StopText(PLAY.stops(), line_stop=PLAY.line_stop())
        shown = "".join(text.push(c) for c in generated)
        return shown + ("" if text.stopped else text.flush())

    # another speaker's line starts without a blank line before it
    assert reply("Good night, good night!\nParting is such sweet sorrow.\nFirstick, CORIOLANUS:\nWhat") == \
        "Good night, good night!\nParting is such sweet sorrow."
    assert reply("Ay me!\nSweet love\n\nROMEO:\nI am here") == "Ay me!\nSweet love"  # the blank line
    assert reply("Hear me speak:\nthe day is done") == "Hear me speak:\nthe day is done"  # verse, not a speaker
    assert reply("Ay me!\nROME") == "Ay me!\nROME"  # cut by the length limit: a half line is not a speaker
    assert reply("Ay me!\nROMEO:") == "Ay me!"


def test_the_test_command_says_why_tests_were_skipped_one_line_per_reason(tmp_path):
    # the README's `python -m pytest -q` reads pytest.ini: its options must list the reasons, grouped
    (tmp_path / "test_offline.py").write_text(
        "import pytest\n\n\n@pytest.mark.parametrize('i', [1, 2, 3])\ndef test_hub(i):\n"
        "    pytest.skip('GPT-2 tokenizer files not found offline')\n")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", str(ROOT / "pytest.ini"), f"--rootdir={tmp_path}",
                        "-n", "0", "-p", "no:cacheprovider", "test_offline.py"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert "SKIPPED [3] test_offline.py:6: GPT-2 tokenizer files not found offline" in p.stdout, p.stdout

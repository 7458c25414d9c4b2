"""What users do by mistake, and what must not follow: a folder or file they own written over, a run
continued on data that means something else, a message that leads nowhere, a traceback where one
sentence is due. Each test takes one class of mistake through several of its members; files are
compared byte for byte before and after."""

import errno
import os
import runpy
import shutil
import sys

import pytest
import torch

from conftest import CORPUS, ROOT, TINY, assert_clean_error, digests, read_metrics, run, start
from gptkit import checkpoint
from gptkit.errors import UserError

BASE = ["--dataset=play_char", *TINY, "--eval_iters=2"]


def in_process(path, *args, stdin=..., stdout=...):
    """A script run in this process, whose refusal comes before anything heavy: the UserError it ends with.
    stdin/stdout: None runs it as if started with that stream closed (Python then has None there)."""
    saved = sys.argv, sys.stdin, sys.stdout
    sys.argv = [str(path), *map(str, args)]
    if stdin is not ...:
        sys.stdin = stdin
    if stdout is not ...:
        sys.stdout = stdout
    try:
        with pytest.raises(UserError) as e:
            runpy.run_path(str(ROOT / path), run_name="__main__")
    finally:
        sys.argv, sys.stdin, sys.stdout = saved
    return e.value


@pytest.fixture
def a_run(char_run):
    return char_run


# -----------------------------------------------------------------------------
# data loss: nothing the command did not write is written over

@pytest.mark.slow
def test_a_folder_that_is_not_a_run_never_becomes_one(char_data, a_run, tmp_path):
    model = tmp_path / "hf-model"  # a Hugging Face model folder, as a user would pass it twice
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    (model / "model.safetensors").write_bytes(b"weights")
    data = tmp_path / "dataset"  # a prepared dataset
    shutil.copytree(char_data, data)
    before = {folder: digests(folder) for folder in (model, data)}
    for folder in (model, data):
        p = run("train.py", *BASE, "--max_iters=2", f"--out_dir={folder}", f"--init_from={a_run}", check=False)
        assert_clean_error(p, status=2, words=["holds files a training run does not write", "not a run folder"])
        p = run("train.py", *BASE, "--max_iters=2", f"--out_dir={folder}", "--overwrite=True", check=False)
        assert_clean_error(p, status=2, words=["not a run folder"])  # overwrite deletes a run, not these
    p = run("train.py", *BASE, "--max_iters=2", "--out_dir=.", check=False)  # the project's own folder
    assert_clean_error(p, status=2, words=["holds files a training run does not write", "not a run folder"])
    assert {folder: digests(folder) for folder in before} == before
    # a run with a user's notes beside it stays a run: overwrite replaces the run and keeps the notes
    fresh = tmp_path / "with-notes"
    shutil.copytree(a_run, fresh)
    (fresh / "notes.txt").write_text("mine")
    run("train.py", *BASE, "--max_iters=2", "--eval_interval=2", f"--out_dir={fresh}", "--overwrite=True")
    assert (fresh / "notes.txt").read_text() == "mine" and checkpoint.load(str(fresh / "ckpt.pt"))["iter_num"] == 2


@pytest.mark.slow
def test_an_output_path_replaces_only_a_file_of_its_own_kind(a_run, tmp_path, monkeypatch):
    run_copy = tmp_path / "run"
    shutil.copytree(a_run, run_copy)
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\xff\xd8\xff\xe0 a JPEG named .png")
    before = digests(tmp_path)
    for out, words in [(run_copy / "ckpt.pt", "does not end in .png"), (run_copy / "loss.png", "a file of the run"),
                       (photo, "is not a PNG picture"), (tmp_path, "does not end in .png")]:
        p = run("plot.py", run_copy, f"--out={out}", check=False)
        assert_clean_error(p, status=2, words=[words])
    p = run("bench.py", f"--profile={run_copy / 'ckpt.pt'}", check=False)
    assert_clean_error(p, status=2, words=["does not end in .json"])
    assert digests(tmp_path) == before
    # its own kind: an earlier picture is replaced
    run("plot.py", run_copy, f"--out={tmp_path / 'curves.png'}")
    run("plot.py", run_copy, f"--out={tmp_path / 'curves.png'}", "--y=loss")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_export_overwrite_keeps_the_files_a_user_added(a_run, tmp_path):
    pytest.importorskip("transformers")
    dest = tmp_path / "export"
    run("export.py", f"--out_dir={a_run}", f"--export_dir={dest}")
    (dest / "README.md").write_text("my model card")
    (dest / "samples").mkdir()
    (dest / "samples" / "one.txt").write_text("a sample")
    weights = (dest / "model.safetensors").read_bytes()
    run("export.py", f"--out_dir={a_run}", f"--export_dir={dest}", "--ckpt_name=ckpt_0000006.pt", "--overwrite=True")
    assert (dest / "README.md").read_text() == "my model card"
    assert (dest / "samples" / "one.txt").read_text() == "a sample"
    assert (dest / "model.safetensors").read_bytes() == weights  # the same weights, written again
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f or ".old" in f]


# -----------------------------------------------------------------------------
# silently wrong

def shifted(text):
    """The same text with every letter moved one place on: as many distinct characters, other ones."""
    return text.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz", "bcdefghijklmnopqrstuvwxyza"))


@pytest.mark.slow
def test_data_with_the_same_number_of_other_characters_is_refused_on_resume_and_as_a_source(tmp_path):
    root = tmp_path / "data"
    env = {"GPT_DATA_ROOT": str(root)}
    text = CORPUS.read_text(encoding="utf-8")
    (tmp_path / "other.txt").write_text(shifted(text), encoding="utf-8")
    assert len(set(shifted(text))) == len(set(text))
    run("data/shakespeare_char/prepare.py", CORPUS, f"--out={root / 'play'}", env=env)
    run("data/shakespeare_char/prepare.py", tmp_path / "other.txt", f"--out={root / 'other'}", env=env)
    common = ["--dataset=play", *TINY, "--eval_iters=1", "--max_iters=2", "--eval_interval=2"]
    out = tmp_path / "run"
    run("train.py", *common, f"--out_dir={out}", env=env)
    # another dataset of the same size as a new run's data: the characters are compared, not their number
    p = run("train.py", *common, "--dataset=other", f"--init_from={out}", f"--out_dir={tmp_path / 'new'}", env=env,
            check=False)
    assert_clean_error(p, status=2, words=["same size, other characters", "vocabulary"])
    # the run's dataset prepared again in place from the other text, then resumed without naming it
    run("data/shakespeare_char/prepare.py", tmp_path / "other.txt", f"--out={root / 'play'}", env=env)
    p = run("train.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=4", env=env, check=False)
    assert_clean_error(p, status=2, words=["same size, other characters", "resume with the dataset"])


@pytest.mark.serial
@pytest.mark.slow
def test_a_closed_output_stops_training_with_a_save_and_says_so(char_data, tmp_path):
    # `python train.py ... | head -n 6`: the reader leaves after 6 lines
    out = tmp_path / "run"
    p = start("train.py", *BASE, "--max_iters=100000", "--eval_interval=100000", f"--out_dir={out}")
    lines = [p.stdout.readline() for _ in range(6)]
    assert lines[-1], lines
    p.stdout.close()
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 141 and "Traceback" not in stderr, stderr
    assert "standard output was closed" in stderr and "stopped at iteration" in stderr and "--init_from=resume" in stderr
    saved = checkpoint.load(str(out / "ckpt.pt"))["iter_num"]
    assert saved > 0 and read_metrics(out)[-1]["iter"] == saved - 1
    # `| head -c 10`: the reader leaves at once, before any step; the folder can be used again at once
    other = tmp_path / "early"
    p = start("train.py", *BASE, "--max_iters=100000", f"--out_dir={other}")
    p.stdout.read(10)
    p.stdout.close()
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 141 and "Traceback" not in stderr, stderr
    p = run("train.py", *BASE, "--max_iters=2", "--eval_interval=2", f"--out_dir={other}")
    assert "remains of a run that saved no checkpoint" in p.stdout


# -----------------------------------------------------------------------------
# dead ends: every message leads somewhere

@pytest.mark.slow
def test_a_run_that_failed_before_its_first_save_can_be_run_again(char_data, tmp_path):
    out = tmp_path / "run"
    p = run("train.py", *BASE, "--max_iters=10", "--eval_interval=5", "--learning_rate=1e30", "--decay_lr=False",
            "--grad_clip=0", "--warmup_iters=0", f"--out_dir={out}", check=False)
    sentence = assert_clean_error(p, words=["is not finite", "nothing was saved yet"])
    assert "intact" not in sentence  # there is no checkpoint to speak of
    p = run("train.py", "--init_from=resume", f"--out_dir={out}", check=False)
    assert_clean_error(p, words=["saved no checkpoint", "start it again"])
    p = run("train.py", *BASE, "--max_iters=2", "--eval_interval=2", f"--out_dir={out}")  # the same command, sane
    assert "remains of a run that saved no checkpoint" in p.stdout and (out / "ckpt.pt").exists()


@pytest.mark.slow
def test_a_folder_with_only_best_pt_or_numbered_copies_says_what_it_holds_and_how_to_use_it(a_run, tmp_path):
    only_best, only_numbered = tmp_path / "best", tmp_path / "numbered"
    for folder, keep in ((only_best, "best.pt"), (only_numbered, "ckpt_0000006.pt")):
        folder.mkdir()
        shutil.copy(a_run / keep, folder / keep)
        p = run("train.py", "--init_from=resume", f"--out_dir={folder}", check=False)
        sentence = assert_clean_error(p, words=[keep, "no ckpt.pt", f"--init_from={folder / keep}"])
        p = run("train.py", *BASE, "--max_iters=2", f"--out_dir={folder}", check=False)
        assert_clean_error(p, status=2, words=[keep, f"--init_from={folder / keep}"])
        # the command it names works
        command = sentence.split("with ")[1].split(",")[0].split()
        assert command[0] == f"--init_from={folder / keep}"
        run("train.py", *BASE, "--max_iters=2", "--eval_interval=2", command[0], f"--out_dir={tmp_path / keep}")


def test_a_failed_first_save_says_nothing_was_saved_and_names_a_full_disk(tmp_path, monkeypatch):
    def full_disk(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(UserError) as e:
        checkpoint.save({"model": {}}, str(tmp_path / "ckpt.pt"))
    assert "nothing was saved there before" in str(e.value) and "the disk is full (1 MB free)" in str(e.value)
    (tmp_path / "ckpt.pt").write_bytes(b"an earlier checkpoint")
    with pytest.raises(UserError) as e:
        checkpoint.save({"model": {}}, str(tmp_path / "ckpt.pt"))
    assert "the previous checkpoint there is intact" in str(e.value)
    assert (tmp_path / "ckpt.pt").read_bytes() == b"an earlier checkpoint" and os.listdir(tmp_path) == ["ckpt.pt"]


def test_preparing_an_empty_or_tiny_text_is_one_sentence(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "tiny.txt").write_text("a")
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("")
    for script, source, words in [("data/shakespeare_char/prepare.py", "empty.txt", "is empty"),
                                  ("data/shakespeare_char/prepare.py", "tiny.txt", "too small to split"),
                                  ("data/corpus/prepare.py", "texts", "is empty")]:
        extra = ["--tokenizer=char"] if "corpus" in script else []
        e = in_process(script, tmp_path / source, f"--out={tmp_path / 'out'}", *extra)
        assert words in str(e), str(e)
    assert not (tmp_path / "out").exists()  # refused before anything was written


# -----------------------------------------------------------------------------
# one sentence where a traceback would be

@pytest.mark.slow
def test_old_format_and_damaged_hugging_face_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gptkit import hf
    torch.manual_seed(0)
    source = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32,
                                                                  vocab_size=64)).eval()
    old = tmp_path / "old"
    source.save_pretrained(old)
    # the format torch wrote before 1.6, which transformers still loads and cannot be memory-mapped
    torch.save(source.state_dict(), old / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    (old / "model.safetensors").unlink()
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(hf.load_gpt2(str(old)).eval()(ids)[0][0, -1], source(ids).logits[0, -1],
                                   atol=1e-5, rtol=1e-5)
    for name, damage in [("model.safetensors", lambda b: b[: len(b) // 2]), ("pytorch_model.bin", lambda b: b"x" * 99)]:
        folder = tmp_path / name
        shutil.copytree(old, folder)
        (folder / "pytorch_model.bin").unlink()
        source.save_pretrained(folder)
        if name == "pytorch_model.bin":
            (folder / "model.safetensors").rename(folder / name)
        (folder / name).write_bytes(damage((folder / name).read_bytes()))
        with pytest.raises(UserError) as e:
            hf.load_gpt2(str(folder))
        text = str(e.value)
        assert name in text and "weights_only" not in text and "\n" not in text, text


def test_text_that_is_not_utf8_and_closed_streams_are_one_sentence(a_run, tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ROMEO: caf\xe9\n".encode("latin-1") * 50)
    e = in_process("data/shakespeare_char/prepare.py", latin1, f"--out={tmp_path / 'out'}")
    assert "is not UTF-8 text" in str(e)
    chats = tmp_path / "chats.jsonl"
    chats.write_bytes(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                      b'{"messages": "\xff"}\n')
    e = in_process("data/chat/prepare.py", chats, f"--out={tmp_path / 'chat'}")
    assert "line 2, is not UTF-8" in str(e)
    binary = tmp_path / "prompt.bin"
    binary.write_bytes(bytes(range(256)))
    e = in_process("sample.py", f"--out_dir={a_run}", f"--start=FILE:{binary}")
    assert "is not UTF-8 text" in str(e)
    e = in_process("sample.py", f"--out_dir={a_run}", stdout=None)  # python sample.py >&-
    assert "standard output is closed" in str(e)
    e = in_process("chat.py", f"--out_dir={a_run}", stdin=None)  # python chat.py <&-
    assert "standard input is closed" in str(e) and "--prompt" in str(e)


def test_a_model_too_big_for_the_machine_is_refused_before_it_is_allocated(char_data):
    for extra, words in [(["--n_layer=10000", "--n_embd=768", "--n_head=12"], ["B parameters", "GiB", "would fit"]),
                         (["--n_embd=100000", "--n_head=100"], ["lower n_embd"])]:
        p = run("train.py", *BASE, *extra, "--out_dir=unused", check=False)
        assert_clean_error(p, status=2, words=words)
    assert not os.path.exists(ROOT / "unused")


def test_messages_send_users_the_right_way(char_run, char_data, tmp_path):
    """A command aimed slightly wrong is answered with the command that works, each sentence naming it."""
    from conftest import script
    sample = ["--device=cpu", "--num_samples=1", "--max_new_tokens=4"]
    said = lambda *args: str(script(*args))  # noqa: E731
    # a run given where Hugging Face weights go: read it through its folder
    assert f"--out_dir={char_run} (and no init_from)" in said("sample.py", f"--init_from={char_run}", *sample)
    assert f"--out_dir={char_run} --ckpt_name=best.pt" in said("sample.py", f"--init_from={char_run / 'best.pt'}",
                                                               *sample)
    assert f"--out_dir={char_run} (and no init_from)" in said("eval.py", f"--init_from={char_run / 'ckpt.pt'}",
                                                              "--tasks=val", "--device=cpu")
    # a folder holding best.pt but no ckpt.pt
    best_only = tmp_path / "best-only"
    best_only.mkdir()
    for name in ("best.pt", "meta.pkl"):
        shutil.copyfile(char_run / name, best_only / name)
    assert "--ckpt_name=best.pt" in said("sample.py", f"--out_dir={best_only}", *sample)
    # eval.py's tasks: text: with no file, a folder for a file
    run_args = [f"--out_dir={char_run}", "--device=cpu"]
    assert "text: names no file" in said("eval.py", *run_args, "--tasks=text:")
    assert f"text:{tmp_path} is a folder" in said("eval.py", *run_args, f"--tasks=text:{tmp_path}")
    assert f"task {tmp_path} is a folder" in said("eval.py", *run_args, f"--tasks={tmp_path}")
    # data and vocabulary folders that are not there, or damaged
    missing = tmp_path / "no-such-folder"
    assert f"--vocab_from={missing} is not a folder" in said("data/corpus/prepare.py", f"--input={CORPUS}",
                                                             "--tokenizer=char", f"--vocab_from={missing}",
                                                             f"--out={tmp_path / 'c'}")
    assert f"data_dir={missing} is not a folder" in said("train.py", *BASE, f"--data_dir={missing}",
                                                         f"--out_dir={tmp_path / 'r'}")
    damaged = tmp_path / "damaged"
    shutil.copytree(char_data, damaged)
    (damaged / "dataset.json").write_text('{"complete": tru', encoding="utf-8")
    before = digests(damaged)
    assert "dataset.json is damaged" in said("train.py", *BASE, f"--data_dir={damaged}", f"--out_dir={tmp_path / 'r'}")
    assert digests(damaged) == before


def test_jsonl_files_saved_with_a_byte_order_mark_read_as_without_one(char_data, tmp_path):
    """Windows Notepad starts UTF-8 files with a byte order mark: the multiple-choice sets and the local
    documents of a prepare read the same with it as without it."""
    import json

    from gptkit import benchmarks, dataprep
    from gptkit.dataset import read_meta
    from gptkit.tokenizer import load_tokenizer
    tok = load_tokenizer(read_meta(char_data))
    line = json.dumps({"context": "ROMEO: Good", "choices": [" night", " day"], "label": 0}) + "\n"
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    plain.write_text(line * 2, encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + (line * 2).encode("utf-8"))
    a, b = benchmarks.load_choices(str(marked), tok, 64), benchmarks.load_choices(str(plain), tok, 64)
    assert a.examples == b.examples and len(a.examples) == 2
    assert list(dataprep.utf8_lines(str(marked))) == list(dataprep.utf8_lines(str(plain)))

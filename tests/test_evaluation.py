"""Evaluation against references: the choices' log-likelihoods, acc, the harness's acc_norm and bits per byte
from lm-evaluation-harness on the same exported model; the shared-context scoring against recomputing
every choice in full; bits per byte against the bytes of the decoded text; DDP against one process; bad
input as one sentence."""

import json
import math
import os
import random
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import CORPUS, LINES, ROOT, TINY, choice_file, harness_tasks, nanogpt_checkpoint, read_metrics, run
from gptkit import benchmarks, checkpoint, evaluation, loading, runtime
from gptkit.errors import UserError
from gptkit.source import DataSource
from gptkit.training import evaluate
from model import GPT, GPTConfig

PLAN, DIST = runtime.plan_for("cpu", "float32"), runtime.Dist()


def script(path, *args):
    """Run one of the scripts in this process, as a user would from the shell (its UserError propagates)."""
    saved = sys.argv
    sys.argv = [str(ROOT / path), *map(str, args)]
    try:
        runpy.run_path(str(ROOT / path), run_name="__main__")
    finally:
        sys.argv = saved


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


# -----------------------------------------------------------------------------
# the scoring against recomputation and hand counts


def full_losses(model, example):
    """Each choice's total loss by build-nanogpt's recipe: the row context + choice run from scratch."""
    out = []
    for choice in example.choices:
        row = torch.tensor([example.context + choice])
        logits = model.all_logits(row[:, :-1])
        out.append(F.cross_entropy(logits[0, len(example.context) - 1:], row[0, len(example.context):],
                                   reduction="sum").item())
    return out


@pytest.mark.parametrize("options", [dict(), dict(pos_emb="rope", norm="rmsnorm", n_kv_head=1)])
def test_shared_context_scoring_equals_recomputing_every_choice_in_full(options):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, n_layer=2, n_head=2, n_embd=32, block_size=40, **options)).eval()
    rng = random.Random(1)
    examples = []
    for i in range(20):
        n = rng.choice([2, 3, 4, 5])
        choices = [[rng.randrange(40) for _ in range(rng.randint(1, 7))] for _ in range(n)]
        context = [rng.randrange(40) for _ in range(rng.choice([1, 5, 5, 9, 20]))]
        examples.append(benchmarks.Example(context, choices, rng.randrange(n), [rng.randint(1, 30) for _ in range(n)], i))
    groups = evaluation.choice_batches(examples, batch_tokens=120)
    assert sorted(i for g in groups for i in g) == list(range(20)) and len(groups) > 1
    assert any(len({len(examples[i].context) for i in g}) > 1 for g in groups)  # contexts of several lengths
    right = np.zeros(3)
    with torch.no_grad():
        for group in groups:
            batch = [examples[i] for i in group]
            total, tokens = evaluation.choice_losses(model, batch)
            reference = [x for ex in batch for x in full_losses(model, ex)]
            assert torch.allclose(total, torch.tensor(reference), atol=1e-4)
            assert tokens.tolist() == [len(c) for ex in batch for c in ex.choices]
            for ex in batch:
                ref = full_losses(model, ex)
                right += [np.argmin(ref) == ex.label,
                          np.argmin([t / len(c) for t, c in zip(ref, ex.choices)]) == ex.label,
                          np.argmin([t / n for t, n in zip(ref, ex.chars)]) == ex.label]
    figures = evaluation.multiple_choice(model, benchmarks.ChoiceSet("x", examples), PLAN, DIST, batch_tokens=120)
    assert [figures[k] * 20 for k in ("acc", "acc_norm", "acc_norm_chars")] == pytest.approx(right.tolist())
    assert figures["n"] == 20


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 128, 129, 300])
def test_rolling_windows_score_every_target_once_with_as_much_context_as_fits(n):
    block = 64
    scored = []
    for start, length, count in benchmarks.windows(n, block):
        assert 1 <= count <= length <= block and start >= 0 and start + length <= n
        scored += range(start + length - count, start + length)  # target t is seq[t + 1], read after seq[:t + 1]
    assert scored == list(range(n))
    # each target reads the block_size tokens before it, or all there are (the first window's)
    for start, length, count in benchmarks.windows(n, block)[1:]:
        assert length == block


class Fixed(DataSource):
    """A batches object with one given evaluation batch for both splits."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def eval_batch(self, split, k):
        return self.x, self.y


def test_bits_per_byte_during_training_is_the_counted_loss_in_bits_over_the_decoded_bytes(gpt2_encoding):
    from gptkit.tokenizer import BPETokenizer
    tok = BPETokenizer()
    text = "Caf\u00e9 cr\u00e8me, na\u00efve \u65e5\u672c\u8a9e text.<|endoftext|>Then an ordinary sentence follows it."
    ids = torch.tensor(tok.encode(text))
    assert tok.eot in ids.tolist()
    x, y = ids[None, :-1], ids[None, 1:].clone()
    y[0, :3] = -1  # a loss mask: these targets do not count
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=50304))
    lengths = tok.token_bytes() + [0] * (50304 - tok.vocab_size)
    out = evaluate(model, Fixed(x, y), 1, PLAN, DIST, token_bytes=torch.tensor(lengths))
    with torch.no_grad():
        logits = model.all_logits(x)
    nll = F.cross_entropy(logits[0], y[0].clamp(min=0), reduction="none")
    counted = (y[0] >= 0) & (y[0] != tok.eot)  # <|endoftext|> stands for no text
    text_bytes = len(gpt2_encoding.decode_bytes(y[0][counted].tolist()))
    assert text_bytes > counted.sum()  # the accents and the Japanese take several bytes each
    assert out["val_bpb"] == pytest.approx(nll[counted].sum().item() / text_bytes / math.log(2), rel=1e-5)
    assert out["val"] == pytest.approx(nll[y[0] >= 0].mean().item(), rel=1e-5)  # the loss itself is unchanged


# -----------------------------------------------------------------------------
# bad input: one sentence each


@pytest.fixture(scope="module")
def char_tok(char_data):
    from gptkit.dataset import read_meta
    from gptkit.tokenizer import load_tokenizer
    return load_tokenizer(read_meta(char_data))


def refused(tmp_path, lines, tok, block_size=256, name="quiz.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        benchmarks.load_choices(str(path), tok, block_size)
    sentence = str(e.value)
    assert "\n" not in sentence and str(path) in sentence, sentence
    return sentence


GOOD = json.dumps({"context": "ROMEO: Good night", "choices": ["sweet lord.", "the and to."], "label": 0})


@pytest.mark.parametrize("line, words", [
    ('{"context": "ROMEO: Good", "choices": ["night"], "label": 0', ["line 2", "not JSON"]),
    (json.dumps({"context": "ROMEO: Good", "choices": ["night", "day"], "label": 2}), ["line 2", "label 2", "0 to 1"]),
    (json.dumps({"context": "ROMEO: Good", "choices": ["night", "day"], "label": -1}), ["line 2", "label -1"]),
    (json.dumps({"context": "ROMEO: Good", "choices": ["night", "day"]}), ["line 2", "'label'"]),
    (json.dumps({"context": "ROMEO: Good", "choices": "night", "label": 0}), ["line 2", "at least two"]),
    (json.dumps(["ROMEO: Good", ["night", "day"], 0]), ["line 2", "not a JSON object"]),
    (json.dumps({"context": "ROMEO: Good", "choices": ["night", "day", "night"], "label": 1}),
     ["line 2", "'night' appears 2 times"]),
    (json.dumps({"context": "ROMEO: caf\u00e9 au lait", "choices": ["night", "n\u00e0 night"], "label": 0}),
     ["characters outside", "'\u00e0\u00e9'", "line 2"]),
    (json.dumps({"context": "ROMEO: " + "the " * 70, "choices": ["night", "day"], "label": 0}),
     ["line 2", "block_size", "293 tokens"]),
])
def test_bad_examples_are_one_sentence_naming_the_line(tmp_path, char_tok, line, words):
    sentence = refused(tmp_path, [GOOD, line], char_tok)
    for w in words:
        assert w in sentence, (w, sentence)


def test_bad_task_names_and_files_are_one_sentence(tmp_path, char_tok, monkeypatch):
    monkeypatch.setenv("GPT_DATA_ROOT", str(tmp_path))  # where HellaSwag is not prepared
    for spec, split, words in [("hellawsag", "val", ["'hellawsag' is unknown", "text:FILE"]),
                               (str(tmp_path / "nope.jsonl"), "val", ["does not exist"]),
                               ("hellaswag", "test", ["no labels", "split=val"]),
                               ("hellaswag", "val", ["not prepared", "data/hellaswag/prepare.py"])]:
        with pytest.raises(UserError) as e:
            benchmarks.load_choices(spec, char_tok, 256, split=split)
        for w in words:
            assert w in str(e.value), (w, str(e.value))
    with pytest.raises(UserError, match="eval_tasks takes multiple-choice sets"):
        evaluation.DuringTraining(None, "hellaswag,val", 0, 256, char_tok.vocab_size, "cpu")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="holds no examples"):
        benchmarks.load_choices(str(tmp_path / "empty.jsonl"), char_tok, 256)
    (tmp_path / "notes.txt").write_text("ROMEO: caf\u00e9\n", encoding="utf-8")
    with pytest.raises(UserError, match="characters outside .* line 1"):
        benchmarks.load_text(str(tmp_path / "notes.txt"), char_tok)


# -----------------------------------------------------------------------------
# HellaSwag's prepare script


def hellaswag_rows(n, seed=0):
    """HellaSwag-shaped examples (its fields) written in the tests' corpus's characters."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randrange(len(LINES) - 1)
        endings = [LINES[k + 1][:40]] + [line[:40] for line in rng.sample(LINES, 3)]
        rng.shuffle(endings)
        rows.append({"ind": i, "activity_label": "Play", "ctx_a": LINES[k][:40], "ctx_b": "", "ctx": LINES[k][:40],
                     "endings": endings, "label": endings.index(LINES[k + 1][:40]), "split": "val",
                     "split_type": "indomain", "source_id": f"play~{i}"})
    return rows


def prepare_hellaswag(*argv):
    main = runpy.run_path(str(ROOT / "data/hellaswag/prepare.py"))["main"]
    main(list(argv))


def test_hellaswag_prepare_checks_every_line_and_says_what_to_do_offline(tmp_path, capsys, monkeypatch):
    src = tmp_path / "hellaswag_val.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in hellaswag_rows(12)), encoding="utf-8")
    prepare_hellaswag(f"--input={src}", f"--out={tmp_path / 'hs'}")
    assert (tmp_path / "hs" / "hellaswag_val.jsonl").read_text(encoding="utf-8") == src.read_text(encoding="utf-8")
    assert "holds 12 examples; HellaSwag's published val split has 10,042" in capsys.readouterr().out
    bad = hellaswag_rows(3)
    bad[1]["endings"] = bad[1]["endings"][:3]
    src.write_text("".join(json.dumps(r) + "\n" for r in bad), encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2: a HellaSwag example has four endings"):
        prepare_hellaswag(f"--input={src}", f"--out={tmp_path / 'hs2'}")
    assert not (tmp_path / "hs2" / "hellaswag_val.jsonl").exists()
    monkeypatch.setattr(benchmarks, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_{split}.jsonl")
    with pytest.raises(UserError) as e:
        prepare_hellaswag(f"--out={tmp_path / 'hs3'}")
    assert "could not download" in str(e.value) and "--input=path/to/hellaswag_val.jsonl" in str(e.value)
    assert not (tmp_path / "hs3").exists()
    with pytest.raises(UserError, match="not one of HellaSwag's splits"):
        prepare_hellaswag("--split=dev")


# -----------------------------------------------------------------------------
# eval.py on a character run: a hand computation, and two processes against one


@pytest.fixture(scope="module")
def random_char_run(char_data, tmp_path_factory):
    """A nanoGPT-layout checkpoint (random weights) of the tests' character vocabulary, block_size 128."""
    folder = tmp_path_factory.mktemp("char-run")
    nanogpt_checkpoint(folder / "ckpt.pt", block_size=128)
    choice_file(folder / "quiz.jsonl", 24, max_chars=50)
    (folder / "notes.txt").write_text(CORPUS.read_text(encoding="utf-8")[:100], encoding="utf-8")
    return folder


def test_eval_py_prints_a_table_then_the_figures_and_text_bpb_is_the_hand_computed_one(random_char_run, capsys):
    script("eval.py", f"--out_dir={random_char_run}", f"--tasks={random_char_run / 'quiz.jsonl'},val,text:{random_char_run / 'notes.txt'}",
           "--limit=3", "--device=cpu", "--acc_norm_chars=True")
    out = capsys.readouterr().out
    figures = last_json(out)
    assert list(figures) == [str(random_char_run / "quiz.jsonl"), "val", f"text:{random_char_run / 'notes.txt'}"]
    assert figures[str(random_char_run / "quiz.jsonl")]["n"] == 3
    assert figures["val"]["tokens"] == 3 * 128 and figures["val"]["bytes"] == 3 * 128
    assert "acc_norm_chars" in out.splitlines()[0] and "bits/byte" in out.splitlines()[0]
    # the text is shorter than the context: one window, every character but the first predicted
    model, tok, _ = loading.load_for_inference("resume", str(random_char_run))
    ids = torch.tensor([tok.encode((random_char_run / "notes.txt").read_text(encoding="utf-8"))])
    with torch.no_grad():
        logits = model.all_logits(ids[:, :-1])
    nats = F.cross_entropy(logits[0], ids[0, 1:], reduction="sum").item()
    text = figures[f"text:{random_char_run / 'notes.txt'}"]
    assert text["tokens"] == 99 and text["bytes"] == 99  # ASCII: a byte per character
    assert text["bpb"] == pytest.approx(nats / 99 / math.log(2), rel=1e-5)
    assert text["ppl"] == pytest.approx(math.exp(nats / 99), rel=1e-5)


def test_eval_py_refuses_bad_input_with_one_sentence(random_char_run, tmp_path):
    with pytest.raises(UserError, match="tasks is empty"):
        script("eval.py", f"--out_dir={random_char_run}", "--tasks=,")
    (tmp_path / "bad.jsonl").write_text(GOOD + "\n" + GOOD[:-1] + "\n")
    with pytest.raises(UserError, match="bad.jsonl, line 2 is not JSON"):
        script("eval.py", f"--out_dir={random_char_run}", f"--tasks={tmp_path / 'bad.jsonl'}", "--device=cpu")


@pytest.mark.slow
def test_two_processes_count_the_same_as_one(random_char_run):
    args = [str(ROOT / "eval.py"), f"--out_dir={random_char_run}", f"--tasks={random_char_run / 'quiz.jsonl'},val",
            "--limit=5", "--device=cpu", "--batch_tokens=200"]
    one = last_json(run("eval.py", *args[1:]).stdout)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                       capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    two = last_json(p.stdout)
    assert sum(line.startswith("{") for line in p.stdout.splitlines()) == 1  # rank 0 alone reports
    quiz = str(random_char_run / "quiz.jsonl")
    assert two[quiz] == one[quiz] and two["val"]["tokens"] == one["val"]["tokens"]
    assert two["val"]["bpb"] == pytest.approx(one["val"]["bpb"], rel=1e-6)


# -----------------------------------------------------------------------------
# during training: HellaSwag (a local file in its format) and bits per byte in metrics.jsonl, loss.png, plot.py


@pytest.mark.slow
def test_training_logs_hellaswag_and_bits_per_byte_and_plot_draws_the_levels(char_data, tmp_path, monkeypatch):
    src = tmp_path / "hellaswag_val.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in hellaswag_rows(16)), encoding="utf-8")
    prepare_hellaswag(f"--input={src}")  # into the tests' data root, where train.py looks
    out = tmp_path / "run"
    p = run("train.py", "--dataset=play_char", *TINY, "--block_size=96", "--max_iters=4", "--eval_interval=2",
            "--eval_iters=2", "--eval_tasks=hellaswag", "--eval_tasks_limit=10", f"--out_dir={out}")
    evals = [row for row in read_metrics(out) if "val_loss" in row]
    assert [row["iter"] for row in evals] == [0, 2, 4]
    for row in evals:
        assert {"hellaswag_acc", "hellaswag_acc_norm", "hellaswag_acc_norm_chars", "train_bpb"} <= set(row)
        assert row["hellaswag_acc_norm"] * 10 == pytest.approx(round(row["hellaswag_acc_norm"] * 10))  # of 10
        assert row["val_bpb"] == pytest.approx(row["val_loss"] / math.log(2), rel=1e-5)  # ASCII: a byte a character
    assert "bits/byte; hellaswag_acc_norm " in p.stdout
    assert (out / "loss.png").exists()
    monkeypatch.chdir(tmp_path)
    script("plot.py", str(out), "--y=hellaswag_acc_norm")
    assert (tmp_path / "plot-hellaswag_acc_norm.png").stat().st_size > 10_000


# -----------------------------------------------------------------------------
# agreement with lm-evaluation-harness on the same exported model


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, gpt2_encoding):
    """A tiny model in GPT-2's vocabulary trained here for a few steps on the tests' corpus, saved as a run
    (ckpt.pt) and exported by export.py as a Hugging Face folder."""
    torch.manual_seed(0)
    ids = torch.tensor(gpt2_encoding.encode_ordinary(CORPUS.read_text(encoding="utf-8")[:40000]))
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=50304))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    for _ in range(8):  # enough to move the choices' likelihoods well apart from a uniform guess
        ix = torch.randint(len(ids) - 65, (4,))
        _, loss = model(torch.stack([ids[i:i + 64] for i in ix]), torch.stack([ids[i + 1:i + 65] for i in ix]))
        loss.backward()
        opt.step()
        opt.zero_grad()
    folder = tmp_path_factory.mktemp("bpe-run")
    checkpoint.save(dict(model=model.state_dict(), model_args=dict(model.config.__dict__), iter_num=8,
                         config=dict(dataset="none")), str(folder / "ckpt.pt"))
    script("export.py", f"--out_dir={folder}")
    return folder


@pytest.mark.slow
def test_choices_acc_acc_norm_chars_and_bits_per_byte_agree_with_lm_evaluation_harness(bpe_run, tmp_path):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'lm-eval[hf]')")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import get_rolling_token_windows

    quiz = choice_file(tmp_path / "quiz.jsonl", 40)
    text = "\n".join(LINES[100:140])  # several windows of 64 tokens, the last one part-full
    harness_tasks(tmp_path, quiz, text)
    lm = HFLM(pretrained=str(bpe_run / "hf"), dtype="float32", batch_size=8, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=["local_quiz", "local_text"], log_samples=True,
                                  task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))

    model, tok, _ = loading.load_for_inference("resume", str(bpe_run))
    quiz_set = benchmarks.load_choices(str(quiz), tok, model.config.block_size)
    # every choice's log-likelihood, example by example
    for sample in out["samples"]["local_quiz"]:
        ex = quiz_set.examples[sample["doc_id"]]
        with torch.no_grad():
            total, _ = evaluation.choice_losses(model, [ex])
        assert (-total).tolist() == pytest.approx([ll for ll, _ in sample["filtered_resps"]], abs=1e-4)
    ours = evaluation.multiple_choice(model, quiz_set, PLAN, DIST, batch_tokens=300)
    theirs = out["results"]["local_quiz"]
    assert ours["acc"] == theirs["acc,none"]  # exactly: the same examples right
    assert ours["acc_norm_chars"] == theirs["acc_norm,none"]
    assert ours["n"] == 40

    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    text_set = benchmarks.load_text(str(tmp_path / "text.txt"), tok)
    n = len(text_set.seq) - 1
    assert n > 3 * 64
    # the windows are the harness's: what each reads, and the targets it scores
    seq = text_set.seq.tolist()
    harness_windows = [(list(a), list(b)) for a, b in get_rolling_token_windows(seq[1:], tok.eot, 64, 1)]
    assert harness_windows == [(seq[s:s + length], seq[s + length - c + 1:s + length + 1])
                               for s, length, c in benchmarks.windows(n, 64)]
    bpb = evaluation.bits_per_byte(model, text_set, PLAN, DIST, batch_tokens=128)
    assert bpb["bytes"] == len(text.encode("utf-8"))
    assert bpb["bpb"] == pytest.approx(out["results"]["local_text"]["bits_per_byte,none"], abs=1e-4)


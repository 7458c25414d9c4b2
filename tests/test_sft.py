"""Supervised fine-tuning on conversations: data/chat/prepare.py counts only the assistant's tokens,
training never sees a user's token as a target, and after a short fine-tune chat.py talks to the run
in its template and stops where the reply ends."""

import contextlib
import json
import logging
import os
import re
import warnings

import numpy as np
import pytest
import torch

from conftest import TINY, assert_clean_error, run
from gptkit import conversation, loading
from gptkit.batches import Batches
from gptkit.generate import generate

WORDS = "cat dog sun moon tree bird fish star rain snow".split()
REPLY = "pong."  # the fixed pattern every assistant reply follows


def conversations(n=300, seed=0):
    """Users say varied things ("ping moon", "hello ..."); the assistant always answers REPLY."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "Answer briefly."}] if i % 3 == 0 else []
        for _ in range(1 + i % 2):
            messages.append({"role": "user", "content": f"{rng.choice(['ping', 'hello', 'say'])} {rng.choice(WORDS)}"})
            messages.append({"role": "assistant", "content": REPLY})
        out.append({"messages": messages})
    out.append({"messages": [{"role": "user", "content": "nobody answers this"}]})  # left out: nothing to learn
    return out


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory, gpt2_encoding):
    folder = tmp_path_factory.mktemp("chat")
    src = folder / "convs.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in conversations()))
    p = run("data/chat/prepare.py", src, f"--out={folder / 'data'}")
    assert "left out 1 without an assistant message" in p.stdout
    return folder / "data"


def test_only_the_assistants_tokens_count(chat_data, gpt2_encoding):
    enc = gpt2_encoding
    manifest = json.loads((chat_data / "dataset.json").read_text())
    assert manifest["counted"] == "assistant tokens" and manifest["chat_template"] == conversation.SFT.to_dict()
    ids = np.fromfile(chat_data / "train.bin", dtype=np.uint16)
    mask = np.fromfile(chat_data / "train_mask.bin", dtype=np.uint8)
    assert len(ids) == len(mask)
    # every run of counted tokens is one whole reply with its end-of-turn marker, and nothing else
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    runs = [enc.decode(ids[a:b].tolist()) for a, b in zip(edges[::2], edges[1::2])]
    n_train_replies = sum(len(c["messages"]) // 2 for i, c in enumerate(conversations()[:-1]) if (i + 1) % 20)
    assert runs == [REPLY + conversation.SFT.sep] * n_train_replies
    eot = ids == enc.eot_token
    assert eot.sum() == 300 - 15 and not mask[eot].any()  # <|endoftext|> after each conversation, not counted

    # batches: -1 at every target but the replies', so no user (or system) token is ever trained on
    batches = Batches(str(chat_data), "chat", 32, 8, 1337, "cpu")
    user_only = {t for w in WORDS + ["ping", "hello", "say", "Answer"] for t in enc.encode(" " + w) + enc.encode(w)}
    reply_tokens = set(enc.encode(REPLY + conversation.SFT.sep))
    counted = 0
    for it in range(30):
        X, Y = batches.train_batch(it, 0)
        targets = set(Y[Y >= 0].tolist())
        assert targets <= reply_tokens and not targets & user_only
        assert user_only & set(X.flatten().tolist())  # the user turns are there, as context
        counted += int((Y >= 0).sum())
        assert batches.target_counts(it, 1) == [int((Y >= 0).sum())]
    assert counted > 0
    X, Y = batches.eval_batch("val", 0)
    assert set(Y[Y >= 0].tolist()) <= reply_tokens


@pytest.fixture(scope="module")
def sft_run(chat_data, tmp_path_factory):
    """config/sft_gpt2.py as users run it, with a tiny random GPT-2 in GPT-2's place: (run folder, stdout)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sft")
    base = folder / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(base)
    out = folder / "run"
    tiny = [a for a in TINY if not a.startswith(("--n_", "--block_size"))]  # the architecture is the weights'
    p = run("train.py", "config/sft_gpt2.py", f"--init_from={base}", f"--data_dir={chat_data}", *tiny, "--batch_size=4",
            "--block_size=48", "--max_iters=100", "--warmup_iters=5", "--lr_decay_iters=100", "--learning_rate=1e-2",
            "--min_lr=1e-3", "--eval_interval=100", "--eval_iters=2", "--log_interval=20", f"--out_dir={out}")
    return out, p.stdout


@pytest.mark.slow
@pytest.mark.xdist_group("sft_run")  # one worker trains the run both use
def test_fine_tuned_run_chats_in_its_template_and_stops_where_the_reply_ends(sft_run):
    out, stdout = sft_run
    assert "(over assistant tokens)" in stdout
    assert stdout.splitlines()[-1].startswith(f"next: python chat.py --out_dir={out}  |  python sample.py")
    assert torch.load(out / "ckpt.pt", weights_only=True)["chat_template"] == conversation.SFT.to_dict()
    # best.pt and ckpt.pt of the same iteration are one file: a GPT-2 fine-tune's 1.5 GB once, not twice
    assert os.path.samefile(out / "best.pt", out / "ckpt.pt") and os.stat(out / "ckpt.pt").st_nlink == 2
    args = [f"--out_dir={out}", "--temperature=0", "--max_new_tokens=30", "--device=cpu"]
    c = run("chat.py", *args, "--prompt=ping moon")
    assert c.stdout == f"Assistant: {REPLY}\n", c.stdout  # the end marker ended the reply, and is not shown
    assert "template style" in c.stderr
    c = run("chat.py", *args, input="hello star\nsay rain\n")
    assert c.stdout == f"User: hello star\nAssistant: {REPLY}\nUser: say rain\nAssistant: {REPLY}\n", c.stdout


@pytest.mark.slow
def test_a_hugging_face_dataset_gives_the_same_data(chat_data, tmp_path):
    """The datasets path (here its json builder on the same file, offline) writes what the JSONL path does."""
    pytest.importorskip("datasets")
    out = tmp_path / "hf"
    run("data/chat/prepare.py", "--dataset=json", f"--data_files={chat_data.parent / 'convs.jsonl'}", f"--out={out}",
        env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    for name in ("train.bin", "val.bin", "train_mask.bin", "val_mask.bin", "dataset.json"):
        assert (out / name).read_bytes() == (chat_data / name).read_bytes(), name


@pytest.mark.slow
def test_bad_conversations_are_one_sentence(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                   + json.dumps({"messages": [{"role": "robot", "content": "beep"}]}) + "\n")
    p = run("data/chat/prepare.py", bad, f"--out={tmp_path / 'out'}", check=False)
    assert_clean_error(p, words=[f"{bad}, line 2", "'role'"])
    p = run("data/chat/prepare.py", f"--out={tmp_path / 'out'}", check=False)
    assert_clean_error(p, status=2, words=["--input=", "--dataset="])
    p = run("data/chat/prepare.py", tmp_path / "missing.jsonl", check=False)
    assert_clean_error(p, words=["missing.jsonl"])


@pytest.mark.slow
def test_a_run_on_data_without_a_template_chats_as_before(char_data, tmp_path):
    run("train.py", "--dataset=play_char", *TINY, "--max_iters=3", "--eval_interval=3", "--eval_iters=1",
        f"--out_dir={tmp_path}")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["chat_template"] is None
    c = run("chat.py", f"--out_dir={tmp_path}", "--prompt=Good night", "--max_new_tokens=5", "--device=cpu")
    assert c.stdout.startswith("JULIET:\n") and "play style" in c.stderr  # the transcript of a play, as before
    c = run("chat.py", f"--out_dir={tmp_path}", "--style=template", check=False)
    assert_clean_error(c, status=2, words=["no chat template", "--style=auto"])


def chat_template_tokenizer():
    """transformers' GPT-2 tokenizer (GPT_TEST_GPT2_TOKENIZER: a folder with vocab.json and merges.txt)
    carrying the fine-tuning template as a Jinja chat template."""
    transformers = pytest.importorskip("transformers")
    folder = os.environ.get("GPT_TEST_GPT2_TOKENIZER")
    if not folder or not os.path.isfile(os.path.join(folder, "vocab.json")):
        pytest.skip("GPT_TEST_GPT2_TOKENIZER does not name a folder with GPT-2's vocab.json and merges.txt")
    tok = transformers.GPT2TokenizerFast.from_pretrained(folder)
    tok.chat_template = conversation.SFT.jinja()
    return tok


def test_the_jinja_chat_template_writes_what_the_model_was_trained_on():
    tok = chat_template_tokenizer()
    sft = conversation.SFT
    for messages in ([m for c in conversations(6) for m in c["messages"]][:7],
                     [{"role": "system", "content": "Quote \"{{ x }}\" and {% raw %} as text.\n"},
                      {"role": "user", "content": "  héllo\n\n"}, {"role": "assistant", "content": "a\nb "}]):
        stripped = [{**m, "content": m["content"].strip()} for m in messages]  # as prepare.py and chat.py strip
        trained = "".join(text for text, _ in sft.segments(stripped))  # the text data/chat/prepare.py writes
        assert tok.apply_chat_template(messages, tokenize=False) == trained
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == trained + sft.bot
    # what chat.py sends the model for a turn, by the same template
    turns, line = [("ping moon", REPLY)], "say rain"
    messages = [{"role": "user", "content": "ping moon"}, {"role": "assistant", "content": REPLY},
                {"role": "user", "content": line}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == sft.render(turns, line)
    with pytest.raises(Exception, match="roles are system, user and assistant"):
        tok.apply_chat_template([{"role": "tool", "content": "42"}], tokenize=False)


@pytest.mark.slow
@pytest.mark.xdist_group("sft_run")  # one worker trains the run both use
def test_an_exported_chat_model_answers_through_transformers_chat_template(sft_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    out, _ = sft_run
    export = tmp_path / "hf"
    run("export.py", f"--out_dir={out}", f"--export_dir={export}")
    assert json.loads((export / "tokenizer_config.json").read_text())["chat_template"] == conversation.SFT.jinja()
    tok = transformers.AutoTokenizer.from_pretrained(export)
    model = transformers.AutoModelForCausalLM.from_pretrained(export)

    class Said(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    ours, our_tok, _ = loading.load_for_inference("resume", out, "ckpt.pt", "cpu")
    said = Said()
    transformers.utils.logging.add_handler(said)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            for line in ("ping moon", "hello star"):
                inputs = tok.apply_chat_template([{"role": "user", "content": line}], add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True)
                prompt = inputs["input_ids"]
                # what chat.py sends this run, and then the same greedy tokens from both
                assert prompt[0].tolist() == our_tok.encode(conversation.SFT.render([], line))
                theirs = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, prompt.shape[1]:].tolist()
                assert theirs == generate(ours, prompt, 12, temperature=0)[0, prompt.shape[1]:].tolist()
            # a plain call, as transformers' documentation makes it, and one that stops at the end of the turn
            model.generate(prompt, max_new_tokens=4)
            inputs = tok.apply_chat_template([{"role": "user", "content": "ping moon"}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
            ids = model.generate(**inputs, max_new_tokens=20, do_sample=False, stop_strings=["<|im_end|>"], tokenizer=tok)
            assert tok.decode(ids[0, inputs["input_ids"].shape[1]:]) == REPLY + conversation.SFT.turn_end
    finally:
        transformers.utils.logging.remove_handler(said)
    assert not said.lines and not [str(w.message) for w in warned], (said.lines, [str(w.message) for w in warned])


@pytest.mark.slow
def test_a_small_conversations_file_keeps_one_evaluation_sequence_in_val_or_says_which_block_size_fits(tmp_path,
                                                                                                  gpt2_encoding):
    src = tmp_path / "few.jsonl"
    src.write_text("".join(json.dumps(c) + "\n" for c in conversations(200)[:-1]))
    p = run("data/chat/prepare.py", src, f"--out={tmp_path / 'few'}")
    assert "200 conversations (185 train, 15 val)" in p.stdout and "not the 10 of --val_fraction=0.05" in p.stdout
    assert len(np.fromfile(tmp_path / "few" / "val.bin", dtype=np.uint16)) >= 1025  # one sequence of GPT-2's context
    src.write_text("".join(json.dumps(c) + "\n" for c in conversations(40)[:-1]))
    p = run("data/chat/prepare.py", src, f"--out={tmp_path / 'fewer'}")
    val = len(np.fromfile(tmp_path / "fewer" / "val.bin", dtype=np.uint16))
    assert "40 conversations (30 train, 10 val)" in p.stdout and f"train with --block_size={val - 1} or less" in p.stdout
    # it speaks of the block sizes the chat recipes use, and only says a recipe is short where it is
    recipes = ("enough for config/sft_gpt2_cpu.py (256), not for config/sft_gpt2.py (1,024)" if val > 256
               else "not enough for config/sft_gpt2_cpu.py (256) and config/sft_gpt2.py (1,024)")
    assert recipes in p.stdout, p.stdout
    p = run("train.py", "config/sft_gpt2.py", f"--data_dir={tmp_path / 'fewer'}", "--device=cpu", check=False)
    assert_clean_error(p, status=2, words=[f"val.bin holds {val} tokens", f"--block_size={val - 1} or less"])


def test_a_gpu_sized_chat_recipe_on_a_cpu_states_its_cost_and_points_to_the_cpu_recipe():
    from types import SimpleNamespace

    from gptkit.threads import ThreadChooser
    from gptkit.training import first_evaluation

    class Slow(torch.nn.Module):  # a forward pass of 0.2 s, as a bigger model's would take
        def forward(self, X, Y):
            import time
            time.sleep(0.2)

    class Chat:  # the eval batch and the template of prepared conversations
        chat_template = conversation.SFT.to_dict()

        def eval_batch(self, split, k):
            return None, None

    plan = SimpleNamespace(device="cpu", device_type="cpu", autocast_context=contextlib.nullcontext)
    # config/sft_gpt2.py's shape of run: 8 micro-steps, 1,000 steps, 40 batches in each of 11 evaluations
    threads = ThreadChooser(requested=1)
    lines = first_evaluation(Slow(), Chat(), plan, eval_iters=40, accum_local=8, world_size=1, threads=threads, steps=1000, evals=11)
    forward = float(re.search(r"80 forward passes of (\d+) ms", lines[0])[1]) / 1000
    assert 0.2 <= forward < 0.4
    assert re.search(r"^the first evaluation takes ~\d+\.\d s \(", lines[0]), lines
    assert lines[1].startswith("note: this config is sized for a GPU; on a CPU, config/sft_gpt2_cpu.py")
    # a run of a minute or less says nothing
    assert first_evaluation(Slow(), Chat(), plan, eval_iters=1, accum_local=1, world_size=1, threads=threads, steps=10, evals=2) == []
    threads.close()

"""Supervised fine-tuning on conversations: data/chat/prepare.py counts only the assistant's tokens,
training never sees a user's token as a target, and after a short fine-tune chat.py talks to the run
in its template and stops where the reply ends."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY, assert_clean_error, run
from gptkit import conversation
from gptkit.dataset import Batches

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


@pytest.mark.slow
def test_fine_tuned_run_chats_in_its_template_and_stops_where_the_reply_ends(chat_data, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    base = tmp_path / "tiny-gpt2"  # a tiny stand-in for GPT-2's weights: config/sft_gpt2.py as users run it
    GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)).save_pretrained(base)
    out = tmp_path / "sft"
    tiny = [a for a in TINY if not a.startswith(("--n_", "--block_size"))]  # the architecture is the weights'
    p = run("train.py", "config/sft_gpt2.py", f"--init_from={base}", f"--data_dir={chat_data}", *tiny,
            "--block_size=48", "--max_iters=100", "--warmup_iters=5", "--lr_decay_iters=100", "--learning_rate=1e-2",
            "--min_lr=1e-3", "--eval_interval=100", "--eval_iters=2", "--log_interval=20", f"--out_dir={out}")
    assert "(over assistant tokens)" in p.stdout
    assert torch.load(out / "ckpt.pt", weights_only=True)["chat_template"] == conversation.SFT.to_dict()
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

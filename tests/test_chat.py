"""chat.py driven through a pipe, with a tiny model that has learnt a two-speaker script."""

import pickle

import pytest
import torch

import conftest
from conftest import assert_clean_error
from gptkit import checkpoint
from model import GPT, GPTConfig

SCRIPT = "A:\nhi\nB:\nyo\nA:\nok\nB:\nno\n"  # replies: "hi" -> "yo", "ok" -> "no"


def run(script, *args, input="", check=True):
    return conftest.run(script, *args, input=input, check=check, timeout=300)


def dialogue_run(out_dir):
    """A character model trained in-process until it reproduces SCRIPT, saved as a run folder."""
    chars = sorted(set(SCRIPT))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in SCRIPT * 40])
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is ~10x faster than two on a busy 2-core machine
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(chars), bias=False, dropout=0.0)
    model = GPT(GPTConfig(**args))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        i = torch.randint(0, len(data) - 33, (16,))
        x = torch.stack([data[j:j + 32] for j in i])
        y = torch.stack([data[j + 1:j + 33] for j in i])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    assert loss.item() < 0.2, loss.item()
    checkpoint.save({"model": model.state_dict(), "optimizer": {}, "model_args": args, "iter_num": 150,
                     "best_val_loss": loss.item(), "config": {}}, out_dir / "ckpt.pt")
    with open(out_dir / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "stoi": stoi, "itos": dict(enumerate(chars))}, f)


@pytest.fixture(scope="module")
def dialogue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dialogue")
    dialogue_run(folder)
    return folder


@pytest.mark.slow
def test_two_turns_through_a_pipe_stop_at_the_next_speaker(dialogue, tmp_path):
    args = [f"--out_dir={dialogue}", "--user=A:\n", "--bot=B:\n", "--sep=\n", "--temperature=0",
            "--max_new_tokens=40", "--device=cpu"]
    p = run("chat.py", *args, input="hi\nok\n")
    # each reply ends where the model begins the next "A:" line; end of input ends the chat cleanly
    assert p.stdout == "A:\nhi\nB:\nyo\n\nA:\nok\nB:\nno\n\n", p.stdout
    assert p.returncode == 0 and "Traceback" not in p.stderr

    # commands and a line the vocabulary cannot spell; /quit leaves before the last line
    p = run("chat.py", *args, input="h\u00e9\nhi\n/reset\n/help\nok\n/quit\nhi\n")
    assert p.stdout == "A:\nhi\nB:\nyo\n\nA:\nok\nB:\nno\n\n", p.stdout
    assert "outside this model's vocabulary" in p.stderr and "forgotten" in p.stderr and "Traceback" not in p.stderr

    p = run("chat.py", *args, "--prompt=ok")
    assert p.stdout == "B:\nno\n\n"

    # the play's default prefixes are not in this vocabulary: said before anything is generated
    p = run("chat.py", f"--out_dir={dialogue}", "--prompt=hi", check=False)
    assert_clean_error(p, status=2, words=["the play style's prefixes need 'EIJLMORTU'", "not trained on chats or plays",
                                           "--user=", f"python sample.py --out_dir={dialogue}"])

    # no run to chat with: say what to do
    p = run("chat.py", f"--out_dir={tmp_path}", check=False)
    assert_clean_error(p, words=[str(tmp_path), "--init_from=gpt2"])

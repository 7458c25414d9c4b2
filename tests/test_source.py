"""The data source protocol (gptkit/source.py): a prepared dataset and generated problems both satisfy it,
and training's evaluation reads each one's figures through it alone."""

import pytest
import torch

from gptkit import arithmetic, runtime, training
from gptkit.batches import open_source
from gptkit.errors import UserError
from gptkit.source import DataSource
from model import GPT, GPTConfig


@pytest.fixture(params=["play_char", "addition"])
def source(request, char_data):
    return open_source(request.param, "", 16, 4, 7, "cpu")


def test_both_sources_satisfy_the_protocol_and_their_batches_fit_it(source):
    assert isinstance(source, DataSource)
    assert isinstance(source.origin, str) and source.origin
    assert source.vocab_size == source.meta["vocab_size"]  # given at construction: the data's vocabulary
    for X, Y in (source.train_batch(3, 1), source.eval_batch("val", 0), source.eval_batch("train", 1)):
        assert X.shape == Y.shape == (4, source.seq_len) and X.dtype == Y.dtype == torch.int64
        assert 0 <= int(X.min()) and int(X.max()) < source.vocab_size and int(Y.max()) < source.vocab_size
    assert torch.equal(source.train_batch(3, 1)[0], source.train_batch(3, 1)[0])  # a function of (iteration, micro)
    if source.counted:
        assert source.target_counts(3, 2)[1] == int((source.train_batch(3, 1)[1] >= 0).sum())
    # what it scores beside the loss is what training.evaluate returns, read through the protocol alone
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=source.vocab_size, bias=False))
    losses = training.evaluate(model, source, 2, runtime.plan_for("cpu", "float32"), runtime.Dist())
    assert set(losses) == {"train", "val"} | {f"{s}_{name}" for s in ("train", "val") for name in source.eval_figures}
    words = source.eval_summary(losses, 8)  # what train.py's eval line adds
    assert words.startswith("; exact match (greedy): train ") if source.eval_figures else words == ""


def test_a_batches_object_without_the_evaluation_members_is_not_a_source():
    class TrainOnly:
        origin, meta, vocab_size, seq_len, counted, schedule = "x", None, 1, 1, None, ""
        chat_template = prompt_format = None

        def train_batch(self, iteration, micro_step): ...

        def eval_batch(self, split, k): ...

        def target_counts(self, iteration, micro_steps): ...

    assert not isinstance(TrainOnly(), DataSource)


def test_exact_match_counts_a_row_right_only_when_every_counted_target_is_the_most_likely_token():
    t = arithmetic.Arithmetic("addition", 2, True, 16, 3, 0, "cpu")
    X, Y = t.eval_batch("val", 0)
    logits = torch.nn.functional.one_hot(Y.clamp(min=0), t.vocab_size).float()  # right everywhere
    logits[Y < 0] = torch.randn(int((Y < 0).sum()), t.vocab_size)  # what is not counted does not matter
    assert t.eval_counts(logits, Y).tolist() == [[3.0, 3.0]]
    row, col = 1, int((Y[1] >= 0).nonzero()[-1])  # the last counted target of row 1: its newline
    logits[row, col] = logits[row, col].roll(1)
    assert t.eval_counts(logits, Y).tolist() == [[2.0, 3.0]]


def test_generated_problems_take_no_row_options():
    with pytest.raises(UserError, match="sampling=epoch and align=none choose rows of a prepared dataset"):
        open_source("addition", "", 16, 4, 7, "cpu", sampling="epoch")

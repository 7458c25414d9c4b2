"""Masked targets (-1): a masked position gets exactly zero gradient, and the loss of a step (under
gradient accumulation, and over two processes) and of an evaluation is the mean over every counted
target, as one big batch computes it by hand, not a mean of per-micro-batch means."""

import json
import os
import subprocess
import sys

import masked_ddp_worker
import pytest
import torch
from masked_ddp_worker import hand_loss

from conftest import ROOT
from gptkit import runtime, training
from gptkit.source import DataSource

VOCAB = 13


def tiny_model():
    return masked_ddp_worker.tiny_model(VOCAB, block_size=8)


def masked_micro_batches(counts, seed=1, B=2, T=8):
    """Micro-batches whose rows count the given numbers of targets (the rest -1), at random places."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        X = torch.randint(0, VOCAB, (B, T), generator=g)
        Y = torch.randint(0, VOCAB, (B, T), generator=g)
        keep = torch.randperm(B * T, generator=g)[:n]
        mask = torch.ones(B * T, dtype=torch.bool)
        mask[keep] = False
        Y.view(-1)[mask] = -1
        out.append((X, Y))
    return out


class FixedBatches(DataSource):
    """The same given micro-batches every iteration, with the interface training.Step reads."""
    counted = "test tokens"

    def __init__(self, micro):
        self.micro = micro

    def train_batch(self, iteration, micro_step):
        return self.micro[micro_step]

    def target_counts(self, iteration, micro_steps):
        return [int((self.micro[m][1] >= 0).sum()) for m in range(micro_steps)]

    def eval_batch(self, split, k):
        return self.micro[k]


def step_update(micro):
    """(loss, update of each parameter) of one Step over the micro-batches: plain SGD with lr 1 and no
    clipping, so the update is the gradient."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    step = training.Step(model, model, optimizer, FixedBatches(micro), runtime.plan_for("cpu", "float32"),
                         runtime.Dist(), len(micro), grad_clip=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = step(0)
    assert result.finite
    return result.loss, {n: before[n] - p.detach() for n, p in model.named_parameters()}


def reference(micro):
    """(loss, gradient) of one big batch holding every micro-batch, computed by hand."""
    model = tiny_model()
    X = torch.cat([x for x, _ in micro])
    Y = torch.cat([y for _, y in micro])
    loss = hand_loss(model, X, Y)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters()}


def test_masked_targets_get_exactly_zero_gradient():
    model = tiny_model()
    (X, Y), = masked_micro_batches([5])
    seen = {}

    def keep_logits(module, args, out):
        out.retain_grad()
        seen["logits"] = out

    model.lm_head.register_forward_hook(keep_logits)
    _, loss = model(X, Y)
    loss.backward()
    grad = seen["logits"].grad  # (B, T, V)
    masked = Y < 0
    assert masked.sum() == X.numel() - 5
    assert torch.equal(grad[masked], torch.zeros_like(grad[masked]))  # exactly zero, not just small
    assert (grad[~masked].abs().sum(-1) > 0).all()
    assert loss.item() == pytest.approx(hand_loss(tiny_model(), X, Y).item(), rel=1e-5)


def test_accumulated_step_is_the_mean_over_all_counted_targets():
    # very unequal counts, and one micro-batch with no counted target at all (a window inside a user's
    # turn): its mean is 0/0, which must neither poison the step nor count
    micro = masked_micro_batches([16, 2, 0, 7])
    loss, update = step_update(micro)
    ref_loss, ref_grad = reference(micro)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, g in ref_grad.items():
        assert torch.allclose(update[name], g.float(), atol=1e-6), name
    # the mean of the per-micro-batch means is a different number here: the test can tell them apart
    naive = sum(hand_loss(tiny_model(), x, y).item() for x, y in micro if (y >= 0).any()) / 3
    assert abs(naive - ref_loss) > 1e-2


def test_unmasked_data_trains_as_before():
    # every target counts: the step divides each micro-batch's mean by the micro-step count, as it did
    # before masks existed, and equals the big batch's mean
    micro = masked_micro_batches([16, 16, 16])
    loss, update = step_update(micro)
    ref_loss, ref_grad = reference(micro)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, g in ref_grad.items():
        assert torch.allclose(update[name], g.float(), atol=1e-6), name


def test_evaluation_is_the_mean_over_all_counted_targets():
    micro = masked_micro_batches([16, 1, 0, 9])
    model = tiny_model()
    losses = training.evaluate(model, FixedBatches(micro), 4, runtime.plan_for("cpu", "float32"), runtime.Dist())
    X = torch.cat([x for x, _ in micro])
    Y = torch.cat([y for _, y in micro])
    with torch.no_grad():
        assert losses["val"] == pytest.approx(hand_loss(model, X, Y).item(), rel=1e-5)
    assert "val_accuracy" not in losses  # windows of a token stream are not problems to get right


def test_evaluation_of_unmasked_data_is_the_mean_of_the_batches_means_bit_for_bit():
    micro = masked_micro_batches([16, 16, 16])
    model = tiny_model()
    batches = FixedBatches(micro)
    batches.counted = None
    losses = training.evaluate(model, batches, 3, runtime.plan_for("cpu", "float32"), runtime.Dist())
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float32)
        for X, Y in micro:  # what evaluate computed before masks existed
            total += model(X, Y)[1].float()
    assert losses["val"] == (total / 3).item()


@pytest.mark.serial
@pytest.mark.slow
def test_two_processes_weigh_micro_batches_by_their_counted_targets(tmp_path):
    """One torchrun launch of tests/masked_ddp_worker.py: a DDP step and an evaluation over two
    processes, on generated addition problems whose micro-batches count different numbers of targets,
    against the hand computation on one big batch."""
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "masked_ddp_worker.py"), str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert len(set(r["counts"])) > 1, r["counts"]  # the micro-batches really count differently
    assert r["loss"] == pytest.approx(r["ref_loss"], rel=1e-5)
    assert r["max_grad_diff"] <= 1e-6
    assert r["val_loss"] == pytest.approx(r["ref_val_loss"], rel=1e-5)
    assert r["val_accuracy"] == r["ref_val_accuracy"]

"""The two-process half of tests/test_masking.py, run under torchrun (CPU, gloo): one training.Step
through DDP and one evaluation on generated addition problems, whose micro-batches count different
numbers of answer tokens. Rank 0 then computes both by hand on one big batch in a single process and
writes the figures as JSON to the file named on the command line. Also holds the tiny model and the
hand-computed loss that test uses."""

import json
import sys

import torch

from model import GPT, GPTConfig


def tiny_model(vocab_size, seed=0, block_size=16):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=block_size, vocab_size=vocab_size, bias=False,
                         dropout=0.0))


def hand_loss(model, X, Y):
    """Mean over the counted targets (Y >= 0) of -log p(target), from the logits and an explicit
    softmax, in float64."""
    logits = model.all_logits(X).double()  # (B, T, V)
    counted = Y >= 0
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return -logp[counted].gather(1, Y[counted][:, None]).sum() / counted.sum()


def main(out_path):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gptkit import arithmetic, runtime, training
    rt = runtime.setup("cpu", "float32", compile=False, backend="gloo")
    dist, plan = rt.dist, rt.plan
    assert dist.world_size == 2
    accum = 4  # micro-steps over both processes: 2 each
    batches = arithmetic.Arithmetic("addition", 2, True, 16, 3, seed=5, device="cpu")
    model = tiny_model(len(arithmetic.CHARS))
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # no momentum: the update is the gradient
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step = training.Step(model, DDP(model), optimizer, batches, plan, dist, accum // dist.world_size, grad_clip=0.0)
    result = step(0)
    losses = training.evaluate(model, batches, 3, plan, dist)
    if dist.master:
        single = training.evaluate(model, batches, 3, plan, runtime.Dist())
        ref = tiny_model(len(arithmetic.CHARS))
        micro = [batches.train_batch(0, m) for m in range(accum)]
        loss = hand_loss(ref, torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro]))
        loss.backward()
        diff = max((before[n] - p.detach() - dict(ref.named_parameters())[n].grad.float()).abs().max().item()
                   for n, p in model.named_parameters())
        val = [batches.eval_batch("val", k) for k in range(3)]
        with torch.no_grad():
            val_loss = hand_loss(model, torch.cat([x for x, _ in val]), torch.cat([y for _, y in val])).item()
        with open(out_path, "w") as f:
            json.dump(dict(counts=batches.target_counts(0, accum), loss=result.loss, ref_loss=loss.item(),
                           max_grad_diff=diff, val_loss=losses["val"], ref_val_loss=val_loss,
                           val_accuracy=losses["val_accuracy"], ref_val_accuracy=single["val_accuracy"]), f)
    runtime.shutdown(dist)


if __name__ == "__main__":
    main(sys.argv[1])

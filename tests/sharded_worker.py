"""The multi-process half of tests/test_fsdp.py, run under torchrun (CPU, gloo), and the measurement quoted
in docs/fsdp.md. Three steps of training.Step on generated addition problems (masked targets) with
the model sharded by gptkit.sharding, over all processes and, with 4 or more, hybrid (over pairs,
replicated across them), against the same steps in one process; then the bytes of weights, gradients
and AdamW state each process holds, against one process's (which is what every DDP process holds).
Given a run folder, also loads its sharded checkpoint (written by another number of processes) here
and compares it with the run's consolidated ckpt.pt. Rank 0 writes the figures as JSON.

    python -m torch.distributed.run --standalone --nproc_per_node=4 tests/sharded_worker.py OUT.json [--load_run=DIR]
"""

import argparse
import json

import torch

from gptkit import arithmetic, checkpoint, dcp, optim, runs, runtime, sharding, training
from model import GPT, GPTConfig

STEPS = 3


def held_bytes(model, optimizer):
    """Bytes of the weights, gradients and optimizer state this process holds: the storage under each
    tensor (under a sharded one, this process's shard, with FSDP's padding), each storage counted once
    (the tied embedding and head are one)."""
    storages = {}

    def add(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for p in model.parameters():
        add(p)
        if p.grad is not None:
            add(p.grad)
    for opt in dcp.optimizers(optimizer):
        for state in opt.state.values():
            for v in state.values():
                if torch.is_tensor(v):
                    add(v)
    return sum(storages.values())


def train(args, batches, plan, dist, shard_size=None):
    """Losses and gradient norms of STEPS steps, then (after one more backward pass, so that gradients
    are held) this process's bytes. shard_size None: one process, no sharding."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=args.n_layer, n_head=4, n_embd=args.n_embd, block_size=batches.seq_len,
                          vocab_size=args.vocab_size, bias=False, dropout=0.0))
    if shard_size is not None:
        model, _ = sharding.place(model, "fsdp", shard_size, False, dist, plan)
        accum_local = 1
    else:
        dist, accum_local = runtime.Dist(), args.world_size
    optimizer = optim.configure_optimizers(model, 0.1, 1e-2, (0.9, 0.95), fused=True)
    step = training.Step(model, model, optimizer, batches, plan, dist, accum_local, grad_clip=0.5)
    results = [step(it) for it in range(STEPS)]
    X, Y = batches.train_batch(STEPS, dist.rank)
    model(X, Y)[1].backward()
    return dict(losses=[r.loss for r in results], grad_norms=[r.grad_norm for r in results],
                bytes=held_bytes(model, optimizer))


def resharded(run_dir, plan, dist):
    """The largest differences between the weights and AdamW state of run_dir's sharded checkpoint, loaded
    into a model sharded over this run's processes, and those of its consolidated ckpt.pt."""
    store = checkpoint.Store(run_dir)
    folder = store.sharded(runs.LATEST)
    state = store.run_state(folder)
    c = state["config"]
    assert c["optimizer"] == "adamw", c["optimizer"]
    model = GPT(checkpoint.model_config(checkpoint.model_args(state)))
    model, _ = sharding.place(model, "fsdp", 0, False, dist, plan)
    optimizer = optim.configure_optimizers(model, c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]))
    dcp.load(folder, model, optimizer)
    whole = torch.load(store.path(runs.LATEST), weights_only=True)
    weights = max((p.full_tensor() - whole["model"][name]).abs().max().item() for name, p in model.named_parameters())
    # the one-file layout numbers the parameters in the order of the optimizer's groups
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = whole["optimizer"]["state"]
    states = max((v.full_tensor() if hasattr(v, "full_tensor") else v).sub(saved[i][k]).abs().max().item()
                 for i, p in enumerate(params) for k, v in optimizer.state[p].items())
    return dict(weights=weights, optimizer_state=states, written_by=len(state["rng"]))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--load_run", default="", help="a parallel=fsdp run folder whose ckpt.dcp to load here")
    parser.add_argument("--n_layer", type=int, default=2)
    parser.add_argument("--n_embd", type=int, default=32)
    parser.add_argument("--vocab_size", type=int, default=len(arithmetic.CHARS))
    args = parser.parse_args()
    rt = runtime.setup("cpu", "float32", compile=False, backend="gloo")
    dist, plan = rt.dist, rt.plan
    args.world_size = dist.world_size
    batches = arithmetic.Arithmetic("addition", 3, True, 16, 4, seed=5, device="cpu")
    meshes = {f"sharded over {dist.world_size}": 0}
    if dist.world_size >= 4 and dist.world_size % 2 == 0:
        meshes[f"sharded over 2, replicated x{dist.world_size // 2}"] = 2
    figures = dict(world_size=dist.world_size, meshes={})
    for name, shard_size in meshes.items():
        mine = train(args, batches, plan, dist, shard_size)
        every = [None] * dist.world_size
        torch.distributed.all_gather_object(every, mine["bytes"])
        figures["meshes"][name] = dict(mine, bytes=every)
    if dist.master:
        figures["one_process"] = train(args, batches, plan, dist)
    if args.load_run:
        figures["resharded"] = resharded(args.load_run, plan, dist)
    if dist.master:
        with open(args.out, "w") as f:
            json.dump(figures, f, indent=1)
    runtime.shutdown(dist)


if __name__ == "__main__":
    main()

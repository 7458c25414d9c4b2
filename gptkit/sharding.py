"""
Sharded data parallelism (parallel=fsdp): FSDP2 (torch.distributed.fsdp.fully_shard) splits each block,
then the rest of the model, over the processes, so each holds 1/N of the weights, gradients and
optimizer state and gathers a block's weights only while it runs; and activation checkpointing per
block, for either engine. Its checkpoints are sharded folders, saved and read through the run's
checkpoint store (checkpoint.Store; the format is dcp.py's).

    model, said = sharding.place(model, cfg.parallel, ...)  # instead of model.to(device)
"""

import torch

from gptkit.errors import USAGE, UserError


# -----------------------------------------------------------------------------
# the model on the processes

def shards(parallel, shard_size, world_size):
    """How many processes share each weight: each holds 1/shards of the model (1 without sharding)."""
    return (shard_size or world_size) if parallel == "fsdp" else 1


def place(model, parallel, shard_size, activation_checkpointing, dist, plan):
    """Put the model where it trains: whole on the device (parallel=ddp, and fsdp on one process), or
    sharded over the processes (fsdp): each block, then the rest (embeddings and the tied head, the
    final norm). Returns (the model, a line saying how, or None)."""
    if activation_checkpointing:
        checkpoint_blocks(model)
    if parallel != "fsdp":
        return model.to(plan.device), None
    if plan.grad_scaler:
        raise UserError("parallel=fsdp does not train in float16, whose gradient scaler would have to agree over "
                        "every process's shards; use --dtype=bfloat16 (or float32), or parallel=ddp", status=USAGE)
    if dist.world_size == 1:
        return model.to(plan.device), ("parallel=fsdp on one process shards nothing: the whole model trains here, "
                                       "and its checkpoints are sharded ones (ckpt.dcp), which resume on any number "
                                       "of processes")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    # every process starts from the first one's weights, as DDP makes them (each drew its own: the seed
    # is per process, for dropout)
    first = model.state_dict() if dist.master else {}
    groups = dist.world_size // shard_size if shard_size else 1
    if groups > 1:
        # hybrid sharding: each group (one node's GPUs, on fast links) holds one sharded copy, and the
        # groups all-reduce their gradients as DDP processes do (keys.check made the groups equal)
        mesh = init_device_mesh(plan.device_type, (groups, shard_size), mesh_dim_names=("replicate", "shard"))
        how = f"sharded over each group of {shard_size} processes, replicated across the {groups} groups"
    else:
        mesh = init_device_mesh(plan.device_type, (dist.world_size,))
        how = f"sharded over {dist.world_size} processes"
    # On GPUs the gathered weights are cast to dtype for the forward and backward passes and the gradients
    # reduced in float32, while the shards (master weights) and the optimizer state stay float32. On CPU,
    # where autocast is slower than fp32 (runtime.pick_dtype), the weights stay as they are.
    mixed = plan.device_type == "cuda" and plan.dtype != "float32"
    policy = (MixedPrecisionPolicy(param_dtype=plan.ptdtype, reduce_dtype=torch.float32) if mixed
              else MixedPrecisionPolicy())
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)  # moves the shards to the mesh's device
    set_model_state_dict(model, first, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    precision = f"; computes in {plan.dtype}, reduces gradients in float32" if mixed else ""
    return model, f"parallel=fsdp: weights, gradients and optimizer state {how}{precision}"


def checkpoint_blocks(model):
    """Activation checkpointing per block: the forward pass keeps only each block's input and the
    backward pass recomputes the block's activations from it (with the same dropout: the random state
    is replayed), so activation memory falls from all blocks' to one block's for about one more forward
    pass. The composable form leaves the parameters' names as they were (no wrapper module)."""
    from torch.distributed._composable import checkpoint
    for block in model.transformer.h:
        checkpoint(block)

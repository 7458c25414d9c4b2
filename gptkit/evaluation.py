"""
A model's scores on evaluation sets (benchmarks.py): multiple-choice accuracy and bits per byte, batched,
on any device, shared out over DDP processes; and what train.py scores at each evaluation beside the loss.

Multiple choice, build-nanogpt's method: a choice's loss is the cross-entropy of its tokens given the
context and the tokens of the choice before them. acc picks the choice of least total loss (the most
likely text: lm-evaluation-harness's acc too), acc_norm the least mean loss per token, and
acc_norm_chars, lm-evaluation-harness's acc_norm, the least total loss per character of the choice.
"""

import math

import torch
import torch.nn.functional as F

from gptkit import benchmarks, runtime
from gptkit.errors import USAGE, UserError
from gptkit.generate import KVCache


def _share(items, dist):
    """This process's share of items (every world_size-th), and how many turns every process takes: the
    same number on all, so that the per-turn stop vote and the final sum line up."""
    return items[dist.rank::dist.world_size], -(-len(items) // dist.world_size)


class _EvalMode:
    """model.eval() for the block, then the mode it had (train.py scores a training model)."""

    def __init__(self, model):
        self.model, self.training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.training)


# -----------------------------------------------------------------------------
# multiple choice


def choice_batches(examples, batch_tokens):
    """Indices of examples in forward-pass batches of about batch_tokens fed tokens (one example alone may
    feed more), in order of context length, so that a batch's contexts pad little and many share a
    length."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].context),
                                                        max(len(c) for c in examples[i].choices)))
    batches, batch, fed = [], [], 0
    for i in order:
        ex = examples[i]
        cost = len(ex.context) + len(ex.choices) * max(len(c) for c in ex.choices)  # padded: an upper bound
        if batch and fed + cost > batch_tokens:
            batches.append(batch)
            batch, fed = [], 0
        batch.append(i)
        fed += cost
    if batch:
        batches.append(batch)
    return batches


# A pass of choices is split in two where that spares more padded tokens than this: a forward pass
# streams all the weights once, which on a 2-core CPU costs GPT-2 small about as much as 50 tokens
SPLIT_TOKENS = 64


def passes(lengths):
    """Rows (indices into lengths), longest first, in passes: each pass is padded to its longest row,
    and split in two wherever that spares more than SPLIT_TOKENS padded tokens."""
    order = sorted(range(len(lengths)), key=lambda r: -lengths[r])
    out, todo = [], [order]
    while todo:
        rows = todo.pop()
        # padding spared by starting a second pass at row k: rows k.. are padded to lengths[rows[k]] instead
        spared = [(lengths[rows[0]] - lengths[rows[k]]) * (len(rows) - k) for k in range(1, len(rows))]
        best = max(range(len(spared)), key=spared.__getitem__, default=None)
        if best is None or spared[best] <= SPLIT_TOKENS:
            out.append(rows)
        else:
            todo += [rows[:best + 1], rows[best + 1:]]
    return out


HEAD_ROWS = 1024  # hidden states per head matmul: enough to stream its vocabulary x n_embd weights once for
#                   many rows (GPT-2's 154 MB), few enough that the logits stay ~200 MB


def choice_losses(model, examples):
    """(total loss, tokens) of every choice of every example, in order, each a (rows,) tensor.

    Each context is computed once, not once per choice: the contexts run as one right-padded batch into
    a KV cache (right padding changes nothing before it); then the choices whose contexts have one
    length run as one batch, a row each, continuing from their context's keys and values (the model
    reads positions from the cache, so one length a batch). The head (n_embd x vocabulary: a third of
    GPT-2 small's work per token) runs only on the hidden states that predict a choice's token, many
    at once."""
    device = model.lm_head.weight.device
    cfg = model.config
    endings = [c for ex in examples for c in ex.choices]
    of = [g for g, ex in enumerate(examples) for _ in ex.choices]  # each choice's example
    owner = torch.tensor(of, device=device)  # (R,)
    lengths = torch.tensor([len(c) for c in endings], device=device)
    ctx_len = torch.tensor([len(ex.context) for ex in examples], device=device)  # (G,)
    T = int(ctx_len.max())
    context = torch.zeros((len(examples), T), dtype=torch.long)
    for g, ex in enumerate(examples):
        context[g, :len(ex.context)] = torch.tensor(ex.context)
    cache = KVCache(cfg.n_layer, len(examples), cfg.kv_heads, T, cfg.head_size, device, model.lm_head.weight.dtype)
    hidden = model.hidden_states(context.to(device), cache)  # (G, T, n_embd)
    # each choice's first token is predicted at its context's last position
    states = [hidden[torch.arange(len(examples), device=device), ctx_len - 1].index_select(0, owner)]  # (R, n_embd)
    targets = [torch.tensor([c[0] for c in endings], device=device)]
    rows = [torch.arange(len(endings), device=device)]
    for L in sorted({len(ex.context) for ex in examples}):
        same = [r for r, c in enumerate(endings) if len(examples[of[r]].context) == L and len(c) > 1]
        for mine in passes([len(endings[r]) for r in same]) if same else []:
            mine = [same[i] for i in mine]
            M = max(len(endings[r]) for r in mine)
            tokens = torch.zeros((len(mine), M - 1), dtype=torch.long)  # each choice but its last token
            target = torch.full((len(mine), M - 1), -1, dtype=torch.long)  # the choice's next tokens; -1: padding
            for i, r in enumerate(mine):
                tokens[i, :len(endings[r]) - 1] = torch.tensor(endings[r][:-1])
                target[i, :len(endings[r]) - 1] = torch.tensor(endings[r][1:])
            mine = torch.tensor(mine, device=device)
            hidden = model.hidden_states(tokens.to(device), cache.rows(owner[mine], room=M - 1, length=L))
            keep = target.to(device) >= 0
            states.append(hidden[keep])
            targets.append(target.to(device)[keep])
            rows.append(mine[keep.nonzero()[:, 0]])
    states, targets, rows = torch.cat(states), torch.cat(targets), torch.cat(rows)
    losses = torch.zeros(len(endings), device=device)
    for i in range(0, len(states), HEAD_ROWS):
        nll = F.cross_entropy(model.logits(states[i:i + HEAD_ROWS]).float(), targets[i:i + HEAD_ROWS], reduction="none")
        losses.index_add_(0, rows[i:i + HEAD_ROWS], nll)
    return losses, lengths


def pick(examples, total, tokens):
    """(right by acc, by acc_norm, by acc_norm_chars) of each example, three (G,) bool tensors, from its
    choices' total losses and token counts. Ties go to the first choice, as numpy's argmax in the harness."""
    device = total.device
    width = max(len(ex.choices) for ex in examples)
    rows = torch.tensor([g for g, ex in enumerate(examples) for _ in ex.choices], device=device)
    cols = torch.tensor([j for ex in examples for j in range(len(ex.choices))], device=device)
    chars = torch.tensor([n for ex in examples for n in ex.chars], device=device, dtype=torch.float32)
    label = torch.tensor([ex.label for ex in examples], device=device)
    right = []
    for score in (total, total / tokens, total / chars):
        table = torch.full((len(examples), width), math.inf, device=device)  # (G, choices); inf: no such choice
        table[rows, cols] = score.float()
        right.append(table.argmin(dim=1) == label)
    return right


@torch.inference_mode()
def multiple_choice(model, task, plan, dist, batch_tokens=4096, stop=lambda: False):
    """{"acc", "acc_norm", "acc_norm_chars", "n"} of a benchmarks.ChoiceSet, its examples shared out over
    the processes and the counts summed; None, on every process, as soon as stop() is true on any."""
    groups, turns = _share(choice_batches(task.examples, batch_tokens), dist)
    total = torch.zeros(4, device=plan.device, dtype=torch.float64)  # examples, right by each of the three
    with _EvalMode(model):
        for k in range(turns):
            if runtime.any_process(stop(), dist, plan.device):
                return None
            if k >= len(groups):
                continue  # no group left here, but this process still votes, so the others never wait
            examples = [task.examples[i] for i in groups[k]]
            with plan.autocast_context():
                losses, tokens = choice_losses(model, examples)
            total[0] += len(examples)
            for m, right in enumerate(pick(examples, losses, tokens), 1):
                total[m] += right.sum()
    n, acc, acc_norm, acc_chars = runtime.all_reduce_sum(total, dist).tolist()
    return dict(acc=acc / n, acc_norm=acc_norm / n, acc_norm_chars=acc_chars / n, n=int(n))


# -----------------------------------------------------------------------------
# bits per byte


@torch.inference_mode()
def bits_per_byte(model, text, plan, dist, batch_tokens=4096, limit=0, stop=lambda: False):
    """{"bpb", "ppl", "tokens", "bytes"} of a benchmarks.TextSet under lm-evaluation-harness's rolling
    windows of the model's context (its first `limit` windows, 0: all): the summed loss of the scored
    targets in bits over the bytes of text they stand for, and the perplexity per token. Windows are
    shared out over the processes; None as soon as stop() is true on any."""
    block = model.config.block_size
    wins = benchmarks.windows(len(text.seq) - 1, block, limit)
    rows = max(1, batch_tokens // block)
    batches, turns = _share([wins[i:i + rows] for i in range(0, len(wins), rows)], dist)
    total = torch.zeros(3, device=plan.device, dtype=torch.float64)  # nats, tokens, bytes
    with _EvalMode(model):
        for k in range(turns):
            if runtime.any_process(stop(), dist, plan.device):
                return None
            if k >= len(batches):
                continue
            length = max(n for _, n, _ in batches[k])
            x = torch.zeros((len(batches[k]), length), dtype=torch.long)
            y = torch.full((len(batches[k]), length), -1, dtype=torch.long)
            nbytes = 0
            for r, (start, n, scored) in enumerate(batches[k]):
                x[r, :n] = torch.from_numpy(text.seq[start:start + n])
                first = start + n - scored  # index into the targets (seq[1:]) of the first one scored
                keep = torch.from_numpy(text.counted[first:start + n])
                y[r, n - scored:n] = torch.from_numpy(text.seq[first + 1:start + n + 1]).masked_fill(~keep, -1)
                nbytes += int(text.nbytes[first:start + n][text.counted[first:start + n]].sum())
            x, y = x.to(plan.device), y.to(plan.device)
            with plan.autocast_context():
                logits = model.all_logits(x)  # (rows, length, V)
            total[0] += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-1, reduction="sum")
            total[1] += (y >= 0).sum()
            total[2] += nbytes
    nats, tokens, nbytes = runtime.all_reduce_sum(total, dist).tolist()
    if tokens == 0:
        raise UserError(f"{text.name} has no scored token (its loss mask counts none)")
    return dict(bpb=nats / nbytes / math.log(2), ppl=math.exp(nats / tokens), tokens=int(tokens), bytes=int(nbytes))


# -----------------------------------------------------------------------------
# during training


class DuringTraining:
    """What train.py scores at each evaluation beside the loss: the byte length of every token id, for
    bits per byte (training.evaluate), and the multiple-choice sets named in eval_tasks (a
    comma-separated list, as eval.py's --tasks takes them), their figures named <set>_acc,
    <set>_acc_norm and <set>_acc_norm_chars in metrics.jsonl. Every set is read, tokenised and checked
    here, before training starts. Without GPT-2's tokenizer files (a BPE run on a machine that never
    had them) bits per byte is left out, with a warning, unless sets need the tokenizer too."""

    def __init__(self, meta, tasks, limit, block_size, vocab_size, device, warn=None, folder=None):
        from gptkit.tokenizer import load_tokenizer
        specs = [s.strip() for s in tasks.split(",") if s.strip()]
        for spec in specs:
            if spec in ("val", "train") or spec.startswith("text:"):
                raise UserError(f"eval_tasks={tasks}: {spec} is a bits-per-byte task of eval.py; eval_tasks takes "
                                f"multiple-choice sets (hellaswag, FILE.jsonl), and every evaluation logs train_bpb and "
                                f"val_bpb already", status=USAGE)
        try:
            tok = load_tokenizer(meta, folder)  # (folder: the data's, where a tokenizer.json lies)
        except UserError as e:
            if specs:
                raise
            if warn is not None:
                warn(f"warning: val_bpb is left out: {e}")
            tok = None
        self.token_bytes = None
        if tok is not None:
            # a BPE model's padded rows (50257 -> 50304) stand for no text
            lengths = tok.token_bytes() + [0] * (vocab_size - tok.vocab_size)
            self.token_bytes = torch.tensor(lengths, device=device)
        self.sets = [(benchmarks.metric_prefix(s), benchmarks.load_choices(s, tok, block_size, "val", limit))
                     for s in specs]
        names = [name for name, _ in self.sets]
        if len(set(names)) < len(names):
            raise UserError(f"eval_tasks={tasks} names two sets that would log under one name ({', '.join(names)}); "
                            f"give each file a name of its own")

    def score(self, model, plan, dist, batch_tokens, stop=lambda: False):
        """{"<set>_acc": ..., ...} of every set, or None when stopped."""
        out = {}
        for name, task in self.sets:
            figures = multiple_choice(model, task, plan, dist, batch_tokens, stop)
            if figures is None:
                return None
            out.update({f"{name}_{k}": v for k, v in figures.items() if k != "n"})
        return out

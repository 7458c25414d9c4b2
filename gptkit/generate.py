"""
Generation: the KV cache, sampling (temperature, top-k, top-p), streaming tokens with stop tokens and a
sliding window past block_size, and the CPU decode-speed choices (weight layout, thread count).
"""

import copy
import time
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn import functional as F


class KVCache:
    """Keys and values of every layer for positions [0, pos), preallocated up to block_size. The
    model's attention calls update(); model.forward advances pos."""

    @classmethod
    def for_model(cls, model, batch_size, device=None, dtype=None):
        cfg = model.config
        ref = model.lm_head.weight
        # key/value heads only: with grouped-query attention the cache is n_head / n_kv_head times smaller
        return cls(cfg.n_layer, batch_size, cfg.kv_heads, cfg.block_size, cfg.head_size,
                   device or ref.device, dtype or ref.dtype)

    def __init__(self, n_layer, batch_size, n_head, block_size, head_size, device, dtype):
        shape = (n_layer, batch_size, n_head, block_size, head_size)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # how many positions are filled

    def update(self, layer, k, v):
        """Store k, v (B, nh, T, hs) at the next T positions; return the keys and values so far."""
        T = k.size(2)
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        end = self.pos + T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def rows(self, index, room, length=None):
        """A new cache holding the rows `index` picks (a tensor; a row may be picked again), their first
        `length` positions (default: all so far), with room for `room` more: several continuations of
        one prefilled row then each run in a row of their own, from where its prefix ends."""
        length = self.pos if length is None else length
        picked = copy.copy(self)
        shape = list(self.k.shape)
        shape[1], shape[3] = len(index), length + room
        picked.k, picked.v = self.k.new_empty(shape), self.v.new_empty(shape)
        picked.k[:, :, :, :length] = self.k[:, :, :, :length].index_select(1, index)
        picked.v[:, :, :, :length] = self.v[:, :, :, :length].index_select(1, index)
        picked.pos = length
        return picked


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One token per row from (B, vocab) logits. temperature 0 is greedy; top_k keeps the k most
    likely tokens; top_p keeps the smallest set of most likely tokens whose probability reaches p
    (nucleus sampling, Holtzman et al. 2019)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the tokens ranked above
        sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)  # the set already reached p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


def decode_layout(model):
    """Store every Linear weight column-major (the transpose contiguous), in place, on CPU.
    Decoding one position multiplies a vector by each weight; this CPU BLAS streams the
    column-major layout about 1.5x faster (bench.py --mode=generate measures it). The values,
    parameter names, shapes and the code path stay the same; only the memory order changes."""
    # ordinary tensors even when called under inference mode, so the model can still be trained
    with torch.inference_mode(False), torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module.weight.device.type == "cpu" and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()  # also wte: the head is tied to it


class DecodeThreads:
    """Picks the CPU thread count for single-position decode steps by timing them. A decode step
    is a chain of small ops; when other processes keep the cores busy, every op's parallel region
    waits for a descheduled worker, and one thread measured 2-3x faster than two on a loaded
    2-core machine, while on an idle machine more threads stream the weights faster. So the first
    steps alternate between all threads and one, and the faster median wins. The very first step is
    left out: it pays for touching the cache's memory, whichever thread count runs it."""

    TRIALS = 3  # steps timed per candidate

    def __init__(self, device):
        self.original = torch.get_num_threads()
        cpu = torch.device(device).type == "cpu"
        self.candidates = [self.original, 1] if cpu and self.original > 1 else []
        self.times = {n: [] for n in self.candidates}
        self.chosen = None if self.candidates else self.original
        self.untimed = 1

    @contextmanager
    def step(self):
        if self.untimed:
            self.untimed -= 1
            yield
            return
        if self.chosen is not None:
            if torch.get_num_threads() != self.chosen:
                torch.set_num_threads(self.chosen)
            yield
            return
        n = min(self.candidates, key=lambda c: len(self.times[c]))  # take turns
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        yield
        self.times[n].append(time.perf_counter() - t0)
        if all(len(t) >= self.TRIALS for t in self.times.values()):
            self.chosen = min(self.candidates, key=lambda c: sorted(self.times[c])[self.TRIALS // 2])

    def restore(self):
        torch.set_num_threads(self.original)


# inference mode rather than no_grad: it also skips view and version-counter bookkeeping, about
# 2 ms of a ~40 ms decode step for the 124M model on a 2-core CPU
@torch.inference_mode()
def generate_stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                    generator=None, stop_tokens=()):
    """Yield the next token of every row, shape (B,), one step at a time.

    The prompt is prefilled once into a KV cache; each new token then costs one forward of a
    single position through the same attention code as training. When the sequence outgrows
    block_size the window slides: the cache is rebuilt from the last block_size tokens, which
    makes each token past that point cost one prefill and keeps the result identical to full
    recomputation (positions, learned or rotary, restart at 0 with the window, and every
    layer's keys depend on the tokens inside it, so cached keys cannot be reused). Stops early
    once every row has produced one of stop_tokens."""
    block = model.config.block_size
    if idx.device.type == "cpu" and not model.training:
        decode_layout(model)
    cache = KVCache.for_model(model, idx.size(0))
    logits, _ = model(idx[:, -block:], cache=cache)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
    threads = DecodeThreads(idx.device)
    try:
        for _ in range(max_new_tokens):
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
            yield nxt
            idx = torch.cat((idx, nxt[:, None]), dim=1)
            if len(stops):
                done |= torch.isin(nxt, stops)
                if bool(done.all()):
                    return
            if cache.pos < block:
                with threads.step():
                    logits, _ = model(nxt[:, None], cache=cache)
            else:  # slide the window
                cache.pos = 0
                logits, _ = model(idx[:, -block:], cache=cache)
    finally:
        threads.restore()


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None,
             use_cache=True):
    """Return idx extended by max_new_tokens sampled tokens. use_cache=False recomputes the
    whole (cropped) context for every token, as nanoGPT does: the reference for the cache."""
    if use_cache:
        new = list(generate_stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator))
        return torch.cat([idx] + [t[:, None] for t in new], dim=1)
    block = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block:])
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat((idx, nxt[:, None]), dim=1)
    return idx

"""
Generation: the KV cache, sampling (temperature, top-k, top-p), streaming tokens with stop tokens and a
sliding window past block_size, and the weight layout a CPU decodes fastest with (asked for by the caller,
as bench.py measured and recorded it for this CPU).

Generating never changes the model or the process: the layout is a context the scripts enter, and the
thread count is the caller's (torch.set_num_threads, OMP_NUM_THREADS).
"""

import copy
import json
import os
import time
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch.nn import functional as F

from gptkit import fileio, runtime
from gptkit.errors import UserError


class KVCache:
    """Keys and values of every layer for positions [0, pos), preallocated up to block_size. The
    model's attention calls update(); model.forward advances pos."""

    @classmethod
    def for_model(cls, model, batch_size, device=None, dtype=None, length=None):
        """A cache for up to `length` positions (default and at most: block_size; a model with a context
        of 128k tokens would otherwise reserve gigabytes for a reply of a hundred)."""
        cfg = model.config
        ref = model.transformer.wte.weight  # an embedding stays floating-point in an int8 model
        length = cfg.block_size if length is None else min(length, cfg.block_size)
        # key/value heads only: with grouped-query attention the cache is n_head / n_kv_head times smaller
        return cls(cfg.n_layer, batch_size, cfg.kv_heads, length, cfg.head_size,
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

    @classmethod
    def over(cls, k, v):
        """A cache, empty (pos 0), that keeps its keys and values in the given tensors (views of another
        cache's storage, say), each (n_layer, B, nh, block_size, hs)."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.pos = k, v, 0
        return cache

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


class SlotCache:
    """Keys and values of up to `slots` independent sequences, one a row, each at its own length: the
    cache that decodes many requests in one forward (gptkit/serving.py). A forward continues each of
    rows 0 .. n-1 from its own length (pos is their (n,) tensor, which the model reads as per-row
    positions and an attention mask per row). The rows in use are kept at the front, so a forward's
    keys and values are views of the storage, never copies; remove() moves the last row into the gap."""

    def __init__(self, model, slots):
        self.storage = KVCache.for_model(model, slots)
        self.k, self.v = self.storage.k, self.storage.v  # (n_layer, slots, nh, block_size, hs)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=self.k.device)
        self.n = 0  # rows in use

    @property
    def pos(self):
        return self.lengths[:self.n]

    @pos.setter
    def pos(self, value):  # the model's `cache.pos += t` after a forward
        self.lengths[:self.n] = value

    def update(self, layer, k, v):
        """Store k, v (n, nh, T, hs) after each row's own length; return every row's keys and values up
        to the longest row's end (the positions past a shorter row's end are masked by the model)."""
        B, _, T, _ = k.size()
        at = self.pos[:, None] + torch.arange(T, device=k.device)  # (n, T)
        rows = torch.arange(B, device=k.device)[:, None]
        self.k[layer][rows, :, at] = k.transpose(1, 2)  # (n, T, nh, hs)
        self.v[layer][rows, :, at] = v.transpose(1, 2)
        end = int(at.max()) + 1
        return self.k[layer, :B, :, :end], self.v[layer, :B, :, :end]

    def add(self):
        """Take the next free row; returns it and a KVCache over that row alone, empty, to prefill it
        with exactly the forward a single sequence gets (then set_length(row, its length))."""
        assert self.n < self.lengths.numel(), "no free row"
        row = self.n
        self.n += 1
        self.lengths[row] = 0
        return row, KVCache.over(self.k[:, row:row + 1], self.v[:, row:row + 1])

    def set_length(self, row, length):
        self.lengths[row] = length

    def remove(self, row):
        """Free a row: the last row in use moves into it (returns the index it came from)."""
        last = self.n - 1
        if row != last:
            n = int(self.lengths[last])
            self.k[:, row, :, :n] = self.k[:, last, :, :n]
            self.v[:, row, :, :n] = self.v[:, last, :, :n]
            self.lengths[row] = n
        self.n = last
        return last


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


def _linear_weights(model):
    """The CPU nn.Linear weights of model stored row-major (a tied head counts once)."""
    seen, weights = set(), []
    for module in model.modules():
        w = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and w.device.type == "cpu" and w.is_contiguous() and id(w) not in seen:
            seen.add(id(w))
            weights.append(w)
    return weights


def _relayout(weights, column_major):
    # ordinary tensors even when called under inference mode, so the model can still be trained
    with torch.inference_mode(False), torch.no_grad():
        for w in weights:
            w.data = w.data.t().contiguous().t() if column_major else w.data.contiguous()


@torch.inference_mode()
def _vector_pass_seconds(weights, passes=3):
    """Median time of multiplying one vector by every weight: what a decode step streams."""
    xs = {n: torch.randn(1, n, dtype=weights[0].dtype) for n in {w.size(1) for w in weights}}
    times = []
    for _ in range(passes + 1):  # the first pass pays for faulting pages in: not counted
        t0 = time.perf_counter()
        for w in weights:
            F.linear(xs[w.size(1)], w)
        times.append(time.perf_counter() - t0)
    return sorted(times[1:])[passes // 2]


def layout_record_path():
    """Where bench.py --mode=generate records the layout it timed: beside the CPU peaks (runtime.peak_cache_path)."""
    return os.path.join(os.path.dirname(runtime.peak_cache_path()), "decode_layout.json")


def _layout_key(weights):
    return (f"{runtime.cpu_model()}, {torch.get_num_threads()} threads, {str(weights[0].dtype).split('.')[-1]}, "
            f"torch {torch.__version__}")


def _read_records(path):
    try:
        with open(path) as f:
            seen = json.load(f)
        return seen if isinstance(seen, dict) else {}
    except (OSError, ValueError):
        return {}


def recorded_layout(model, record=None):
    """The layout bench.py --mode=generate timed faster on this CPU, at torch's thread count, the model's
    weight dtype and this torch version ('row' or 'column'); None where none was recorded."""
    weights = _linear_weights(model)
    if not weights:
        return None
    chosen = _read_records(record or layout_record_path()).get(_layout_key(weights))
    return chosen if chosen in ("row", "column") else None


def measure_layout(model, record=None):
    """Time both memory orders of model's CPU Linear weights (four passes over them each, plus two copies
    of every weight), and return (the faster, the file it was recorded in, or None where it could not be
    written): column-major only if at least 5% faster. decode_layout(layout='auto') then uses it on this
    CPU. The weights are row-major again afterwards."""
    weights = _linear_weights(model)
    if not weights:
        return "row", None
    row_s = _vector_pass_seconds(weights)
    _relayout(weights, column_major=True)
    try:
        chosen = "column" if _vector_pass_seconds(weights) <= 0.95 * row_s else "row"
    finally:
        _relayout(weights, column_major=False)
    path = record or layout_record_path()
    seen = _read_records(path)
    seen[_layout_key(weights)] = chosen
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with fileio.atomic_open(path, "w") as f:
            json.dump(seen, f, indent=1)
    except (OSError, UserError):
        return chosen, None
    return chosen, path


@contextmanager
def decode_layout(model, layout="auto", record=None):
    """For the block, the memory order of model's CPU Linear weights that multiplies a vector
    fastest; yields the one in use, 'row' (as stored) or 'column' (the transpose contiguous, the
    same values, names, shapes and tying). On leaving, every weight is row-major again.

    Some CPU BLAS libraries stream one order faster than the other in the matrix-vector products
    of a decode step (MKL on a 2-core AMD EPYC: see docs/cpu-inference.md), others do not. Timing both
    costs seconds, so it is done once, when asked (bench.py --mode=generate, measure_layout), and
    recorded for this CPU: layout='auto' uses that record, and row-major (as stored) where there is
    none. 'row' and 'column' force one. Models on other devices are left as they are."""
    assert layout in ("auto", "row", "column")
    weights = _linear_weights(model)
    if layout == "auto":
        layout = recorded_layout(model, record) or "row"
    if not weights or layout == "row":
        yield "row"
        return
    _relayout(weights, column_major=True)
    try:
        yield "column"
    finally:
        _relayout(weights, column_major=False)


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
    # made here, so every forward below gets inference tensors alike (a compiled model would
    # otherwise compile the sliding window's prefill a second time, for the tensor kind alone)
    idx = idx.clone()
    cache = KVCache.for_model(model, idx.size(0), length=idx.size(1) + max_new_tokens)
    # a copy with the strides of a fresh tensor (a view's row stride is the whole sequence's, even
    # for one row), so that one compiled graph serves every prefill
    logits, _ = model(idx[:, -block:].clone(memory_format=torch.contiguous_format), cache=cache)
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=idx.device)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)
        yield nxt
        idx = torch.cat((idx, nxt[:, None]), dim=1)
        if len(stops):
            done |= torch.isin(nxt, stops)
            if bool(done.all()):
                return
        if cache.pos < block:
            logits, _ = model(nxt[:, None], cache=cache)
        else:  # slide the window
            cache.pos = 0
            logits, _ = model(idx[:, -block:].clone(memory_format=torch.contiguous_format), cache=cache)


def compile_for_decoding(model, backend="inductor"):
    """(model compiled for generate_stream, None), or (model itself, why not) where compiling fails.

    Dynamic shapes, so one graph serves every prompt shorter than block_size, one a whole window, and
    one the single step at every cache length: decoding compiles three graphs and never again, past
    block_size included. All three are compiled here, so that the minute of compiling and any failure (inductor
    needs a C++ compiler on a CPU) come before the first token is printed, never amid the text.
    Call it where the decoding runs: inside the same autocast and decode_layout (the compiled graphs
    are guarded on them). It pays where a decode step is many small ops (a GPU, a small model on a
    CPU), not for GPT-2-sized matrix-vector products on a CPU (docs/gpu.md)."""
    compiled = torch.compile(model, dynamic=True, backend=backend)
    # a prompt length no cache dimension has: dynamo would tie the two sizes together in the graph
    # it compiles ("duck sizing"), and the next prompt length would compile another one
    cfg = model.config
    length = next(n for n in range(3, 1000) if n not in (cfg.n_layer, cfg.kv_heads, cfg.block_size, cfg.head_size))
    device = model.transformer.wte.weight.device
    try:
        # a shorter prompt and then a whole window (its own graph: a prompt of block_size or more, and
        # the window's prefill once it slides), each with a step after it
        for n in (length, cfg.block_size):
            for _ in generate_stream(compiled, torch.zeros(1, n, dtype=torch.long, device=device), 2, temperature=0):
                pass
    except Exception as e:  # noqa: BLE001  a compiler's failure takes many forms; decoding runs eagerly instead
        # dynamo wraps the backend's own error (inner_exception, or the cause): that one says what is wrong
        while getattr(e, "inner_exception", None) is not None or e.__cause__ is not None:
            e = getattr(e, "inner_exception", None) or e.__cause__
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        return model, f"{type(e).__name__}: {first_line}"
    return compiled, None


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Return idx extended by max_new_tokens sampled tokens, through the KV cache (model.generate
    recomputes the whole context for every token instead: the reference this is tested against)."""
    new = list(generate_stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator))
    return torch.cat([idx] + [t[:, None] for t in new], dim=1)

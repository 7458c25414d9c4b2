"""
Continuous batching: many requests decoded together, one token each per forward, by an engine that
knows nothing of HTTP (serve.py puts OpenAI's API in front of it).

Each request holds a row of a SlotCache with its own keys, values and length. Between two decode steps
the engine drops the requests that finished or were cancelled and admits one waiting request, whose
prompt is prefilled alone into its row (one prefill per step, so a long prompt delays the others by
one prefill, never by a queue of them). A decode step then forwards the last token of every row in one
batch: on a CPU that costs about what one row costs, since a step is bound by reading the weights.
Each request samples with its own generator, so it gets the tokens it would get decoded alone
(tests/test_serving.py checks greedy and seeded requests against generate_stream).

The engine runs in a thread of its own (start/stop) or is stepped by the caller (step); requests are
handed over through a lock, and a request's events reach its submitter through a callback, called on
the engine's thread.
"""

import secrets
import threading
import traceback
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from gptkit.generate import SlotCache, sample_next
from gptkit.tokenizer import StopText, StreamDecoder


class QueueFull(Exception):
    """The waiting queue is full: try again later."""


class NotRunning(Exception):
    """The engine is stopping (or not started) and takes no requests."""


@dataclass
class Params:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = None
    seed: int = None  # None: a fresh random seed
    stop: tuple = ()  # strings that end the text (left out of it)
    stop_tokens: tuple = ()  # token ids that end it (the end-of-text token)
    line_stop: object = None  # StopText's test for a line that ends the text (a play's speaker line)


class Request:
    """One prompt's generation. on_event(text, finish_reason) is called on the engine's thread with each
    piece of new text (finish_reason None), and once at the end with the last piece and 'stop',
    'length', 'cancelled' or 'error'. tokens holds the generated ids (a stop token included)."""

    def __init__(self, ids, params, tok, device, on_event):
        self.ids, self.params, self.on_event = list(ids), params, on_event
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.decoder, self.text = StreamDecoder(tok), StopText(params.stop, line_stop=params.line_stop)
        self.tokens = []
        self.finish_reason = None
        self.cancelled = False

    def cancel(self):
        """Leave at the engine's next step (safe from any thread)."""
        self.cancelled = True

    def _emit(self, text, finish_reason=None):
        try:
            self.on_event(text, finish_reason)
        except Exception:  # noqa: BLE001  a submitter that is gone (its event loop closed) must not stop the others
            self.cancelled = True


class Engine:
    """Decodes up to max_batch requests together; up to max_queue more wait for a free row."""

    def __init__(self, model, tok, max_batch=8, max_queue=32, autocast=nullcontext):
        self.model, self.tok, self.autocast = model, tok, autocast
        self.block_size = model.config.block_size
        self.device = model.transformer.wte.weight.device
        self.max_batch, self.max_queue = max_batch, max_queue
        with torch.inference_mode():
            self.slots = SlotCache(model, max_batch)
        self.live = []  # the requests in the slot cache's rows, in row order
        self.waiting = deque()
        self.lock = threading.Condition()
        self.thread, self.accepting = None, True

    # -------------------------------------------------------------------------
    # the submitter's side (any thread)

    def submit(self, ids, params, on_event):
        """Queue a prompt (token ids); returns its Request. Raises ValueError (a sentence) for a prompt
        that does not fit the context, QueueFull, or NotRunning while stopping."""
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.block_size:
            raise ValueError(f"the prompt is {len(ids)} tokens, but this model reads at most {self.block_size} "
                             f"(its context), the reply included; shorten it")
        request = Request(ids, params, self.tok, self.device, on_event)
        with self.lock:
            if not self.accepting:
                raise NotRunning("the server is stopping")
            if len(self.waiting) >= self.max_queue + self.max_batch - len(self.live):  # no free row, a full queue
                raise QueueFull(f"{len(self.live)} requests are being answered and {len(self.waiting)} are waiting, "
                                f"the most this server queues")
            self.waiting.append(request)
            self.lock.notify()
        return request

    def counts(self):
        """(requests decoding, requests waiting)."""
        with self.lock:
            return len(self.live), len(self.waiting)

    # -------------------------------------------------------------------------
    # the engine's side

    @torch.inference_mode()
    def step(self):
        """Drop finished and cancelled requests, admit one waiting request, decode one token for every
        request. Returns False when there was nothing to do."""
        self._drop_finished()
        with self.lock:
            admit = self.waiting.popleft() if self.waiting and len(self.live) < self.max_batch else None
        if admit is not None and not admit.cancelled:
            self._prefill(admit)
            self._drop_finished()
        elif admit is not None:
            admit.finish_reason = "cancelled"
            admit._emit("", "cancelled")
        if not self.live:
            return admit is not None
        last = torch.tensor([[r.tokens[-1]] for r in self.live], dtype=torch.long, device=self.device)
        with self.autocast():
            logits, _ = self.model(last, cache=self.slots)  # (n, 1, vocab)
        for i, r in enumerate(self.live):
            self._take(r, logits[i:i + 1, -1, :])
        return True

    def _prefill(self, r):
        row, cache = self.slots.add()
        x = torch.tensor([r.ids], dtype=torch.long, device=self.device)
        with self.autocast():
            logits, _ = self.model(x, cache=cache)  # (1, 1, vocab)
        self.slots.set_length(row, len(r.ids))
        with self.lock:
            self.live.append(r)
        self._take(r, logits[:, -1, :])

    def _take(self, r, logits):
        """Sample r's next token from its (1, vocab) logits, pass on its text, and see if r is done."""
        p = r.params
        token = int(sample_next(logits, p.temperature, p.top_k, p.top_p, r.generator)[0])
        r.tokens.append(token)
        shown = ""
        if token in p.stop_tokens:
            r.finish_reason = "stop"
        else:
            shown = r.text.push(r.decoder.push(token))
            if r.text.stopped:
                r.finish_reason = "stop"
            elif len(r.tokens) >= p.max_tokens or len(r.ids) + len(r.tokens) >= self.block_size:
                r.finish_reason = "length"  # (a full context: the window does not slide as in sample.py)
        if r.finish_reason is None:
            r._emit(shown)
        else:
            r._emit(shown + r.text.flush(), r.finish_reason)

    def _drop_finished(self):
        for i in reversed(range(len(self.live))):
            r = self.live[i]
            if r.finish_reason is None and r.cancelled:
                r.finish_reason = "cancelled"
                r._emit("", "cancelled")
            if r.finish_reason is not None:
                moved = self.slots.remove(i)
                with self.lock:
                    self.live[i] = self.live[moved]
                    self.live.pop()

    def run(self):
        """Step until stop() is called and no request is left. A step that fails (out of memory, say) ends
        the requests under way with finish_reason 'error', and the engine goes on with the next ones."""
        while True:
            with self.lock:
                while not self.live and not self.waiting:
                    if not self.accepting:
                        return
                    self.lock.wait()
            try:
                self.step()
            except Exception:  # noqa: BLE001  one failing step must not leave every waiting client hanging
                traceback.print_exc()
                for r in self.live:
                    r.finish_reason = "error"
                    r._emit("", "error")
                with self.lock:
                    self.live.clear()
                self.slots.n = 0

    def start(self):
        self.thread = threading.Thread(target=self.run, name="serving-engine", daemon=True)
        self.thread.start()

    def stop(self, grace=5.0):
        """Take no more requests; let those in flight finish for up to `grace` seconds, then cancel them."""
        with self.lock:
            self.accepting = False
            self.lock.notify()
        if self.thread is None:
            return
        self.thread.join(grace)
        with self.lock:
            for r in [*self.live, *self.waiting]:
                r.cancel()
            self.lock.notify()
        self.thread.join()

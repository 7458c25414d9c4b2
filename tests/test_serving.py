"""The batching engine (gptkit/serving.py) against decoding each request alone (generate_stream): the same
tokens for greedy and seeded requests, whatever joins or leaves the batch around them."""

import pytest
import torch

from gptkit.generate import generate_stream
from gptkit.serving import Engine, Params, QueueFull
from gptkit.tokenizer import CharTokenizer
from model import GPT, GPTConfig

VOCAB = 97
TOK = CharTokenizer({"stoi": {chr(32 + i): i for i in range(VOCAB)}, "itos": {i: chr(32 + i) for i in range(VOCAB)},
                     "vocab_size": VOCAB})
ARCHS = {"gpt2": {}, "llama-like": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, qk_norm=True)}


def tiny(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=48, vocab_size=VOCAB, n_layer=2, n_head=4, n_embd=32, **kw)).eval()


def alone(model, ids, n, temperature=0.0, seed=0, stop_tokens=()):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for t in generate_stream(model, torch.tensor([ids]), n, temperature, None, 0.9 if temperature else None,
                             generator):
        out.append(int(t[0]))
        if out[-1] in stop_tokens:
            break
    return out


def drain(engine):
    while engine.step():
        pass
    assert engine.slots.n == 0 and engine.counts() == (0, 0)


PROMPTS = [[5, 6, 7], list(range(10, 30)), [42], list(range(60, 69)), [1, 2, 3, 4, 5]]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_each_request_gets_the_tokens_it_would_get_alone(arch, temperature):
    """Five requests through three rows: they wait, join between steps (one mid-way through the others'
    decoding), have different prompt lengths, and leave at different times (their own max_tokens)."""
    model = tiny(**ARCHS[arch])
    engine = Engine(model, TOK, max_batch=3, max_queue=8)
    lengths = [20, 7, 25, 12, 16]
    requests = []
    for i, (ids, n) in enumerate(zip(PROMPTS, lengths)):
        requests.append(engine.submit(ids, Params(max_tokens=n, temperature=temperature, top_p=0.9, seed=i),
                                      lambda text, finish: None))
        for _ in range(i):  # the later ones arrive while the earlier ones are decoding
            engine.step()
    drain(engine)
    for i, (r, ids, n) in enumerate(zip(requests, PROMPTS, lengths)):
        assert r.tokens == alone(model, ids, n, temperature, seed=i), i
        assert r.finish_reason == "length"


def test_a_stopped_or_cancelled_request_leaves_and_the_others_go_on_unchanged():
    model = tiny()
    expected = [alone(model, ids, 20) for ids in PROMPTS[:3]]
    stop = expected[0][4]  # request 0 ends at its fifth token (or earlier, where that token comes sooner)
    engine = Engine(model, TOK, max_batch=4, max_queue=4)
    events = []
    first = engine.submit(PROMPTS[0], Params(max_tokens=20, temperature=0, stop_tokens=(stop,)),
                          lambda text, finish: events.append((text, finish)))
    cancelled = engine.submit(PROMPTS[1], Params(max_tokens=20, temperature=0), lambda text, finish: None)
    last = engine.submit(PROMPTS[2], Params(max_tokens=20, temperature=0), lambda text, finish: None)
    for _ in range(6):
        engine.step()
    cancelled.cancel()
    drain(engine)
    assert first.tokens == expected[0][:expected[0].index(stop) + 1] and first.finish_reason == "stop"
    assert events[-1][1] == "stop" and all(f is None for _, f in events[:-1])
    assert "".join(t for t, _ in events) == TOK.decode(first.tokens[:-1])  # the stop token is not text
    assert cancelled.finish_reason == "cancelled" and cancelled.tokens == expected[1][:len(cancelled.tokens)]
    assert last.tokens == expected[2]


def test_stop_strings_cut_the_text_and_end_the_request():
    model = tiny()
    full = TOK.decode(alone(model, PROMPTS[3], 30))
    stop = full[10:12]
    events = []
    engine = Engine(model, TOK, max_batch=2, max_queue=0)
    r = engine.submit(PROMPTS[3], Params(max_tokens=30, temperature=0, stop=(stop,)),
                      lambda text, finish: events.append((text, finish)))
    drain(engine)
    assert "".join(t for t, _ in events) == full[:full.index(stop)] and r.finish_reason == "stop"


def test_a_full_queue_and_a_prompt_past_the_context_are_refused():
    engine = Engine(tiny(), TOK, max_batch=2, max_queue=1)
    for ids in PROMPTS[:3]:  # two free rows and one place in the queue
        engine.submit(ids, Params(max_tokens=5), lambda text, finish: None)
    with pytest.raises(QueueFull):
        engine.submit(PROMPTS[3], Params(max_tokens=5), lambda text, finish: None)
    with pytest.raises(ValueError, match="48"):
        engine.submit(list(range(48)), Params(max_tokens=5), lambda text, finish: None)
    drain(engine)


def test_a_request_ends_when_the_context_is_full_with_the_tokens_of_decoding_alone():
    model = tiny()
    ids = list(range(40))
    engine = Engine(model, TOK, max_batch=2, max_queue=0)
    r = engine.submit(ids, Params(max_tokens=100, temperature=0), lambda text, finish: None)
    drain(engine)
    assert len(ids) + len(r.tokens) == 48 and r.finish_reason == "length"
    assert r.tokens == alone(model, ids, 8)


def test_the_engine_thread_answers_and_stops():
    engine = Engine(tiny(), TOK, max_batch=2, max_queue=2)
    engine.start()
    done = []
    r = engine.submit(PROMPTS[0], Params(max_tokens=5, temperature=0), lambda text, finish: done.append(finish))
    engine.stop(grace=10.0)
    assert r.finish_reason == "length" and done[-1] == "length" and not engine.thread.is_alive()


@pytest.mark.slow
def test_bench_serve_mode_reports_every_client_count():
    import json

    from conftest import run
    p = run("bench.py", "--mode=serve", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32",
            "--vocab_size=97", "--prompt_len=4", "--new_tokens=8", "--repeats=1", "--warmup=0", "--clients=(1, 3)",
            "--client_requests=2")
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert [r["clients"] for r in report["results"]] == [1, 3] and report["results"][0]["vs_one_client"] == 1.0
    assert all(r["tok_s"] > 0 and 0 < r["ttft_p50_s"] <= r["ttft_p90_s"] for r in report["results"])

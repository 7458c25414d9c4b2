"""Generation beyond the model: stop tokens and strings, the decode-time weight layout, generation
leaving the model and the process as it found them, and sample.py on Hugging Face GPT-2 folders
checked against transformers' own generate."""

import json

import pytest
import torch

from conftest import run
from gptkit import conversation
from gptkit.generate import decode_layout, generate_stream
from gptkit.tokenizer import StopText, StreamDecoder
from model import GPT, GPTConfig


def tiny(**kw):
    args = dict(block_size=32, vocab_size=97, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)
    args.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args)).eval()


def test_stop_text_holds_back_a_possible_stop_and_cuts_at_it():
    s = StopText(["\nA:"])
    shown = [s.push(c) for c in "hi\nthere\nA: more"]
    assert "".join(shown) == "hi\nthere" and s.stopped and s.text == "hi\nthere"
    assert shown[2] == ""  # "\n" might begin "\nA:", so it waits for the next character
    s = StopText(["\nA:"])
    assert s.push("yo\n") == "yo" and s.flush() == "\n" and not s.stopped


def test_stop_tokens_end_the_stream_once_every_row_has_one():
    model = tiny()
    prompt = torch.randint(0, 97, (2, 5))
    free = torch.stack(list(generate_stream(model, prompt, 12, temperature=0)))  # (12, B)
    stop = int(free[3, 0])  # row 0 produces this token at step 3 at the latest
    steps = list(generate_stream(model, prompt, 12, temperature=0, stop_tokens=[stop]))
    first = [int((free[:, b] == stop).nonzero()[0]) if (free[:, b] == stop).any() else 11 for b in range(2)]
    assert len(steps) == max(first) + 1
    assert torch.equal(torch.stack(steps), free[:len(steps)])


def layout_of(model):
    return {k: (v.stride(), v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}


def test_generation_leaves_the_model_and_the_thread_count_as_they_were():
    model = tiny()
    before, threads = layout_of(model), torch.get_num_threads()
    stream = generate_stream(model, torch.randint(0, 97, (1, 4)), 20, temperature=0)
    for i, _ in enumerate(stream):
        assert torch.get_num_threads() == threads  # also while the caller holds a token
        if i == 5:
            break
    stream.close()  # abandoned half-way, as a reader that stops early leaves it
    list(generate_stream(model, torch.randint(0, 97, (2, 4)), 40, temperature=0))  # past block_size too
    after = layout_of(model)
    assert torch.get_num_threads() == threads
    for k, (stride, ptr, value) in before.items():
        assert after[k][:2] == (stride, ptr) and torch.equal(after[k][2], value), k


def test_decode_layout_is_column_major_inside_and_row_major_after():
    model = tiny()
    idx = torch.randint(0, 97, (2, 20))
    ref = model.all_logits(idx)
    before = layout_of(model)
    with decode_layout(model, "column") as layout:
        assert layout == "column"
        w = model.lm_head.weight
        assert w.t().is_contiguous() and not w.is_contiguous() and w is model.transformer.wte.weight  # still tied
        inside = model.all_logits(idx)
    torch.testing.assert_close(inside, ref, atol=1e-5, rtol=0)
    for k, (stride, _, value) in before.items():
        v = model.state_dict()[k]
        assert v.stride() == stride and torch.equal(v, value), k
    assert all(v.stride() == before[k][0] for k, v in model.state_dict().items())
    with pytest.raises(KeyError), decode_layout(model, "column"):
        raise KeyError  # an error inside the block restores the layout too
    assert all(v.stride() == before[k][0] for k, v in model.state_dict().items())


def test_decode_layout_auto_uses_what_was_measured_and_recorded_and_never_times(tmp_path, monkeypatch):
    """'auto' is row-major (as stored) until measure_layout (bench.py --mode=generate) has recorded this
    CPU's faster order, then that one; entering it never times anything."""
    from gptkit import generate
    model, record = tiny(), tmp_path / "decode_layout.json"
    before = layout_of(model)
    measured = []
    timer = generate._vector_pass_seconds
    monkeypatch.setattr(generate, "_vector_pass_seconds", lambda w: measured.append(1) or timer(w))
    with decode_layout(model, record=record) as chosen:
        assert chosen == "row" and model.lm_head.weight.is_contiguous()
    assert measured == []
    choice, where = generate.measure_layout(model, record=record)
    assert choice in ("row", "column") and where == record and len(measured) == 2
    assert all(v.stride() == before[k][0] for k, v in model.state_dict().items())  # row-major again
    for recorded in ("column", "row"):
        key, = json.loads(record.read_text())
        record.write_text(json.dumps({key: recorded}))
        with decode_layout(model, record=record) as chosen:
            assert chosen == recorded and model.lm_head.weight.t().is_contiguous() == (recorded == "column")
    assert len(measured) == 2
    with decode_layout(model.to(torch.bfloat16), record=record) as chosen:  # another dtype: no record
        assert chosen == "row"


def test_stream_decoder_holds_back_a_split_multibyte_character():
    class Bytes:  # a byte-level tokenizer: a character outside ASCII spans several tokens
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")
    ids = list("né東!".encode("utf-8"))  # n, two bytes of é, three of 東, !
    d = StreamDecoder(Bytes())
    shown = [d.push(i) for i in ids]
    assert shown == ["n", "", "é", "", "", "東", "!"]
    assert "".join(shown) == "né東!"


def test_chat_transcript_drops_the_oldest_turns_to_fit():
    t = conversation.Transcript(user="A: ", bot="B: ", sep="\n", preamble="P\n")
    turns = [("one", "uno"), ("two", "dos"), ("three", "tres")]
    encode = lambda text: list(text)  # noqa: E731  (one token per character)
    full = t.render(turns, "four")
    assert full == "P\nA: one\nB: uno\nA: two\nB: dos\nA: three\nB: tres\nA: four\nB: "
    assert t.fit(encode, turns, "four", len(full)) == list(full)  # fits: nothing dropped
    # one token short: the oldest turn goes, the rest stays whole
    assert "".join(t.fit(encode, turns, "four", len(full) - 1)) == t.render(turns[1:], "four")
    assert "".join(t.fit(encode, turns, "four", len(t.render(turns[2:], "four")))) == t.render(turns[2:], "four")
    # no turn left to drop and still too long: the end of the line is kept, next to the reply
    assert "".join(t.fit(encode, turns, "x" * 50, 20)) == ("x" * 50 + "\nB: ")[-20:]


def hf_folder(path):
    """A tiny random GPT-2 in Hugging Face's format (GPT-2's weights cannot be downloaded here)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).eval()
    hf.save_pretrained(path)
    return hf


@pytest.mark.slow
def test_sample_from_a_hugging_face_folder_matches_transformers(tmp_path, gpt2_encoding):
    hf = hf_folder(tmp_path / "hf")
    enc = gpt2_encoding
    prompt = "The cat sat on"
    ids = torch.tensor([enc.encode(prompt)])
    with torch.no_grad():
        ref = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)[0, ids.size(1):]
    args = [f"--init_from={tmp_path / 'hf'}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=20",
            "--temperature=0", "--device=cpu", "--stop_at_eot=False"]
    p = run("sample.py", *args)
    text = p.stdout.split("\n---------------")[0]
    assert text == prompt + enc.decode(ref.tolist())  # greedy through the KV cache = transformers' tokens
    # a stop string cuts the sample before it; with stop_at_eot the <|endoftext|> token ends a sample
    cut = enc.decode(ref.tolist()[4:6])
    p = run("sample.py", *args, f"--stop=({cut!r},)")
    stopped = p.stdout.split("\n---------------")[0]
    assert stopped == text[:text.index(cut)]


# -----------------------------------------------------------------------------
# compiled decoding (dynamo's own tracing checked with its "eager" backend: graph breaks and recompiles are
# decided before any backend builds code, and this backend costs no C++ compilation)

def test_compiled_decoding_compiles_three_graphs_without_graph_breaks_and_equals_eager_past_block_size():
    import torch._dynamo
    from torch._dynamo.utils import counters

    from gptkit.generate import compile_for_decoding
    for options in ({}, dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1)):
        model = tiny(**options)
        prompt = torch.randint(0, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
        expected = torch.stack(list(generate_stream(model, prompt, 40, temperature=0)))  # 40 > block_size: it slides
        torch._dynamo.reset()
        counters.clear()
        compiled, failure = compile_for_decoding(model, backend="eager")
        assert failure is None and compiled is not model
        warm_graphs = counters["stats"]["unique_graphs"]
        # at most a shorter prompt, a whole window and a single step (some architectures need no second)
        assert 2 <= warm_graphs <= 3, dict(counters["stats"])
        got = torch.stack(list(generate_stream(compiled, prompt, 40, temperature=0)))
        assert torch.equal(got, expected)
        # a new prompt length, every cache length, and the window's prefills past block_size: no new graph
        assert counters["stats"]["unique_graphs"] == warm_graphs, dict(counters["stats"])
        assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()



def test_a_compiler_that_fails_leaves_decoding_uncompiled_with_one_line_and_prints_nothing(capsys):
    import torch._dynamo

    from gptkit.generate import compile_for_decoding

    def broken(graph, example_inputs):  # as inductor fails where no C++ compiler is installed
        raise RuntimeError("no C++ compiler found\nmore detail")

    model = tiny()
    torch._dynamo.reset()
    try:
        got, failure = compile_for_decoding(model, backend=broken)
    finally:
        torch._dynamo.reset()
    assert got is model  # the model itself, eager, unchanged
    assert "\n" not in failure and "no C++ compiler found" in failure
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # the script decides what to say (sample.py: a note on stderr)

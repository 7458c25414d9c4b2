"""Data past nanoGPT's two bins: a byte-level BPE trained on the corpus (round trip, special tokens, and
every script using it), sharded datasets (the tokens and batches of the single-file bins, a killed
prepare continued to the same bytes), aligned and epoch batches (a pure function of seed, iteration
and micro-step: the same across a resume and across processes), and bad input as one sentence."""

import json
import pickle
import runpy
import shutil
import signal
import time

import numpy as np
import pytest
import torch

from conftest import CORPUS, ROOT, TINY, assert_clean_error, read_metrics, run, start
from gptkit import dataset, loading, shard_writer
from gptkit.batches import Batches
from gptkit.documents import text_pieces
from gptkit.errors import UserError
from gptkit.generate import generate
from gptkit.tokenizer import MIN_VOCAB, SPECIAL_TOKENS, TrainedTokenizer, load_tokenizer, train_bpe

pytest.importorskip("tokenizers")


def prepare(script, *args):
    """A prepare script's main(argv), run in this process: a UserError is raised, not printed."""
    runpy.run_path(str(ROOT / script))["main"]([str(a) for a in args])


def documents(n, seed=0):
    """n documents cut from the tests' corpus at random places and lengths, some with non-ASCII text."""
    text = CORPUS.read_text(encoding="utf-8")
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        start = int(rng.integers(0, len(text) - 2000))
        docs.append(text[start:start + int(rng.integers(1, 2000))] + (" — naïve café 東京\n" if i % 3 == 0 else ""))
    return docs


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    """150 documents (about 150 KB): the first half as lines of a .jsonl file, the rest as .txt files."""
    folder = tmp_path_factory.mktemp("docs")
    docs = documents(150)
    with open(folder / "a.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs[:75])
    for i, d in enumerate(docs[75:]):
        (folder / f"b{i:03d}.txt").write_text(d, encoding="utf-8")
    return folder, docs


def tokens(folder, split):
    """A split's tokens, from its .bin or its shards (without their headers)."""
    manifest = json.loads((folder / "dataset.json").read_text())
    dtype = np.dtype(manifest["dtype"])
    if "shards" not in manifest:
        return np.fromfile(folder / f"{split}.bin", dtype=dtype)
    return np.concatenate([np.fromfile(folder / s["file"], dtype=dtype)[dataset.HEADER_BYTES // dtype.itemsize:]
                           for s in manifest["shards"][split]])


# -----------------------------------------------------------------------------
# the trained tokenizer

def test_bpe_merges_the_most_frequent_pairs_first_as_worked_out_by_hand():
    # words "ab" once and " ab" three times (the space is a byte of its word): the pair (a, b) occurs 4
    # times, so it is merged first; then (" ", ab) 3 times. Two merges past the bytes and specials.
    tok = train_bpe(["ab ab ab ab"], MIN_VOCAB + 2)
    assert [tok.decode([i]) for i in tok.encode("ab ab")] == ["ab", " ab"]
    assert len(tok.encode("ba")) == 2  # never merged


def test_trained_tokenizer_round_trips_any_text_and_keeps_special_tokens_whole():
    text = CORPUS.read_text(encoding="utf-8")[:200_000]
    tok = train_bpe(text_pieces(text, 50_000), 512)
    again = train_bpe(text_pieces(text, 50_000), 512)
    assert tok.json == again.json and tok.vocab_size == 512  # the same text gives the same file, byte for byte
    assert len(tok.encode(text[:5000])) < 5000 / 2  # merges learnt: fewer than half as many tokens as bytes
    for s in ["ROMEO:\nO sweet love, naïve café 東京 🙂\t\r\n  x", "", "\x00\xff", text[-3000:]]:
        assert tok.decode(tok.encode(s)) == s
    ids = [tok.encode(m) for m in SPECIAL_TOKENS]
    assert ids == [[0], [1], [2]] and tok.eot == 0
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>"
    assert tok.encode(prompt).count(1) == 1 and tok.decode(tok.encode(prompt)) == prompt
    # in training documents the markers are text: a document cannot fake its own end
    plain = tok.encode_ordinary("a <|endoftext|> b")
    assert tok.eot not in plain and tok.decode(plain) == "a <|endoftext|> b"
    # transformers reads the same file and makes the same ids (what an export's tokenizer does)
    from gptkit import hf
    fast = hf.fast_tokenizer(tok)
    for s in [prompt, text[:2000]]:
        assert fast(s)["input_ids"] == tok.encode(s)
    assert fast.eos_token_id == tok.eot


def test_a_vocabulary_too_small_or_too_large_for_the_corpus_is_one_sentence_and_writes_nothing(tmp_path):
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be, that is the question\n" * 50)
    for size, words in [(100, f"use at least {MIN_VOCAB}"), (5000, "is more than this text supports")]:
        with pytest.raises(UserError, match=words) as e:
            prepare("data/corpus/prepare.py", small, "--tokenizer=bpe", f"--vocab_size={size}",
                    f"--out={tmp_path / 'o'}")
        assert e.value.status == 2
    assert not (tmp_path / "o").exists()  # refused before the output folder was touched


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe-data")
    prepare("data/corpus/prepare.py", CORPUS, "--tokenizer=bpe", "--vocab_size=384", f"--out={folder}")
    return folder


def test_corpus_in_a_trained_bpe_splits_the_text_and_records_the_tokenizer(bpe_data):
    tok = load_tokenizer(dataset.read_meta(str(bpe_data)), str(bpe_data))
    manifest = json.loads((bpe_data / "dataset.json").read_text())
    assert manifest["files"]["tokenizer.json"]["sha256"] == tok.sha256 and manifest["tokenizer"] == tok.id
    text = CORPUS.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)  # the first 90% of the text is train, cut before tokenizing
    assert tok.decode(tokens(bpe_data, "train").tolist()) == text[:cut]
    assert tok.decode(tokens(bpe_data, "val").tolist()) == text[cut:] + "<|endoftext|>"


def test_another_corpus_in_the_same_trained_tokenizer(bpe_data, tmp_path):
    (tmp_path / "more.txt").write_text("More text, naïve and new.\n" * 300, encoding="utf-8")
    prepare("data/corpus/prepare.py", tmp_path / "more.txt", "--tokenizer=bpe", f"--vocab_from={bpe_data}",
            f"--out={tmp_path / 'more'}")
    assert (tmp_path / "more" / "tokenizer.json").read_bytes() == (bpe_data / "tokenizer.json").read_bytes()
    assert dataset.same_vocabulary(dataset.read_meta(str(tmp_path / "more")), dataset.read_meta(str(bpe_data)))
    with pytest.raises(UserError, match="holds no trained tokenizer") as e:
        prepare("data/corpus/prepare.py", tmp_path / "more.txt", "--tokenizer=bpe", f"--vocab_from={tmp_path}")
    assert e.value.status == 2


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, bpe_data):
    out = tmp_path_factory.mktemp("bpe-run")
    run("train.py", f"--data_dir={bpe_data}", *TINY, "--max_iters=30", "--eval_interval=30", "--eval_iters=1",
        "--learning_rate=1e-2", "--warmup_iters=0", f"--out_dir={out}")
    return out


@pytest.mark.slow
def test_a_run_carries_its_trained_tokenizer_to_sample_and_the_transformers_pipeline(bpe_data, bpe_run, tmp_path):
    assert (bpe_run / "tokenizer.json").read_bytes() == (bpe_data / "tokenizer.json").read_bytes()
    shutil.move(bpe_data / "tokenizer.json", tmp_path / "moved")  # the run needs nothing of the dataset
    try:
        model, tok, _ = loading.load_for_inference("resume", str(bpe_run))
        assert isinstance(tok, TrainedTokenizer) and model.config.vocab_size == tok.vocab_size == 384
        prompt = "ROMEO:\nO sweet"
        ids = torch.tensor([tok.encode(prompt)])
        new = generate(model, ids, 12, temperature=0)[0, ids.size(1):].tolist()
        new = new[:new.index(tok.eot)] if tok.eot in new else new
        expected = prompt + tok.decode(new)
        p = run("sample.py", f"--out_dir={bpe_run}", f"--start={prompt}", "--num_samples=1", "--max_new_tokens=12",
                "--temperature=0", "--device=cpu")
        assert p.stdout.split("\n---------------")[0] == expected

        transformers = pytest.importorskip("transformers")
        run("export.py", f"--out_dir={bpe_run}", f"--export_dir={tmp_path / 'hf'}")
        gen = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
        assert gen(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"] == expected
        text = "<|im_start|>user\nnaïve café<|im_end|>\n" + CORPUS.read_text(encoding="utf-8")[:500]
        assert gen.tokenizer(text)["input_ids"] == tok.encode(text)
        # llama.cpp's file carries the run's own tokenizer, token for token
        gguf = pytest.importorskip("gguf")
        run("export.py", f"--out_dir={bpe_run}", "--format=gguf", f"--gguf_file={tmp_path / 'm.gguf'}")
        tokens = gguf.GGUFReader(tmp_path / "m.gguf").fields["tokenizer.ggml.tokens"].contents()
        assert tokens == [tok.tok.id_to_token(i) for i in range(tok.vocab_size)]
    finally:
        shutil.move(tmp_path / "moved", bpe_data / "tokenizer.json")
    # the same corpus prepared again with another tokenizer of the same size: the run's ids would mean other text
    other = tmp_path / "other"
    prepare("data/corpus/prepare.py", CORPUS, "--tokenizer=bpe", "--vocab_size=384", "--val_fraction=0.2",
            f"--out={other}")
    p = run("train.py", "--init_from=resume", f"--out_dir={bpe_run}", f"--data_dir={other}", "--max_iters=31",
            check=False)
    assert_clean_error(p, status=2, words=["a trained tokenizer of 384 (the same size, other tokens)"])


def test_chat_data_in_a_trained_tokenizer_has_its_markers_as_special_tokens(bpe_data, tmp_path):
    src = tmp_path / "convs.jsonl"
    src.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"},
                                                     {"role": "assistant", "content": f"{i}, café"}]}) + "\n"
                           for i in range(20)))
    prepare("data/chat/prepare.py", src, f"--vocab_from={bpe_data}", f"--out={tmp_path / 'chat'}")
    tok = load_tokenizer(dataset.read_meta(str(tmp_path / "chat")), str(tmp_path / "chat"))
    assert tok.sha256 == load_tokenizer(dataset.read_meta(str(bpe_data)), str(bpe_data)).sha256
    ids, mask = tokens(tmp_path / "chat", "train"), np.fromfile(tmp_path / "chat" / "train_mask.bin", np.uint8)
    first = ids[:list(ids).index(tok.eot) + 1].tolist()
    assert tok.decode(first) == ("<|im_start|>user\nsay 0<|im_end|>\n<|im_start|>assistant\n0, café<|im_end|>\n"
                                 "<|endoftext|>")
    assert first.count(1) == 2 and first.count(2) == 2  # <|im_start|> and <|im_end|>: one token each, twice
    counted = [t for t, m in zip(first, mask) if m]
    assert tok.decode(counted) == "0, café<|im_end|>\n"  # the reply and its end marker, nothing else


# -----------------------------------------------------------------------------
# shards

@pytest.fixture(scope="module")
def sharded(docs_folder, tmp_path_factory):
    """The documents in a trained BPE, as shards of 3,000 tokens and as nanoGPT's single files."""
    src, _ = docs_folder
    root = tmp_path_factory.mktemp("sharded")
    common = [f"--input={src}", "--tokenizer=bpe", "--vocab_size=400", "--val_fraction=0.1", "--batch_mb=0.02"]
    prepare("data/openwebtext/prepare.py", *common, "--shard_tokens=3000", f"--out={root / 'shards'}")
    prepare("data/openwebtext/prepare.py", *common, "--shard_tokens=0", f"--out={root / 'one'}")
    return root / "shards", root / "one"


def test_shards_hold_the_documents_and_the_tokens_of_the_single_file_bins(sharded, docs_folder):
    shards, one = sharded
    _, docs = docs_folder
    manifest = json.loads((shards / "dataset.json").read_text())
    assert len(manifest["shards"]["train"]) > 10 and all(s["tokens"] == 3000 for s in manifest["shards"]["train"][:-1])
    assert (shards / "tokenizer.json").read_bytes() == (one / "tokenizer.json").read_bytes()
    tok = load_tokenizer(dataset.read_meta(str(shards)), str(shards))
    for split in dataset.SPLITS:
        assert np.array_equal(tokens(shards, split), tokens(one, split))
    # every 10th document is val, each followed by <|endoftext|>, in their order
    assert tok.decode(tokens(shards, "val").tolist()) == "".join(d + "<|endoftext|>" for d in docs[9::10])
    train = [d for i, d in enumerate(docs) if i % 10 != 9]
    assert tok.decode(tokens(shards, "train").tolist()) == "".join(d + "<|endoftext|>" for d in train)


@pytest.mark.parametrize("sampling,align", [("random", "none"), ("epoch", "none"), ("random", "doc"), ("epoch", "doc")])
def test_sharded_data_draws_the_batches_of_the_single_file(sharded, sampling, align):
    shards, one = sharded
    a, b = (Batches(str(f), "x", 64, 4, 7, "cpu", sampling=sampling, align=align, micro_steps=2)
            for f in (shards, one))
    assert len(b.data["train"].parts) == 1 and len(a.data["train"].parts) > 10
    crossed = 0
    for it in range(40):
        for m in range(2):
            assert torch.equal(a.train_batch(it, m)[0], b.train_batch(it, m)[0])
            crossed += sum(i // 3000 != (i + 64) // 3000 for i in a._train_offsets(it, m))
    assert crossed > 0  # rows that span two shards were among them
    for k in range(3):
        assert torch.equal(a.eval_batch("val", k)[1], b.eval_batch("val", k)[1])


def snapshot(folder):
    return {f.name: f.read_bytes() for f in sorted(folder.iterdir())}


def test_a_prepare_stopped_after_a_shard_continues_to_the_same_bytes(docs_folder, sharded, tmp_path, monkeypatch):
    """Stopped at the worst moment: a shard was completed and renamed, but no checkpoint recorded it."""
    src, _ = docs_folder
    out = tmp_path / "out"
    args = [f"--input={src}", "--tokenizer=bpe", "--vocab_size=400", "--val_fraction=0.1", "--batch_mb=0.02",
            "--shard_tokens=3000", f"--out={out}"]
    close, calls = shard_writer.ShardWriter._close, []

    def close_then_die(self, split):
        close(self, split)
        calls.append(split)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a SIGKILL would stop it: nothing more is written

    monkeypatch.setattr(shard_writer.ShardWriter, "_close", close_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare("data/openwebtext/prepare.py", *args)
    with pytest.raises(UserError, match="half-prepared"):
        Batches(str(out), "x", 64, 4, 7, "cpu")
    monkeypatch.setattr(shard_writer.ShardWriter, "_close", close)
    prepare("data/openwebtext/prepare.py", *args)
    assert snapshot(out) == snapshot(sharded[0])


@pytest.mark.slow
@pytest.mark.serial  # a signal
def test_a_killed_streaming_prepare_continues_to_the_same_bytes(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = documents(300, seed=1)
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "hub"))  # a local stand-in for the hub
    args = [f"--dataset={tmp_path / 'hub'}", "--tokenizer=bpe", "--vocab_size=300", "--val_fraction=0.05",
            "--shard_tokens=5000", "--batch_mb=0.002"]
    prepare("data/fineweb_edu/prepare.py", *args, f"--out={tmp_path / 'whole'}")
    tok = load_tokenizer(dataset.read_meta(str(tmp_path / "whole")), str(tmp_path / "whole"))
    val = [d for i, d in enumerate(docs) if (i + 1) * 15 // 300 > i * 15 // 300]  # 15 evenly spaced documents
    assert tok.decode(tokens(tmp_path / "whole", "val").tolist()) == "".join(d + "<|endoftext|>" for d in val)

    out = tmp_path / "killed"
    p = start("data/fineweb_edu/prepare.py", *args, f"--out={out}")
    try:
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:  # until a third of the documents are written
            try:
                if json.loads((out / "dataset.json").read_text())["progress"]["docs"] >= 100:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.communicate()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL, "the prepare ended before it could be killed"
    assert not json.loads((out / "dataset.json").read_text())["complete"]
    p = run("data/fineweb_edu/prepare.py", *args, f"--out={out}")
    assert "continuing the unfinished prepare" in p.stdout
    assert snapshot(out) == snapshot(tmp_path / "whole")


def test_damaged_shards_and_a_foreign_tokenizer_are_one_sentence(sharded, docs_folder, tmp_path):
    src, _ = docs_folder
    shards = tmp_path / "shards"
    shutil.copytree(sharded[0], shards)
    other = tmp_path / "other"  # the same documents in another tokenizer: its shards are the same size
    prepare("data/openwebtext/prepare.py", f"--input={src}", "--tokenizer=bpe", "--vocab_size=420",
            "--val_fraction=0.1", "--shard_tokens=3000", f"--out={other}")

    def refused(words):
        with pytest.raises(UserError, match=words):
            Batches(str(shards), "x", 64, 4, 7, "cpu")

    first = shards / "train_000001.bin"
    original = first.read_bytes()
    shutil.copyfile(other / "train_000001.bin", first)
    refused(r"written with another tokenizer \(bpe:[0-9a-f]+\) than the rest of the dataset \(bpe:")
    first.write_bytes(original[:-100])
    refused("cut short")
    first.unlink()
    refused("train_000001.bin is missing")
    first.write_bytes(original)
    shutil.copyfile(first, shards / "train_000999.bin")
    refused("train_000999.bin is not one of the")
    (shards / "train_000999.bin").unlink()
    Batches(str(shards), "x", 64, 4, 7, "cpu")  # whole again
    # a tokenizer.json that is not the one the dataset was prepared with, in the dataset and in a run
    shutil.copyfile(other / "tokenizer.json", shards / "tokenizer.json")
    refused("is not the tokenizer the dataset was prepared with")
    with pytest.raises(UserError, match="is not the tokenizer"):
        load_tokenizer(dataset.read_meta(str(shards)), str(shards))
    (shards / "tokenizer.json").unlink()
    refused("tokenizer.json is missing")


def test_align_doc_on_character_data_is_one_sentence(char_data):
    with pytest.raises(UserError, match="character data has no end-of-text token") as e:
        Batches(str(char_data), "play_char", 32, 4, 0, "cpu", align="doc")
    assert e.value.status == 2


# -----------------------------------------------------------------------------
# batch options

def test_epochs_visit_every_window_or_document_once_and_batches_depend_on_seed_iteration_micro_step(sharded):
    folder = str(sharded[1])
    T, B, G = 64, 4, 3
    data = np.concatenate([tokens(sharded[1], "train")])
    eot = dataset.read_meta(folder)["eot"]
    # the reference, by a plain scan: documents start at 0 and after every <|endoftext|>, where a row fits
    doc_starts = [i for i in range(len(data) - T) if i == 0 or data[i - 1] == eot]
    windows = list(range(0, len(data) - T, T))  # block_size windows, every target once
    for align, starts in (("none", windows), ("doc", doc_starts)):
        batches = Batches(folder, "x", T, B, 5, "cpu", sampling="epoch", align=align, micro_steps=G)
        assert batches.rows == len(starts)
        per_epoch = -(-len(starts) // (B * G))
        seen = np.concatenate([batches._train_offsets(it, m) for it in range(2 * per_epoch + 1) for m in range(G)])
        epoch = seen[:len(starts)]
        assert sorted(epoch) == starts  # each once in the first epoch, in a shuffled order
        assert list(epoch) != starts and sorted(seen[len(starts):2 * len(starts)]) == starts
        assert list(seen[len(starts):2 * len(starts)]) != list(epoch)  # the next epoch in another order
        # a fresh instance (a resumed run, another process) draws the same rows at any (iteration, micro-step)
        again = Batches(folder, "x", T, B, 5, "cpu", sampling="epoch", align=align, micro_steps=G)
        for it, m in [(per_epoch + 3, 2), (0, 1), (2 * per_epoch, 0)]:
            assert torch.equal(again.train_batch(it, m)[0], batches.train_batch(it, m)[0])
    random_doc = Batches(folder, "x", T, B, 5, "cpu", align="doc")
    assert set(np.concatenate([random_doc._train_offsets(it, 0) for it in range(50)])) <= set(doc_starts)
    # the default is nanoGPT's windows: offsets uniform over the split, from (seed, 0, iteration, micro-step)
    default = Batches(folder, "x", T, B, 5, "cpu")
    x, _ = default.train_batch(9, 2)
    offsets = np.random.default_rng([5, 0, 9, 2]).integers(0, len(data) - T, size=B)
    assert torch.equal(x, torch.from_numpy(np.stack([data[i:i + T] for i in offsets]).astype(np.int64)))


ITERS = 16


@pytest.mark.slow
@pytest.mark.serial  # torchrun
def test_aligned_epochs_train_the_same_in_two_processes_and_across_a_resume(sharded, tmp_path):
    """Two processes for the first half, then one process resuming for the second: every step's loss
    equals that of one uninterrupted process."""
    from test_ddp import torchrun
    common = [f"--data_dir={sharded[0]}", *TINY, "--gradient_accumulation_steps=4", "--sampling=epoch",
              "--align=doc", "--learning_rate=1e-3", "--warmup_iters=2", f"--lr_decay_iters={ITERS}",
              "--eval_interval=1000", "--eval_iters=2"]
    run("train.py", *common, f"--max_iters={ITERS}", f"--out_dir={tmp_path / 'one'}")
    p = torchrun(*common, f"--max_iters={ITERS // 2}", f"--out_dir={tmp_path / 'split'}")
    assert "2 processes" in p.stdout and "one per document" in p.stdout
    run("train.py", "--init_from=resume", f"--out_dir={tmp_path / 'split'}", f"--max_iters={ITERS}")
    one = {r["iter"]: r["loss"] for r in read_metrics(tmp_path / "one") if "loss" in r}
    split = {r["iter"]: r["loss"] for r in read_metrics(tmp_path / "split") if "loss" in r}
    assert sorted(one) == sorted(split) == list(range(ITERS))
    for i in range(ITERS):
        assert abs(one[i] - split[i]) <= 1e-5, (i, one[i], split[i])
    with open(tmp_path / "split" / "meta.pkl", "rb") as f:
        assert pickle.load(f)["tokenizer"] == "tokenizer.json"


def test_aligned_or_epoch_rows_fewer_than_a_batch_are_refused_with_the_count(sharded):
    """With align=doc or sampling=epoch a batch draws from the split's rows alone: fewer rows than a batch
    would repeat the same few every step. The count said is the reference scan's."""
    folder, T = str(sharded[1]), 64
    data = tokens(sharded[1], "train")
    eot = dataset.read_meta(folder)["eot"]
    docs = sum(1 for i in range(len(data) - T) if i == 0 or data[i - 1] == eot)
    windows = len(range(0, len(data) - T, T))
    for options, rows in ((dict(align="doc"), docs), (dict(sampling="epoch"), windows)):
        Batches(folder, "x", T, rows, 5, "cpu", **options)  # a batch of every row: accepted
        with pytest.raises(UserError) as e:
            Batches(folder, "x", T, rows + 1, 5, "cpu", **options)
        assert e.value.status == 2 and f"holds {rows} " in str(e.value) and f"batch_size={rows + 1}" in str(e.value)


def test_a_trained_tokenizers_token_bytes_add_up_to_the_texts_utf8_bytes(bpe_data):
    """Bits per byte divides by the bytes each token stands for: over any text, the encoded tokens' sizes
    add up to the text's UTF-8 length (the reference, counted by Python), special tokens counting none."""
    tok = load_tokenizer(dataset.read_meta(str(bpe_data)), str(bpe_data))
    sizes = tok.token_bytes()
    assert len(sizes) == tok.vocab_size and sizes[tok.eot] == 0
    for text in (CORPUS.read_text(encoding="utf-8")[:5000], "naïve café 東京 — ünïcödé\n\n  tabs\tand 🙂"):
        assert sum(sizes[i] for i in tok.encode_ordinary(text)) == len(text.encode("utf-8"))
    assert sum(sizes[i] for i in tok.encode("<|endoftext|>ROMEO:")) == len("ROMEO:")


@pytest.mark.slow
def test_a_trained_tokenizer_run_logs_bits_per_byte_and_eval_py_scores_it(bpe_run):
    """The run found its tokenizer in its dataset's folder (not the working directory) for val_bpb, and eval.py
    scores bits per byte through the run's copy of it."""
    assert any("val_bpb" in r for r in read_metrics(bpe_run))
    p = run("eval.py", f"--out_dir={bpe_run}", "--tasks=val", "--limit=200", "--device=cpu")
    assert '"bpb"' in p.stdout.splitlines()[-1], p.stdout

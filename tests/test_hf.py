"""GPT-2 weights in and out, checked against transformers' GPT2LMHeadModel: import parity, export
parity and greedy generation, the text-generation pipeline, fine-tuning from a local folder."""

import json
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

from conftest import CORPUS, CORPUS_VOCAB, TINY, assert_clean_error, offline, read_metrics, run

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gptkit import checkpoint, loading  # noqa: E402
from gptkit import hf as hf_io  # noqa: E402
from gptkit.errors import UserError  # noqa: E402
from gptkit.generate import generate  # noqa: E402

TOL = 1e-5  # fp32


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random GPT-2 in GPT-2's vocabulary, saved as transformers saves GPT-2. Every weight is
    perturbed so that biases and LayerNorm gains are not their trivial init (a dropped bias shows)."""
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2))
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(folder)
    # the same weights as older transformers saved them: pytorch_model.bin
    (folder / "bin").mkdir()
    hf.config.save_pretrained(folder / "bin")
    torch.save(hf.state_dict(), folder / "bin" / "pytorch_model.bin")
    return folder


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory, gpt2_encoding):
    folder = tmp_path_factory.mktemp("bpe")
    src = folder / "corpus.txt"
    src.write_text(CORPUS.read_text(encoding="utf-8")[:60000], encoding="utf-8")
    run("data/corpus/prepare.py", f"--input={src}", "--tokenizer=gpt2", f"--out={folder}")
    return folder


def hf_logits(folder, idx):
    hf = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(idx).logits


def test_import_matches_hf_logits(hf_dir):
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(1))
    reference = hf_logits(hf_dir, idx)
    for folder in (hf_dir, hf_dir / "bin"):
        model = hf_io.load_gpt2(str(folder)).eval()
        assert model.config.gelu_approximate == "tanh" and model.config.bias and model.config.block_size == 64
        with torch.no_grad():
            ours = model.all_logits(idx)
        assert (ours - reference).abs().max().item() <= TOL
    # and back out: the imported model exported in memory is the source again
    back = GPT2LMHeadModel(hf_io.gpt2_config_for(model))
    assert back.load_state_dict(hf_io.gpt2_state_dict(model), strict=False) == ([], [])  # (missing, unexpected)
    with torch.no_grad():
        assert (back.eval()(idx).logits - reference).abs().max().item() <= TOL
    # the same through the entry point train/sample use, with dropout overridden
    assert loading.load_pretrained(str(hf_dir), dropout=0.1)[0].config.dropout == 0.1


@pytest.mark.slow
def test_unloadable_weights_are_one_sentence(tmp_path, char_data):
    p = run("sample.py", f"--init_from={tmp_path}", "--device=cpu", "--num_samples=1", check=False)
    assert_clean_error(p, words=[str(tmp_path), "config.json"])
    p = run("sample.py", f"--init_from={tmp_path / 'nope'}", "--device=cpu", check=False)
    assert_clean_error(p, words=["no such folder"])
    # a hub name with no connection and nothing cached
    p = run("train.py", "--init_from=gpt2", "--dataset=play_char", *TINY, f"--out_dir={tmp_path / 'run'}",
            check=False, env=offline(tmp_path))
    assert_clean_error(p, words=["'gpt2'", "connect to the internet", "local folder"])


def export(out_dir, export_dir, *extra, check=True):
    return run("export.py", f"--out_dir={out_dir}", f"--export_dir={export_dir}", *extra, check=check)


def load_clean(folder):
    """GPT2LMHeadModel from an exported folder, asserting transformers found exactly its weights and
    logged no warning while loading it."""
    import logging

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.said = []

        def emit(self, record):
            self.said.append(record.getMessage())

    collect = Collect()
    transformers.utils.logging.add_handler(collect)
    try:
        hf, info = GPT2LMHeadModel.from_pretrained(folder, output_loading_info=True)
    finally:
        transformers.utils.logging.remove_handler(collect)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert not collect.said, collect.said
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # still tied
    return hf.eval()


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory, bpe_data):
    """A model trained here in GPT-2's vocabulary: bias=False, exact GELU, padded vocabulary of 50304."""
    out = tmp_path_factory.mktemp("bpe-run")
    run("train.py", f"--data_dir={bpe_data}", *TINY, "--gradient_accumulation_steps=1", "--max_iters=6", "--eval_interval=6", "--eval_iters=1",
        "--learning_rate=1e-2", "--warmup_iters=0", f"--out_dir={out}")
    return out


PRINTED = {}


@pytest.fixture(scope="module")
def bpe_export(tmp_path_factory, bpe_run):
    dest = tmp_path_factory.mktemp("bpe-export") / "hf"
    p = export(bpe_run, dest)  # the tokenizer files are made from tiktoken's
    assert "exported" in p.stdout
    files = {f.name for f in dest.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files, files
    assert not list(dest.parent.glob("hf.*"))  # no temporary folder left behind
    PRINTED[dest] = p.stdout  # what export.py told the user to try
    return dest


def run_printed_line(stdout, tmp_path):
    """Run the `try: python -c "..."` line export.py printed, as a user pasting it would."""
    line = next(x for x in stdout.splitlines() if x.startswith("try: python -c "))
    code = line[len('try: python -c "'):-1]
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


@pytest.mark.slow
def test_export_matches_our_logits_and_greedy_tokens(bpe_run, bpe_export):
    dest = bpe_export
    path = bpe_run / "ckpt.pt"
    ours = loading.build_model(checkpoint.load(path), path).eval()
    assert ours.config.vocab_size == 50304 and not ours.config.bias
    hf = load_clean(dest)
    assert hf.config.vocab_size == 50257 and hf.config.n_positions == 32
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mine = ours.all_logits(idx)
        theirs = hf(idx).logits
    assert (mine[..., :50257] - theirs).abs().max().item() <= TOL
    prompt = idx[:1, :8]
    ours_gen = generate(ours, prompt, 20, temperature=0)[0, 8:].tolist()
    hf_gen = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=20,
                         pad_token_id=50256)[0, 8:].tolist()
    # transformers stops at <|endoftext|>; up to there the tokens must be the same
    assert hf_gen == ours_gen[:len(hf_gen)] and (len(hf_gen) == 20 or hf_gen[-1] == 50256)


@pytest.mark.slow
def test_exported_model_runs_in_a_pipeline(bpe_run, bpe_export, gpt2_encoding, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gen = transformers.pipeline("text-generation", model=str(bpe_export), device="cpu")
    text = gen("ROMEO:", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    # the same continuation from our own model and tiktoken
    enc = gpt2_encoding
    path = bpe_run / "ckpt.pt"
    ours = loading.build_model(checkpoint.load(path), path).eval()
    ids = torch.tensor([enc.encode("ROMEO:")])
    new = generate(ours, ids, 8, temperature=0)[0, ids.size(1):].tolist()
    if 50256 in new:
        new = new[:new.index(50256)]
    assert text == "ROMEO:" + enc.decode(new)
    # without a length the pipeline stays inside the 32-token context (past it GPT-2's position table has
    # no row); and the line export.py printed runs as it is
    default = gen("ROMEO:", do_sample=False)[0]["generated_text"]
    assert len(enc.encode(default)) <= 32
    assert run_printed_line(PRINTED[bpe_export], None).startswith("Hello")


@pytest.mark.slow
def test_bench_process_mode_times_sample_py_and_transformers_writing_the_same_text(bpe_export):
    # the speed claim against transformers holds only if both processes write the same greedy text
    p = run("bench.py", "--mode=process", f"--init_from={bpe_export}", "--repeats=2", "--new_tokens=8",
            "--prompt=ROMEO:", env={"HF_HUB_OFFLINE": "1"})
    assert "the same text: yes" in p.stdout, p.stdout
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert [len(v) for v in result["runs"].values()] == [2, 2] and len(result["first_token_s"]) == 2
    assert all(0 < first < total for first, total in zip(result["first_token_s"], result["runs"]["sample.py"]))


@pytest.mark.slow
def test_export_refuses_to_clobber_and_writes_nothing_on_error(bpe_run, tmp_path):
    dest = tmp_path / "hf"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    p = export(bpe_run, dest, check=False)
    assert_clean_error(p, words=["already exists", "--overwrite"])
    assert [f.name for f in dest.iterdir()] == ["keep.txt"]
    # no tokenizer to be had: a sentence saying what to do, and nothing written
    p = run("export.py", f"--out_dir={bpe_run}", f"--export_dir={tmp_path / 'new'}", check=False,
            env=offline(tmp_path))
    assert_clean_error(p, words=["--tokenizer_dir", "--skip_tokenizer"])
    assert not (tmp_path / "new").exists()
    # --overwrite replaces an earlier export, and nothing else
    p = export(bpe_run, dest, "--overwrite", check=False)
    assert_clean_error(p, words=["not a folder export.py wrote"])
    assert [f.name for f in dest.iterdir()] == ["keep.txt"]
    again = tmp_path / "again"
    export(bpe_run, again)
    (again / "config.json").write_text("{}")  # an earlier, different export
    export(bpe_run, again, "--overwrite")
    assert (again / "config.json").read_text() != "{}" and (again / "export.json").exists()
    assert not list(tmp_path.glob("again.*"))


@pytest.mark.slow
def test_char_model_exports_weights_and_vocabulary(char_data, tmp_path):
    out = tmp_path / "run"
    run("train.py", "--dataset=play_char", *TINY, "--gradient_accumulation_steps=1", "--max_iters=2", "--eval_interval=2", "--eval_iters=1",
        f"--out_dir={out}")
    dest = tmp_path / "hf"
    p = export(out, dest)
    assert "no transformers tokenizer exists" in p.stderr
    # transformers' own progress bars ("Writing model shards") and notes stay out of what export.py prints
    assert not re.search(r"Writing model shards|Loading weights|\d+%\|", p.stdout + p.stderr), p.stderr
    assert {f.name for f in dest.iterdir()} >= {"config.json", "model.safetensors", "meta.pkl"}
    # the printed line works for a character model: weights through transformers, text through meta.pkl
    assert run_printed_line(p.stdout, tmp_path).startswith("ROMEO:")
    with open(dest / "meta.pkl", "rb") as f:
        assert pickle.load(f)["vocab_size"] == CORPUS_VOCAB
    hf = load_clean(dest)
    assert hf.config.vocab_size == CORPUS_VOCAB and hf.config.eos_token_id is None
    path = out / "ckpt.pt"
    ours = loading.build_model(checkpoint.load(path), path).eval()
    idx = torch.randint(0, CORPUS_VOCAB, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours.all_logits(idx) - hf(idx).logits).abs().max().item() <= TOL


@pytest.mark.slow
def test_finetune_from_a_local_folder_then_resume(hf_dir, bpe_data, tmp_path):
    out = tmp_path / "ft"
    common = [f"--data_dir={bpe_data}", *TINY, "--gradient_accumulation_steps=1", "--eval_interval=3", "--eval_iters=2", "--dropout=0.1",
              f"--out_dir={out}", "--learning_rate=1e-3", "--warmup_iters=0"]
    p = run("train.py", *common, f"--init_from={hf_dir}", "--max_iters=3")
    rows = read_metrics(out)
    assert [r["iter"] for r in rows if "loss" in r] == [0, 1, 2]
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    args = {**ckpt["model_args"], **ckpt["model_options"]}
    assert args["bias"] is True and args["gelu_approximate"] == "tanh" and args["vocab_size"] == 50257
    assert args["block_size"] == 32 and args["dropout"] == 0.1  # cropped from 64; dropout overridden
    # the first evaluation scored the imported weights themselves: compare with transformers' loss
    from gptkit.batches import Batches
    batches = Batches(str(bpe_data), "bpe", 32, 8, 1337, "cpu")  # TINY's block and batch, the default seed
    hf = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        ref = sum(torch.nn.functional.cross_entropy(hf(X).logits.flatten(0, 1), Y.flatten()).item()
                  for X, Y in (batches.eval_batch("val", k) for k in range(2))) / 2
    evals = [r for r in rows if "val_loss" in r]
    assert evals[0]["iter"] == 0 and evals[0]["val_loss"] == pytest.approx(ref, abs=1e-4)
    p = run("train.py", *common, "--init_from=resume", "--max_iters=6")
    assert "resuming from" in p.stdout
    assert [r["iter"] for r in read_metrics(out) if "loss" in r] == list(range(6))
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 6


@pytest.mark.slow
def test_finetune_refuses_a_conflicting_architecture(hf_dir, bpe_data, char_data, tmp_path):
    base = [*TINY, f"--init_from={hf_dir}", "--max_iters=1", f"--out_dir={tmp_path}"]
    p = run("train.py", f"--data_dir={bpe_data}", *base, "--n_layer=4", check=False)
    assert_clean_error(p, status=2, words=["n_layer=4", "n_layer=2"])
    p = run("train.py", "--dataset=play_char", *base, check=False)
    assert_clean_error(p, status=2, words=["vocabulary", "gpt2"])


@pytest.mark.slow
def test_gpt2_configs_resolve():
    for name, init in [("eval_gpt2", "gpt2"), ("eval_gpt2_medium", "gpt2-medium"), ("eval_gpt2_large", "gpt2-large"),
                       ("eval_gpt2_xl", "gpt2-xl")]:
        cfg = json.loads(run("train.py", f"config/{name}.py", "--print-config").stdout)
        assert cfg["eval_only"] and cfg["init_from"] == init and cfg["out_dir"] != "out"
    cfg = json.loads(run("train.py", "config/finetune_shakespeare.py", "--print-config").stdout)
    assert cfg["init_from"].startswith("gpt2") and cfg["dataset"] == "shakespeare"
    cfg = json.loads(run("train.py", "config/train_gpt2.py", "--print-config").stdout)
    assert cfg["dataset"] == "openwebtext" and cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"] == 491520


def test_tokenizer_made_from_tiktoken_is_gpt2s(gpt2_encoding, tmp_path):
    """export.py writes GPT-2's tokenizer made from tiktoken's files; compare with GPT-2's own files
    (CI keeps them offline; elsewhere they are downloaded from the hub once, or the test skips)."""
    from transformers import GPT2TokenizerFast
    ref_dir = os.environ.get("GPT_TEST_GPT2_TOKENIZER")
    if not ref_dir or not os.path.isfile(os.path.join(ref_dir, "vocab.json")):
        try:
            from huggingface_hub import hf_hub_download
            ref_dir = os.path.dirname(hf_hub_download("openai-community/gpt2", "vocab.json", etag_timeout=5))
            hf_hub_download("openai-community/gpt2", "merges.txt", etag_timeout=5)
        except Exception as e:
            pytest.skip(f"GPT-2's vocab.json and merges.txt could not be had ({type(e).__name__}); CI sets "
                        f"GPT_TEST_GPT2_TOKENIZER to a folder holding them")
    ours = hf_io.gpt2_tokenizer(model_max_length=64)
    ref = GPT2TokenizerFast.from_pretrained(ref_dir)
    assert ours.get_vocab() == ref.get_vocab() and ours.model_max_length == 64
    text = CORPUS.read_text(encoding="utf-8")[:5000] + " naïve café 東京 <|endoftext|> \t  spaces\n\n"
    assert ours(text)["input_ids"] == ref(text)["input_ids"] == gpt2_encoding.encode(text, allowed_special="all")
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(UserError):  # a folder without merges.txt
        hf_io.gpt2_tokenizer(str(tmp_path))


def test_a_tokenizer_folder_numbering_tokens_unlike_gpt2_is_refused_with_the_first_difference(gpt2_encoding,
                                                                                              tmp_path):
    """--tokenizer_dir goes into the exported model (HF folder or GGUF file) beside weights whose rows mean
    GPT-2's ids: a folder whose vocab.json numbers the same tokens otherwise is refused, naming the id."""
    files = hf_io.gpt2_bpe_files()  # GPT-2's own, from tiktoken's cache
    vocab = json.loads(files["vocab.json"])
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "merges.txt").write_bytes(files["merges.txt"])

    def given(v):
        (folder / "vocab.json").write_text(json.dumps(v), encoding="utf-8")
        return hf_io.gpt2_bpe_files(str(folder))

    assert given(vocab)["vocab.json"] == (folder / "vocab.json").read_bytes()  # GPT-2's own: accepted
    swapped = dict(vocab, **{"Ġthe": vocab["Ġand"], "Ġand": vocab["Ġthe"]})
    with pytest.raises(UserError) as e:
        given(swapped)
    first = min(vocab["Ġthe"], vocab["Ġand"])
    assert f"gives id {first}" in str(e.value) and "2 tokens in all differ" in str(e.value), str(e.value)
    smaller = {t: i for t, i in vocab.items() if i < 1000}
    with pytest.raises(UserError, match="numbers 1,000 tokens .*GPT-2's 50,257"):
        given(smaller)


def test_a_trained_tokenizers_exported_config_loads_in_transformers_4_and_5(tmp_path):
    """transformers 5 saves tokenizer_config.json with a class 4.x lacks and special tokens in a shape 4.x
    cannot read; the exported file names PreTrainedTokenizerFast and additional_special_tokens, which both
    read. Loaded here in the installed transformers (5) and, where GPT_TEST_TRANSFORMERS4 names a folder
    holding transformers 4.x and its tokenizers (pip install --target), in that one as a separate process."""
    from gptkit import hf_tokenizer
    from gptkit.tokenizer import SPECIAL_TOKENS, train_bpe
    tok = train_bpe([CORPUS.read_text(encoding="utf-8")[:20000]], 300)
    hf_io.fast_tokenizer(tok, model_max_length=64).save_pretrained(tmp_path)
    hf_tokenizer.portable_config(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["additional_special_tokens"] == list(SPECIAL_TOKENS[1:])
    assert not isinstance(config.get("extra_special_tokens", {}), list)
    text = "<|im_start|>user\nnaïve  café<|im_end|>\n<|endoftext|>"
    check = (f"import json, sys, transformers; t = transformers.AutoTokenizer.from_pretrained({str(tmp_path)!r}); "
             f"ids = t({text!r})['input_ids']; print(json.dumps([ids, t.decode(ids), sorted(t.all_special_tokens)]))")
    expected = [tok.encode(text), text, sorted(SPECIAL_TOKENS)]
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ids = theirs(text)["input_ids"]
    assert [ids, theirs.decode(ids), sorted(theirs.all_special_tokens)] == expected
    old = os.environ.get("GPT_TEST_TRANSFORMERS4")
    if not old:
        pytest.skip("set GPT_TEST_TRANSFORMERS4 to a folder holding transformers 4.x (pip install --target DIR "
                    "'transformers<5' 'tokenizers<0.23' 'huggingface_hub<1' --no-deps) to load the file there too")
    p = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": old})
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.splitlines()[-1]) == expected


def test_transformers_is_quiet_inside_the_block_only():
    from transformers.utils import logging

    from gptkit import quiet
    before = logging.is_progress_bar_enabled(), logging.get_verbosity()
    with quiet.transformers():
        assert not logging.is_progress_bar_enabled() and logging.get_verbosity() == logging.ERROR
    assert (logging.is_progress_bar_enabled(), logging.get_verbosity()) == before

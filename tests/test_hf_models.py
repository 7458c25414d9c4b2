"""Llama, Qwen2, Qwen3 and Mistral folders in, checked against transformers: tiny random models of each
class (grouped-query attention, tied and untied heads, Qwen2's q/k/v biases, Qwen3's own head size, Llama 3's
rope scaling) give the same logits and the same greedy text; their tokenizers the same ids and text as
AutoTokenizer; their chat templates the same text as apply_chat_template; bad folders one sentence each."""

import json
import shutil

import pytest
import torch

from conftest import CORPUS, LINES, assert_clean_error, choice_file, harness_tasks, read_metrics, run

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")

from gptkit import benchmarks, evaluation, hf_tokenizer, loading  # noqa: E402
from gptkit.errors import UserError  # noqa: E402
from gptkit.tokenizer import SPLIT_PATTERN  # noqa: E402

TOL = 1e-4  # fp32
VOCAB = 320

# A ChatML template with a default system message, written for these tests in the manner of Qwen's
CHATML = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
          "{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Llama 3's header markers, the BOS written by the template, contents trimmed
HEADERS = ("{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>"
           "\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
           "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
STYLES = {
    # (special tokens, bos, eos, end of turn, tokenizer_class, BOS added by the post-processor, template)
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "PreTrainedTokenizerFast", True, HEADERS),
    "qwen": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None, "<|im_end|>", "<|im_end|>", "Qwen2Tokenizer",
             False, CHATML),
}
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)
MODELS = {  # name: (class, config class, config, tokenizer style)
    "llama-tied-rope-scaled": ("LlamaForCausalLM", "LlamaConfig", dict(
        tie_word_embeddings=True, rope_theta=500000.0, rope_scaling=dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16)), "llama3"),
    "llama-untied": ("LlamaForCausalLM", "LlamaConfig", dict(tie_word_embeddings=False), "llama3"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(tie_word_embeddings=True), "qwen"),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", dict(head_dim=32, tie_word_embeddings=False), "qwen"),
    "mistral": ("MistralForCausalLM", "MistralConfig", dict(head_dim=16, sliding_window=None), "llama3"),
}
TEXTS = ["Hello  world!\n\n  tabs\tand   runs of spaces   ", "ünïcödé 日本語 and emoji 🙂 mixed in",
         "ROMEO: <|im_end|> a marker <|eot_id|> in text", "", "   leading spaces, and a trailing newline\n",
         "decomposed e\u0301 and 2024-12-05, 3.14159"]


def save_tokenizer(folder, style):
    """A byte-level BPE of VOCAB tokens trained here, saved as transformers saves one, with the style's
    special tokens, BOS/EOS, template, and generation_config's eos ids (end of text and of turn)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast
    special, bos, eos, end_turn, cls, add_bos, template = STYLES[style]
    tok = Tokenizer(models.BPE())
    pattern = SPLIT_PATTERN
    if style == "qwen":  # as Qwen's tokenizer.json: NFC, and the split that transformers' Qwen2Tokenizer builds
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as pattern
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS.read_text(encoding="utf-8")[:50000]], trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    assert tok.get_vocab_size() == VOCAB
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, chat_template=template
                            ).save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": cls}))
    GenerationConfig(eos_token_id=sorted({tok.token_to_id(eos), tok.token_to_id(end_turn), tok.token_to_id(special[0])}),
                     bos_token_id=tok.token_to_id(bos) if bos else None).save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{name: folder} of each tiny model with its tokenizer; every weight perturbed from its init, so that
    a norm gain or bias left out shows."""
    out = {}
    for name, (cls, config_cls, extra, style) in MODELS.items():
        torch.manual_seed(0)
        hf = getattr(transformers, cls)(getattr(transformers, config_cls)(**COMMON, **extra))
        with torch.no_grad():
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        folder = tmp_path_factory.mktemp(name)
        hf.save_pretrained(folder)
        save_tokenizer(folder, style)
        out[name] = folder
    return out


def reference(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_equal_transformers(folders, name):
    model, desc = loading.load_pretrained(str(folders[name]))
    assert MODELS[name][0] in desc
    idx = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.eval().all_logits(idx)
        theirs = reference(folders[name])(idx).logits
    assert (ours - theirs).abs().max().item() <= TOL
    if name == "llama-tied-rope-scaled":  # the scaling is computed, not left out: without it the logits move
        assert model.config.rope_scale == 8.0
        model.config.rope_scale = 0.0
        with torch.no_grad():
            assert (model.all_logits(idx) - theirs).abs().max().item() > 100 * TOL


def test_weights_come_in_the_asked_dtype_and_from_shards(folders, tmp_path):
    """bf16 weights stay bf16 when asked; a sharded folder (model.safetensors.index.json) loads the same."""
    hf = reference(folders["qwen3"])
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folders["qwen3"] / name, tmp_path / name)
    whole, _ = loading.load_pretrained(str(folders["qwen3"]))
    sharded, _ = loading.load_pretrained(str(tmp_path))
    for (k, a), (_, b) in zip(whole.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), k
    half, _ = loading.load_pretrained(str(tmp_path), dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert torch.equal(half.lm_head.weight, whole.lm_head.weight.bfloat16())


@pytest.mark.parametrize("style", list(STYLES))
def test_tokenizer_equals_autotokenizer(folders, style):
    folder = folders["llama-untied" if style == "llama3" else "qwen2"]
    ours, theirs = hf_tokenizer.load(str(folder)), transformers.AutoTokenizer.from_pretrained(folder)
    assert ours.vocab_size == len(theirs)
    for text in TEXTS:
        ids = theirs(text)["input_ids"]
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == theirs.decode(ids), text
    assert (ours.encode("x")[0] == theirs.bos_token_id) == STYLES[style][5]  # BOS where transformers adds it
    config = transformers.GenerationConfig.from_pretrained(folder)
    assert set(ours.stop_ids) == set(config.eos_token_id) | {theirs.eos_token_id}


@pytest.mark.parametrize("style", list(STYLES))
def test_chat_template_equals_apply_chat_template(folders, style):
    folder = folders["llama-untied" if style == "llama3" else "qwen2"]
    ours, theirs = hf_tokenizer.load(str(folder)), transformers.AutoTokenizer.from_pretrained(folder)
    conversations = [[{"role": "user", "content": "  Hi there  "}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "ünï 日本\n\nx"},
                      {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "<|im_end|> again"}]]
    for messages in conversations:
        for prompt in (True, False):
            text = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert ours.chat_template.apply(messages, add_generation_prompt=prompt) == text
    # chat.py's encoding of a conversation is apply_chat_template's ids
    turns, line = [("Hi there", "Sure.")], "and now?"
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Sure."},
                {"role": "user", "content": line}]
    expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ours.chat_template.fit(ours.encode, turns, line, 10_000) == expected["input_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-tied-rope-scaled", "qwen3"])
def test_greedy_sample_and_chat_equal_generate(folders, name):
    """sample.py's greedy text is transformers' generate's for 32 tokens, and chat.py's reply is the greedy
    continuation of apply_chat_template's ids, ended at a stop token."""
    folder = folders[name]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = reference(folder)
    start = "ROMEO: the night is"
    ids = tok(start, return_tensors="pt")["input_ids"]
    out = hf.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.size(1):].tolist()
    stops = set(transformers.GenerationConfig.from_pretrained(folder).eos_token_id)
    new = next((out[:i] for i, t in enumerate(out) if t in stops), out)
    p = run("sample.py", f"--init_from={folder}", f"--start={start}", "--temperature=0", "--max_new_tokens=32",
            "--device=cpu", "--dtype=float32")
    assert p.stdout.split("\n---------------")[0] == start + tok.decode(new)
    messages = [{"role": "user", "content": "Who goes there?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = hf.generate(ids, max_new_tokens=20, do_sample=False)[0, ids.size(1):].tolist()
    # streamed as decoded: a last character whose bytes are not all there yet is not shown
    reply = tok.decode(next((out[:i] for i, t in enumerate(out) if t in stops), out)).rstrip("\ufffd")
    p = run("chat.py", f"--init_from={folder}", "--prompt=Who goes there?", "--temperature=0", "--max_new_tokens=20",
            "--device=cpu", "--dtype=float32")
    assert p.stdout == f"Assistant: {reply}\n"


def edited(source, tmp_path, **changes):
    folder = tmp_path / "edited"
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("changes, words", [
    (dict(architectures=["GemmaForCausalLM"], model_type="gemma"), ["GemmaForCausalLM", "Qwen3ForCausalLM"]),
    (dict(hidden_act="gelu_pytorch_tanh"), ["hidden_act", "gelu_pytorch_tanh"]),
    (dict(rope_parameters=dict(rope_type="yarn", factor=4.0, rope_theta=10000.0)), ["rope_parameters", "yarn"]),
    (dict(quantization_config=dict(quant_method="gptq")), ["quantization_config", "gptq"]),
])
def test_what_cannot_be_computed_is_refused_naming_it(folders, tmp_path, changes, words):
    with pytest.raises(UserError) as e:
        loading.load_pretrained(edited(folders["qwen2"], tmp_path, **changes))
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)


def test_a_sliding_window_shortens_the_context_with_a_sentence(folders, tmp_path):
    """Mistral's window shorter than its context: used at contexts up to the window, where it is exact."""
    folder = edited(folders["mistral"], tmp_path, sliding_window=32)
    model, desc = loading.load_pretrained(folder)
    assert model.config.block_size == 32 and "sliding_window=32" in desc
    idx = torch.randint(0, VOCAB, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model.eval().all_logits(idx) - reference(folder)(idx).logits).abs().max() <= TOL


@pytest.mark.slow
def test_a_folder_without_tokenizer_or_template_is_one_sentence(folders, tmp_path):
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folders["qwen3"] / name, bare / name)
    p = run("sample.py", f"--init_from={bare}", "--device=cpu", "--num_samples=1", check=False)
    assert_clean_error(p, words=[str(bare), "tokenizer.json", "training", "chat.py"])
    base = tmp_path / "base"
    shutil.copytree(folders["qwen3"], base)
    (base / "chat_template.jinja").unlink()
    p = run("chat.py", f"--init_from={base}", "--prompt=hi", "--device=cpu", check=False)
    assert_clean_error(p, words=["chat template", "sample.py", "--style=chat"])


@pytest.fixture(scope="module")
def chat_data(folders, tmp_path_factory):
    """Conversations prepared in the tiny Qwen3's template and tokenizer (data/chat/prepare.py --tokenizer)."""
    folder = tmp_path_factory.mktemp("qwen-chat")
    convs = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                           {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(40)]
    (folder / "convs.jsonl").write_text("\n".join(json.dumps(c) for c in convs), encoding="utf-8")
    run("data/chat/prepare.py", folder / "convs.jsonl", f"--tokenizer={folders['qwen3']}", f"--out={folder / 'data'}")
    return folder / "data", convs


def test_sft_data_is_the_template_with_the_loss_on_replies(folders, chat_data):
    """Checked by hand on the first conversation: the tokens are apply_chat_template's, and the counted ones
    are the reply and the end-of-turn marker the template writes after it."""
    import numpy as np
    data, convs = chat_data
    tok = transformers.AutoTokenizer.from_pretrained(folders["qwen3"])
    messages = convs[0]["messages"]
    expected = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)[:len(expected)].tolist()
    mask = np.fromfile(data / "train_mask.bin", dtype=np.uint8)[:len(expected)]
    assert ids == expected
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "It is 0.<|im_end|>\n"
    assert tok.decode(ids[:int(np.argmax(mask))]) == tok.apply_chat_template(messages[:1], tokenize=False,
                                                                             add_generation_prompt=True)


@pytest.mark.slow
def test_lora_fine_tune_in_the_template_then_chat(folders, chat_data, tmp_path):
    """train.py --init_from=FOLDER with LoRA on the model's own chat data; the run chats in the model's
    template (its tokenizer and template kept with the run); data in another tokenizer is refused."""
    data, _ = chat_data
    out = tmp_path / "run"
    p = run("train.py", f"--init_from={folders['qwen3']}", f"--data_dir={data}", f"--out_dir={out}", "--lora_rank=4",
            "--lora_targets=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",  # PEFT's names
            "--block_size=64", "--batch_size=4", "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--device=cpu",
            "--compile=False", "--dtype=float32")
    assert "warning" not in p.stdout
    assert "on 8 layers (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)" in p.stdout
    p = run("chat.py", f"--out_dir={out}", "--prompt=What is 3 plus 3?", "--temperature=0", "--max_new_tokens=4")
    assert "template style" in p.stderr and p.stdout.startswith("Assistant: ")
    # exported: PEFT's adapters over the original folder compute the run's model; the merged export keeps the
    # model's tokenizer, template and stop ids
    from conftest import export
    peft = pytest.importorskip("peft")
    export(f"--out_dir={out}", "--peft=True")
    export(f"--out_dir={out}")
    model, _, _ = loading.load_for_inference("resume", str(out))
    adapted = peft.PeftModel.from_pretrained(reference(folders["qwen3"]), str(out / "peft")).eval()
    merged = reference(out / "hf")
    idx = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.all_logits(idx)
        assert (adapted(idx).logits - ours).abs().max() <= 1e-5 and (merged(idx).logits - ours).abs().max() <= 1e-5
    theirs, exported = (transformers.AutoTokenizer.from_pretrained(f) for f in (folders["qwen3"], out / "hf"))
    messages = [{"role": "user", "content": "ünï  x <|im_end|>"}]
    assert exported.apply_chat_template(messages, tokenize=False) == theirs.apply_chat_template(messages, tokenize=False)
    assert exported(TEXTS[2])["input_ids"] == theirs(TEXTS[2])["input_ids"]
    assert merged.generation_config.eos_token_id == hf_tokenizer.load(str(folders["qwen3"])).stop_ids
    # and as one GGUF file for llama.cpp: Qwen3's architecture, the model's tokenizer and template
    gguf = pytest.importorskip("gguf")
    export(f"--out_dir={out}", "--format=gguf", "--gguf_type=f32")
    r = gguf.GGUFReader(out / "model-f32.gguf")
    assert r.fields["general.architecture"].contents() == "qwen3"
    assert r.fields["tokenizer.ggml.tokens"].contents() == [theirs.convert_ids_to_tokens(i) for i in range(VOCAB)]
    assert r.fields["tokenizer.chat_template"].contents() == theirs.chat_template
    p = run("train.py", f"--init_from={folders['llama-untied']}", f"--data_dir={data}", f"--out_dir={tmp_path / 'no'}",
            "--block_size=64", "--device=cpu", "--compile=False", check=False)
    assert_clean_error(p, words=["another model's tokenizer", f"--tokenizer={folders['llama-untied']}"])
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_rl_asks_an_instruct_model_in_its_template_and_the_run_keeps_its_tokenizer(folders, tmp_path):
    """rl.py from a Hugging Face instruct folder: each prompt is apply_chat_template's ids, a completion ends at
    any of the model's stop tokens, and the run keeps the model's tokenizer and template, for a resume and
    for chat.py."""
    from gptkit import grpo
    folder = folders["llama-untied"]
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    tok, meta, where = loading.pretrained_vocabulary(str(folder))
    asking = grpo.Asking(tok, 128)
    question = "What is 2 plus 3?"
    assert asking.encode(question) == theirs.apply_chat_template([{"role": "user", "content": question}],
                                                                 add_generation_prompt=True, tokenize=True,
                                                                 return_dict=True)["input_ids"]
    stops = set(transformers.GenerationConfig.from_pretrained(folder).eos_token_id) | {theirs.eos_token_id}
    assert sorted(asking.stops) == sorted([i] for i in stops)
    assert grpo.Asking(tok, 128, stop="\n\n").stops == [theirs("\n\n", add_special_tokens=False)["input_ids"]]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(dict(prompt=f"What is {a} plus 3?", answer=str(a + 3))) + "\n"
                               for a in range(4)))
    out = tmp_path / "rl"
    rl = ("rl.py", f"--prompts={prompts}", "--eval_prompts=1", "--eval_samples=2", "--answer_match=last_number",
          f"--out_dir={out}", "--max_new_tokens=4", "--batch_prompts=2", "--group_size=2", "--block_size=128",
          "--device=cpu")
    p = run(*rl, f"--init_from={folder}", "--max_iters=1")
    assert "next: python chat.py" in p.stdout
    run(*rl, "--init_from=resume", "--max_iters=2")
    _, kept, _ = loading.load_for_inference("resume", str(out))
    messages = [{"role": "user", "content": question}]
    assert kept.chat_template.apply(messages) == theirs.apply_chat_template(messages, tokenize=False,
                                                                            add_generation_prompt=True)
    assert kept.encode(TEXTS[1]) == theirs(TEXTS[1])["input_ids"] and set(kept.stop_ids) == stops
    p = run("chat.py", f"--out_dir={out}", f"--prompt={question}", "--temperature=0", "--max_new_tokens=4")
    assert "template style" in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama-untied", "qwen2"])  # a tokenizer that adds a BOS, and one without
def test_eval_py_scores_equal_lm_evaluation_harness_on_the_folder(folders, name, tmp_path):
    """eval.py --init_from=FOLDER against lm-evaluation-harness's HFLM on the same folder: every choice's
    log-likelihood and the accuracies (the harness's defaults: a BOS before the context where the tokenizer
    adds one, none before a choice), and bits per byte of a text read after the BOS (the harness with
    add_bos_token=False; by default it scores one more token, the BOS after the BOS)."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'lm-eval[hf]')")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    folder = str(folders[name])
    quiz = choice_file(tmp_path / "quiz.jsonl", 24)
    text = "\n".join(LINES[100:124])
    harness_tasks(tmp_path, quiz, text)
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False)

    def harness(task, **kwargs):
        lm = HFLM(pretrained=folder, dtype="float32", batch_size=8, device="cpu", **kwargs)
        return lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True, task_manager=tasks)

    choices, rolling = harness("local_quiz"), harness("local_text", add_bos_token=False)
    p = run("eval.py", f"--init_from={folder}", f"--tasks={quiz},text:{tmp_path / 'text.txt'}", "--device=cpu")
    ours = json.loads(p.stdout.strip().splitlines()[-1])
    theirs = choices["results"]["local_quiz"]
    assert ours[str(quiz)]["acc"] == theirs["acc,none"]  # exactly: the same examples right
    assert ours[str(quiz)]["acc_norm_chars"] == theirs["acc_norm,none"] and ours[str(quiz)]["n"] == 24
    assert ours[f"text:{tmp_path / 'text.txt'}"]["bpb"] == pytest.approx(
        rolling["results"]["local_text"]["bits_per_byte,none"], abs=1e-4)
    model, tok, _ = loading.load_for_inference(folder, None)
    quiz_set = benchmarks.load_choices(str(quiz), tok, model.config.block_size)
    for sample in choices["samples"]["local_quiz"]:
        with torch.no_grad():
            total, _ = evaluation.choice_losses(model, [quiz_set.examples[sample["doc_id"]]])
        assert (-total).tolist() == pytest.approx([ll for ll, _ in sample["filtered_resps"]], abs=1e-4)


@pytest.mark.slow
def test_a_mistral_run_on_text_in_its_tokenizer_trains_resumes_and_exports_as_a_mistral(folders, tmp_path):
    """Text prepared in a tokenizer that ends a text with <|end_of_text|>, not <|endoftext|> (Llama 3's, as
    this Mistral folder's) trains and logs val_bpb; after a resume, and with the folder it started from gone,
    export.py still writes the class the run came from."""
    folder = tmp_path / "mistral"
    shutil.copytree(folders["mistral"], folder)
    text = tmp_path / "book.txt"
    text.write_text(CORPUS.read_text(encoding="utf-8")[:30000], encoding="utf-8")
    run("data/corpus/prepare.py", text, f"--tokenizer={folder}", f"--out={tmp_path / 'data'}")
    out = tmp_path / "run"
    common = [f"--out_dir={out}", "--eval_iters=1", "--device=cpu", "--compile=False", "--dtype=float32"]
    run("train.py", f"--init_from={folder}", f"--data_dir={tmp_path / 'data'}", "--block_size=32", "--batch_size=2",
        "--max_iters=2", "--eval_interval=2", *common)
    run("train.py", "--init_from=resume", "--max_iters=4", *common)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["iter"] == 4 and last["val_bpb"] > 0
    shutil.rmtree(folder)
    run("export.py", f"--out_dir={out}")
    assert json.loads((out / "hf" / "config.json").read_text())["architectures"] == ["MistralForCausalLM"]


@pytest.mark.slow
def test_bench_py_times_the_folders_own_network(folders):
    """bench.py --init_from=FOLDER times that model, not the model keys' GPT-2: a training step, decoding
    beside transformers' generate on the same folder, and serving."""
    folder = str(folders["qwen3"])
    common = [f"--init_from={folder}", "--repeats=1", "--warmup=0", "--device=cpu"]
    rows = {}
    for mode, extra in (("train", ["--steps=1", "--block_size=32", "--batch_size=2"]),
                        ("generate", ["--new_tokens=4", "--prompt_len=4", "--gen_batch_sizes=(1,)",
                                      "--recompute_repeats=0"]),
                        ("serve", ["--new_tokens=4", "--prompt_len=4", "--clients=(1,)"])):
        p = run("bench.py", f"--mode={mode}", *common, *extra)
        rows[mode] = json.loads(p.stdout.strip().splitlines()[-1])
        assert rows[mode]["model"] == folder and rows[mode]["n_layer"] == COMMON["num_hidden_layers"]
        assert "qk_norm=True" in p.stdout, mode  # Qwen3's block, not GPT-2's
    assert rows["train"]["params"] == loading.load_pretrained(folder)[0].get_num_params()
    assert {r["method"] for r in rows["generate"]["results"]} >= {"kv_cache", "transformers"}
    p = run("bench.py", "--mode=train", *common, "--block_size=4096", check=False)
    assert_clean_error(p, words=["block_size=4096", "--block_size=128"])


@pytest.mark.serial
@pytest.mark.slow
def test_two_sharded_processes_fine_tune_a_qwen3_folder_like_one_process(folders, chat_data, tmp_path):
    """parallel=fsdp over two processes (grouped-query attention, QK-norm, an untied head, masked chat data)
    gives the losses of one process, step by step."""
    from test_ddp import assert_close, steps, torchrun
    data, _ = chat_data
    args = [f"--init_from={folders['qwen3']}", f"--data_dir={data}", "--block_size=64", "--batch_size=4",
            "--gradient_accumulation_steps=2", "--max_iters=6", "--eval_interval=6", "--eval_iters=1",
            "--log_interval=1", "--learning_rate=1e-3", "--dropout=0.0", "--device=cpu", "--compile=False",
            "--dtype=float32"]
    torchrun(*args, "--parallel=fsdp", f"--out_dir={tmp_path / 'two'}")
    run("train.py", *args, f"--out_dir={tmp_path / 'one'}", env={"OMP_NUM_THREADS": "1"})
    two, one = (steps(read_metrics(tmp_path / n)) for n in ("two", "one"))
    assert sorted(two) == sorted(one) == list(range(6))
    for i in range(6):
        assert_close(two[i]["loss"], one[i]["loss"], f"iteration {i}")


@pytest.mark.parametrize("name", ["llama-tied-rope-scaled", "qwen2", "qwen3", "mistral"])
def test_export_round_trip_gives_the_original_tensors(folders, name):
    """Loaded, then written back as transformers' class of the same name (export.py learns a Mistral from the
    folder the run started from): every tensor is the original's."""
    from gptkit import hf as hf_io
    from gptkit import hf_models
    model, _ = loading.load_pretrained(str(folders[name]))
    back = hf_io.to_transformers(model, family=hf_models.family_of_run({"config": {"init_from": str(folders[name])}}))
    original = reference(folders[name])
    assert type(back) is type(original)
    theirs, ours = original.state_dict(), back.state_dict()
    assert theirs.keys() == ours.keys()
    for k in theirs:
        assert torch.equal(theirs[k], ours[k]), k
    idx = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(back(idx).logits, original(idx).logits)


def test_token_bytes_add_up_to_the_text(folders):
    """Bits per byte divides by these: over any text, the tokens' bytes are the text's UTF-8 bytes (after the
    tokenizer's NFC), partial characters included."""
    import unicodedata
    tok = hf_tokenizer.load(str(folders["qwen2"]))
    lengths = tok.token_bytes()
    for text in TEXTS:
        nfc = unicodedata.normalize("NFC", text)
        assert sum(lengths[i] for i in tok.encode_ordinary(text)) == len(nfc.encode("utf-8")), text

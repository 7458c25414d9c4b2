"""Config files and --key=value overrides: nanoGPT's configs run unchanged, bad input is one sentence."""


from gptkit import configurator

import pytest

from gptkit.configurator import ConfigError, Key, parse
from conftest import ROOT, assert_clean_error, run

KEYS = [
    Key("out_dir", "out", "run folder"),
    Key("batch_size", 12, "batch"),
    Key("learning_rate", 6e-4, "lr"),
    Key("compile", True, "compile"),
    Key("wandb_run_name", "gpt2", "name"),
    Key("top_k", None, "top k", type=int),
    Key("betas", (0.9, 0.95), "betas"),
]


def test_literals_strings_and_conversions():
    v = parse(KEYS, ["--batch_size=32", "--learning_rate=1", "--out_dir=a=b", "--top_k=None", "--compile=false"])
    assert v["batch_size"] == 32 and v["learning_rate"] == 1.0 and type(v["learning_rate"]) is float
    assert v["out_dir"] == "a=b" and v["top_k"] is None and v["compile"] is False
    assert parse(KEYS, ["--compile=1"])["compile"] is True
    assert parse(KEYS, ["--compile=True"])["compile"] is True
    assert parse(KEYS, ["--compile"])["compile"] is True
    assert parse(KEYS, ["--top_k=5"])["top_k"] == 5
    assert parse(KEYS, ["--betas=[0.8, 0.9]"])["betas"] == (0.8, 0.9)
    assert parse(KEYS, ["--out_dir='quoted'"])["out_dir"] == "quoted"


def test_values_are_never_executed(tmp_path):
    evil = f"__import__('pathlib').Path('{tmp_path}/pwned').touch()"
    v = parse(KEYS, [f"--out_dir={evil}"])
    assert v["out_dir"] == evil and not (tmp_path / "pwned").exists()


def test_files_and_overrides_apply_left_to_right(tmp_path):
    a = tmp_path / "a.py"
    a.write_text("batch_size = 4\nout_dir = 'from-a'\n")
    b = tmp_path / "b.py"
    b.write_text("import math\n_private = 3\nbatch_size = 2 * _private\n")
    v = parse(KEYS, [str(a), "--batch_size=5", str(b)])
    assert v["batch_size"] == 6 and v["out_dir"] == "from-a"
    v = parse(KEYS, [str(a), str(b), "--batch_size=5"])
    assert v["batch_size"] == 5


@pytest.mark.parametrize("argv, words", [
    (["--batch_sise=3"], ["batch_sise", "batch_size"]),
    (["--batch_size=3.5"], ["batch_size", "integer"]),
    (["--compile=maybe"], ["compile", "True or False"]),
    (["--learning_rate=fast"], ["learning_rate", "number"]),
    (["--top_k=many"], ["top_k"]),
    (["--out_dir"], ["--out_dir=VALUE"]),
    (["nonexistent/config.py"], ["nonexistent/config.py", "does not exist"]),
    (["stray"], ["stray"]),
])
def test_bad_input_is_a_config_error(argv, words):
    with pytest.raises(ConfigError) as e:
        parse(KEYS, argv)
    for w in words:
        assert w in str(e.value)


def test_unknown_key_in_a_file_names_file_key_and_close_match(tmp_path):
    f = tmp_path / "cfg.py"
    f.write_text("learning_rat = 1e-3\n")
    with pytest.raises(ConfigError) as e:
        parse(KEYS, [str(f)])
    msg = str(e.value)
    assert str(f) in msg and "learning_rat" in msg and "learning_rate" in msg


def test_broken_file_is_one_sentence(tmp_path):
    f = tmp_path / "cfg.py"
    f.write_text("batch_size = = 3\n")
    with pytest.raises(ConfigError) as e:
        parse(KEYS, [str(f)])
    assert "line 1" in str(e.value)


# -----------------------------------------------------------------------------
# against train.py's real keys, through the command line

NANOGPT_CONFIGS = {
    # the shapes of nanoGPT's own config files: comments, arithmetic, an import, bare assignments
    "train_shakespeare_char.py": """
out_dir = 'out-shakespeare-char'
eval_interval = 250 # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10
always_save_checkpoint = False
wandb_log = False # override via command line if you like
wandb_project = 'shakespeare-char'
wandb_run_name = 'mini-gpt'
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
learning_rate = 1e-3
max_iters = 5000
lr_decay_iters = 5000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
""",
    "finetune_shakespeare.py": """
import time
out_dir = 'out-shakespeare'
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = 'shakespeare'
wandb_run_name = 'ft-' + str(time.time())
dataset = 'shakespeare'
init_from = 'gpt2-xl'
always_save_checkpoint = False
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20
learning_rate = 3e-5
decay_lr = False
""",
    "train_gpt2.py": """
wandb_log = True
wandb_project = 'owt'
wandb_run_name='gpt2-124M'
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8
max_iters = 600000
lr_decay_iters = 600000
eval_interval = 1000
eval_iters = 200
log_interval = 10
weight_decay = 1e-1
""",
    "eval_gpt2.py": """
batch_size = 8
eval_iters = 500
eval_only = True
wandb_log = False
init_from = 'gpt2'
""",
}


def test_nanogpt_config_files_run_unchanged(tmp_path):
    from gptkit import keys
    for name, text in NANOGPT_CONFIGS.items():
        path = tmp_path / name
        path.write_text(text)
        configurator.parse(keys.KEYS, [str(path)])  # every name in them is a key of train.py, every value fits


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.py")))
def test_the_projects_config_files_name_only_keys_of_their_scripts(path):
    from gptkit import keys
    configurator.parse(keys.RL_KEYS if path.startswith("config/rl_") else keys.KEYS, [str(ROOT / path)])


# every message is checked in-process above; these check that train.py passes them on with status 2
@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["--batch_sise=3"], ["batch_sise", "batch_size"]),
    (["config/nope.py"], ["config/nope.py"]),
    (["--eval_iters=0"], ["eval_iters must be at least 1"]),
])
def test_train_rejects_bad_input_with_status_2(args, words, tmp_path):
    out = tmp_path / "run"
    assert_clean_error(run("train.py", *args, f"--out_dir={out}", check=False), status=2, words=words)
    assert not out.exists()  # refused before anything is written


@pytest.mark.slow
def test_unknown_key_in_config_file_via_train(tmp_path):
    f = tmp_path / "typo.py"
    f.write_text("n_layers = 4\n")
    err = assert_clean_error(run("train.py", f, check=False), status=2)
    assert "typo.py" in err and "n_layers" in err and "n_layer" in err


@pytest.mark.slow
def test_help_lists_keys():
    p = run("train.py", "--help")
    assert "learning_rate" in p.stdout and "gradient_accumulation_steps" in p.stdout
    p = run("sample.py", "--help")
    assert "top_p" in p.stdout


def test_string_keys_take_text_that_looks_like_a_number_and_numeric_keys_take_numpy_scalars(tmp_path):
    from gptkit import keys
    values = configurator.parse(keys.KEYS, ["--out_dir=123", "--wandb_run_name=2024", "--dataset=1e3"])
    assert (values["out_dir"], values["wandb_run_name"], values["dataset"]) == ("123", "2024", "1e3")
    config = tmp_path / "numpy_config.py"
    config.write_text("import numpy as np\nlearning_rate = np.float64(3e-4) * 2\nbeta2 = np.float32(0.5)\n"
                      "max_iters = np.int64(10) * 3\n")
    values = configurator.parse(keys.KEYS, [str(config)])
    assert values["learning_rate"] == pytest.approx(6e-4) and type(values["learning_rate"]) is float
    assert values["beta2"] == 0.5 and type(values["beta2"]) is float
    assert values["max_iters"] == 30 and type(values["max_iters"]) is int
    with pytest.raises(configurator.ConfigError, match="n_layer must be an integer but got True"):
        configurator.parse(keys.KEYS, ["--n_layer=True"])  # a bool is not a number of layers


def test_the_network_keys_are_gptconfigs_fields():
    # read from model.py's text (no torch): the dataclass itself is the reference
    from dataclasses import fields

    from gptkit import keys
    from model import GPTConfig
    by_name = {k.name: k for k in keys.KEYS}
    assert "vocab_size" not in by_name  # the data's or the weights'
    for f in fields(GPTConfig):
        if f.name == "vocab_size":
            continue
        key, declared = by_name[f.name], f.metadata
        assert (key.type, key.help, key.choices) == (f.type, declared["help"], declared["choices"]), f.name
        assert [getattr(key, b) for b in ("min", "above", "max", "below")] == \
            [declared.get(b) for b in ("min", "above", "max", "below")], f.name
        assert key.default == (False if f.name == "bias" else f.default), f.name  # bias off, as nanoGPT's train.py
    assert keys.OPTION_KEYS[0] == "pos_emb" and GPTConfig().options() == {}


def test_network_keys_are_checked_as_gptconfig_declares_them():
    from gptkit import keys
    from gptkit.errors import UserError
    with pytest.raises(ConfigError, match="head_dim must be at least 0, not -1"):
        parse(keys.KEYS, ["--head_dim=-1"])
    with pytest.raises(ConfigError, match="gelu_approximate must be one of none, tanh"):
        parse(keys.KEYS, ["--gelu_approximate=fast"])
    # what involves several keys: GPTConfig's own check, one sentence with the usage status
    cfg = configurator.configure(keys.KEYS, argv=["--n_embd=32", "--n_head=5"], announce=False)
    with pytest.raises(UserError) as e:
        keys.check(cfg)
    assert e.value.status == 2 and "n_embd=32 does not divide into n_head=5 heads" in str(e.value)
    keys.check(configurator.configure(keys.KEYS, argv=["--n_embd=32", "--n_head=5", "--head_dim=8"], announce=False))

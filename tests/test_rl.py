"""Reinforcement learning (gptkit/grpo.py, rl.py): advantages and the loss against hand computations,
rollouts from the KV cache against recomputation, the rewards and their refusals, and whole runs: RL raises
the reward of a partly trained arithmetic model, a resumed run equals the uninterrupted one, and two
processes equal one."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, read_metrics, run, script
from launcher import run_ranks

from gptkit import configurator
from gptkit import grpo, runtime
from gptkit.arithmetic import META
from gptkit.errors import UserError
from gptkit.generate import sample_next
from gptkit.tokenizer import CharTokenizer
from model import GPT, GPTConfig


def tiny_model(seed=0, vocab=16, block=24):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=block, vocab_size=vocab, bias=False)).eval()


# -----------------------------------------------------------------------------
# the algorithm, by hand

def test_advantages_are_the_reward_minus_the_group_mean_and_optionally_over_its_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    adv = grpo.group_advantages(rewards)
    assert adv.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [2.25, -0.75, -0.75, -0.75]]
    # population std: group 1 is 0.5, group 3 is sqrt((2.25^2 + 3 * 0.75^2) / 4) = sqrt(27) / 4
    normed = grpo.group_advantages(rewards, normalize=True)
    s1, s3 = 0.5 + 1e-6, math.sqrt(27) / 4 + 1e-6
    want = [[0.5 / s1, -0.5 / s1, -0.5 / s1, 0.5 / s1], [0.0] * 4, [2.25 / s3, -0.75 / s3, -0.75 / s3, -0.75 / s3]]
    assert torch.allclose(normed, torch.tensor(want), atol=1e-6)


def test_the_loss_is_the_clipped_surrogate_plus_k3_summed_over_completion_tokens():
    logp = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -3.0, -1.0]])
    old = torch.tensor([[-1.3, -0.5, -1.0], [-0.1, -3.0, -9.0]])
    ref = torch.tensor([[-1.1, -0.4, -2.0], [-0.2, -2.0, -1.0]])
    A = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])  # the last column is not a completion token
    clip, kl = 0.2, 0.1
    expected = 0.0
    for b in range(2):
        for t in range(2):
            r = math.exp(logp[b, t].item() - old[b, t].item())
            a = A[b].item()
            surrogate = min(r * a, min(max(r, 1 - clip), 1 + clip) * a)
            q = ref[b, t].item() - logp[b, t].item()
            expected += -surrogate + kl * (math.exp(q) - q - 1)
    got = grpo.policy_loss(logp, old, A, mask, clip, kl, ref)
    assert abs(got.item() - expected) < 1e-6
    # row 0, token 0: ratio e^0.3 = 1.35 clipped to 1.2 for A > 0; row 1, token 0: e^-0.1 with A < 0 unclipped
    assert abs(grpo.policy_loss(logp[:1, :1], old[:1, :1], A[:1], mask[:1, :1]).item() + 1.2) < 1e-6


def test_with_one_update_the_gradient_is_reinforce_with_the_group_baseline():
    """ratio = 1 (old = the policy itself): d loss / d log p(token) = -advantage, on completion tokens only."""
    logp = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -3.0, -1.0]], requires_grad=True)
    A = torch.tensor([0.5, -1.5])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    grpo.policy_loss(logp, logp.detach(), A, mask).backward()
    assert logp.grad.tolist() == [[0.0, -0.5, -0.5], [0.0, 1.5, 0.0]]


def test_a_batch_holds_prompt_and_completion_with_only_the_completion_counted():
    X, Y, A = grpo.policy_batch([[1, 2]], [[[3, 4], [5]]], torch.tensor([[0.25, -0.25]]), pad=9)
    assert X.tolist() == [[1, 2, 3], [1, 2, 9]]
    assert Y.tolist() == [[-1, 3, 4], [-1, 5, -1]]
    assert A.tolist() == [0.25, -0.25]


def test_token_logprobs_equal_the_log_softmax_of_each_prefix_recomputed():
    model = tiny_model()
    X, Y, _ = grpo.policy_batch([[1, 2, 3]], [[[4, 5, 6], [7]]], torch.zeros(1, 2), pad=0)
    got = grpo.token_logprobs(model, X, Y, temperature=0.7)
    for b in range(2):
        for t in range(Y.size(1)):
            if Y[b, t] >= 0:
                logits, _ = model(X[b:b + 1, :t + 1])
                want = F.log_softmax(logits[0, -1] / 0.7, dim=-1)[Y[b, t]]
                assert abs(got[b, t].item() - want.item()) < 1e-5
            else:
                assert got[b, t] == 0


def test_rollouts_from_the_kv_cache_equal_recomputation():
    model = tiny_model()
    # greedy, prompts of two lengths (decoded in two batches): nanoGPT's generate, recomputing everything
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8]]
    refs = [model.generate(torch.tensor([p]), 8, temperature=0)[0, len(p):].tolist() for p in prompts]
    assert grpo.rollout(model, prompts, 1, 8, 0, None, None, None) == [[r] for r in refs]
    # stops of two tokens and of one, taken from the references: each completion ends with the first stop
    # that its reference reaches, or runs to the end
    stops = [refs[0][2:4], refs[1][3:4]]
    for p, [c], ref in zip(prompts, grpo.rollout(model, prompts, 1, 8, 0, None, stops, None), refs):
        ends = [i + len(s) for i in range(len(ref)) for s in stops if ref[i:i + len(s)] == s]
        assert c == ref[:min(ends)] if ends else c == ref
        assert ends or len(c) == 8
    # sampled: the same draws as sampling each token from the whole context recomputed, with the same generator
    prompts = [[1, 2, 3], [6, 7, 8]]
    got = grpo.rollout(model, prompts, 3, 5, 1.3, 4, None, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    idx = torch.tensor(prompts).repeat_interleave(3, dim=0)
    with torch.no_grad():
        for _ in range(5):
            logits, _ = model(idx)
            idx = torch.cat([idx, sample_next(logits[:, -1], 1.3, 4, None, gen)[:, None]], dim=1)
    assert [c for group in got for c in group] == idx[:, 3:].tolist()


def test_pass_at_k_counts_prompts_with_one_right_completion():
    assert grpo.pass_at_k(torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.0]])) == 0.5


# -----------------------------------------------------------------------------
# rewards and their refusals

def test_the_built_in_rewards():
    assert grpo.last_number_reward("so she has 1,234 apples. Then 5 - 3 = 2, so 1234", "1234") == 1.0
    assert grpo.last_number_reward("the answer is 18.", "18") == 1.0
    assert grpo.last_number_reward("18 and then 19", "18") == 0.0
    assert grpo.last_number_reward("no number", "18") == 0.0
    assert grpo.exact_reward(" 42 ", "42") == 1.0 and grpo.exact_reward("42!", "42") == 0.0
    # arithmetic: the final answer, after a scratchpad if there is one
    assert grpo.arithmetic_reward("975", "975") == 1.0 and grpo.arithmetic_reward("9750", "975") == 0.0
    assert grpo.arithmetic_reward("840+0630=804", "804") == 1.0


def test_a_reward_that_raises_or_returns_no_number_is_one_sentence_naming_the_prompt():
    with pytest.raises(UserError, match=r"raised ZeroDivisionError: division by zero on the prompt '1\+1='"):
        grpo.score(lambda p, c, a: 1 / 0, "1+1=", "2", "2")
    for bad in ("1", None, float("nan"), True):
        with pytest.raises(UserError, match=r"returned .* for the prompt '1\+1='; it must return a finite number"):
            grpo.score(lambda p, c, a: bad, "1+1=", "2", "2")
    assert grpo.score(lambda p, c, a: 2, "1+1=", "2", "2") == 2.0


def test_a_prompts_file_without_answers_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2="}\n')
    with pytest.raises(UserError, match=r'p.jsonl, line 3, has no "answer"'):
        grpo.read_prompts(str(path))
    path.write_text('{"prompt": "1+1=", "answer": 2}\n')
    assert grpo.read_prompts(str(path)) == [("1+1=", "2")]


def test_a_vocabulary_that_cannot_write_the_answers_is_refused():
    tok = CharTokenizer(META)
    with pytest.raises(UserError, match=r"cannot write the answer 'two' of p.jsonl \(it lacks 'otw'\)"):
        grpo.encode_all(tok, [("1+1=", "two")], "p.jsonl")
    assert grpo.encode_all(tok, [("1+1=", "2")], "p.jsonl") == [tok.encode("1+1=")]


def test_a_config_file_may_define_the_reward_function_and_only_that_one(tmp_path):
    keys = [configurator.Key("reward", None, "a function", type=configurator.FUNCTION), configurator.Key("x", 1, "")]
    cfg_file = tmp_path / "c.py"
    cfg_file.write_text("def helper(s):\n    return s.strip()\n\n"
                        "def reward(prompt, completion, answer):\n    return float(helper(completion) == answer)\n")
    values = configurator.parse(keys, [str(cfg_file)])
    assert values["reward"]("p", " 4 ", "4") == 1.0 and "helper" not in values
    with pytest.raises(configurator.ConfigError, match="reward must be a function defined in a config file"):
        configurator.parse(keys, ["--reward=exact"])
    cfg_file.write_text("reward = 3\n")
    with pytest.raises(configurator.ConfigError, match="reward must be a function"):
        configurator.parse(keys, [str(cfg_file)])


def test_updates_raise_a_reward_on_a_toy_task():
    """From a random model, rewarding completions that contain token 7 makes nearly every one contain it."""
    model = tiny_model(seed=1)
    plan, dist = runtime.plan_for("cpu", "float32"), runtime.Dist()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    prompts, gen, rewards = [[1, 2, 3], [4, 5, 6]], torch.Generator().manual_seed(0), []
    for _ in range(12):
        completions = grpo.rollout(model, prompts, 8, 4, 1.0, None, None, gen)
        r = torch.tensor([[float(7 in c) for c in group] for group in completions])
        rewards.append(r.mean().item())
        batch = grpo.policy_batch(prompts, completions, grpo.group_advantages(r), pad=0)
        grpo.update(model, model, optimizer, [batch], plan, dist, 0.2, 0.0, None, 1.0, 0.0, 1)
    assert rewards[0] < 0.5 and min(rewards[-3:]) > 0.9, rewards


# -----------------------------------------------------------------------------
# whole runs

# 2-digit addition, trained to be right on about 80% of held-out problems: what RL starts from
ADDER = ["config/train_addition.py", "--digits=2", "--n_layer=2", "--n_embd=64", "--n_head=2", "--batch_size=128",
         "--max_iters=70", "--lr_decay_iters=70", "--warmup_iters=5", "--eval_interval=70", "--eval_iters=2",
         "--block_size=16", "--learning_rate=1e-2", "--muon_lr=0.05", "--log_interval=100"]
RL = ["--device=cpu", "--dtype=float32", "--eval_prompts=256", "--batch_prompts=32", "--learning_rate=3e-4"]


@pytest.fixture(scope="module")
def adder(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "adder"
    run("train.py", *ADDER, f"--out_dir={out}")
    return out


def evals(out):
    return [r for r in read_metrics(out) if "val_pass1" in r]


@pytest.mark.slow
def test_rl_raises_the_held_out_reward_of_a_partly_trained_adder(adder, tmp_path):
    sft = [r for r in read_metrics(adder) if "val_accuracy" in r][-1]
    assert 0.5 <= sft["val_accuracy"] <= 0.9, sft  # right sometimes: something to learn
    out = tmp_path / "rl"
    p = run("rl.py", *RL, f"--init_from={adder}", f"--out_dir={out}", "--max_iters=40", "--eval_interval=40")
    assert "task: 2-digit addition problems written 12+45=75" in p.stdout
    first, last = evals(out)
    # greedy completions through the KV cache get right exactly the held-out problems train.py's teacher-forced
    # exact match counted (the same 256, in the same order)
    assert first["val_pass1"] == sft["val_accuracy"]
    assert last["val_reward"] > first["val_reward"] + 0.02, (first, last)
    assert (out / "loss.png").stat().st_size > 0 and (out / "ckpt.pt").exists()
    # the run is one of generated problems, as the one it started from: sample.py asks in that format
    assert json.loads((out / "config.json").read_text())["dataset"] == "addition"
    assert 'sample.py --out_dir=' in p.stdout and '--start="12+45="' in p.stdout


def rl_run(adder, out, *extra):
    # the KL term and two updates per batch of rollouts: a resume must bring back the reference and the ratio
    return run("rl.py", *RL, f"--init_from={adder}", f"--out_dir={out}", "--eval_prompts=64", "--batch_prompts=8",
               "--group_size=4", "--gradient_accumulation_steps=2", "--kl=0.05", "--updates_per_rollout=2",
               "--eval_interval=3", *extra)


@pytest.mark.slow
def test_a_resumed_rl_run_equals_the_uninterrupted_one(adder, tmp_path):
    from test_resume import assert_same, without_timing
    ref = tmp_path / "ref"
    rl_run(adder, ref, "--max_iters=6", "--keep_last=2")
    out = tmp_path / "resumed"
    shutil.copytree(ref, out)
    shutil.copyfile(out / "ckpt_0000003.pt", out / "ckpt.pt")
    p = run("rl.py", "--init_from=resume", f"--out_dir={out}", "--device=cpu", "--dtype=float32")
    assert f"resuming from {out / 'ckpt.pt'} at iteration 3" in p.stdout
    assert without_timing(read_metrics(out)) == without_timing(read_metrics(ref))
    a, b = (torch.load(d / "ckpt.pt", weights_only=True) for d in (ref, out))
    for c in (a, b):
        c.pop("elapsed_s"), c["config"].pop("init_from"), c["config"].pop("out_dir")
    assert_same(a, b)


@pytest.mark.serial
@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(adder, tmp_path):
    """The rollouts of micro-batch m come from a generator of (seed, iteration, m), whichever process
    samples them; the loss is over every process's tokens."""
    rl_run(adder, tmp_path / "one", "--max_iters=3")
    ranks = run_ranks("rl.py", [*RL, f"--init_from={adder}", f"--out_dir={tmp_path / 'two'}", "--eval_prompts=64",
                                "--batch_prompts=8", "--group_size=4", "--gradient_accumulation_steps=2", "--kl=0.05",
                                "--updates_per_rollout=2", "--eval_interval=3", "--max_iters=3"],
                      env={"OMP_NUM_THREADS": "1"})
    for rank, p in enumerate(ranks):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{p.stderr[-3000:]}"
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["iter"] for r in one] == [r["iter"] for r in two] == [0, 0, 1, 2, 3]
    for a, b in zip(one, two):
        for k in ("reward", "right", "length", "val_pass1", "val_reward", "val_pass_k", "val_length"):
            assert a.get(k) == b.get(k), (k, a, b)  # the same rollouts, to the token
        for k in ("loss", "grad_norm"):
            assert (k in a) == (k in b) and abs(a.get(k, 0) - b.get(k, 0)) <= 1e-5, (k, a, b)
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"] for d in ("one", "two"))
    assert all((a[k] - b[k]).abs().max() <= 1e-5 for k in a)


# -----------------------------------------------------------------------------
# a user's reward, and the refusals

@pytest.mark.slow
def test_a_reward_function_from_the_config_file_and_its_mistakes(adder, tmp_path):
    cfg = tmp_path / "mine.py"
    cfg.write_text("max_iters = 1\neval_interval = 1\neval_prompts = 8\nbatch_prompts = 4\n\n"
                   "def reward(prompt, completion, answer):\n    return float(completion == answer)\n")
    out = tmp_path / "mine"
    p = run("rl.py", cfg, f"--init_from={adder}", f"--out_dir={out}", "--device=cpu")
    assert "reward: reward() of the config file" in p.stdout
    assert json.loads((out / "config.json").read_text())["reward"] == f"reward() of {cfg}"
    # resumed without it, the run would be rewarded by something else
    e = script("rl.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=2")
    assert f"was rewarded by reward() of {cfg}; resume it with that config file" in str(e) and e.status == 2
    for body, said in (("    return 1 / 0", "the reward function raised ZeroDivisionError: division by zero on the "
                                           "prompt '"),
                       ("    return 'yes'", "the reward function returned 'yes' (str) for the prompt '")):
        cfg.write_text(f"eval_prompts = 8\n\ndef reward(prompt, completion, answer):\n{body}\n")
        e = script("rl.py", cfg, f"--init_from={adder}", f"--out_dir={tmp_path / 'bad'}", "--device=cpu")
        assert said in str(e), str(e)
        assert not (tmp_path / "bad").exists()  # found before the run wrote anything


@pytest.mark.slow
def test_prompts_files_without_answers_or_beyond_the_vocabulary_are_refused(adder, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "12+34=", "answer": "64"}\n{"prompt": "11+11="}\n')
    e = script("rl.py", f"--init_from={adder}", f"--prompts={prompts}", f"--out_dir={tmp_path / 'o'}")
    assert 'p.jsonl, line 2, has no "answer"' in str(e)
    prompts.write_text("".join(json.dumps(dict(prompt=f"{a:02d}+{a:02d}=", answer="even")) + "\n" for a in range(9)))
    e = script("rl.py", f"--init_from={adder}", f"--prompts={prompts}", "--eval_prompts=4",
               f"--out_dir={tmp_path / 'o'}")
    assert "the model's vocabulary cannot write the answer 'even'" in str(e)
    assert not (tmp_path / "o").exists()


# -----------------------------------------------------------------------------
# the GSM8K recipe's files, and a chat fine-tune asked in its template

GSM8K = [dict(question="Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                       "May. How many clips did Natalia sell altogether in April and May?",
              answer="Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                     "altogether in April and May.\n#### 72"),
          dict(question="A shop sells 1,200 pens a week. How many does it sell in 2 weeks?",
               answer="It sells 1,200*2 = <<1200*2=2400>>2,400 pens.\n#### 2,400")]


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory):
    """GSM8K's files as data/gsm8k/prepare.py writes them, from two problems in the authors' format."""
    folder = tmp_path_factory.mktemp("gsm8k")
    for split in ("train", "test"):
        (folder / "in").mkdir(exist_ok=True)
        (folder / "in" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GSM8K))
    run("data/gsm8k/prepare.py", f"--input={folder / 'in'}", f"--out={folder / 'out'}")
    return folder / "out"


def test_gsm8k_becomes_prompts_with_answers_and_worked_conversations(gsm8k):
    rows = [json.loads(line) for line in (gsm8k / "train.jsonl").read_text().splitlines()]
    assert rows == [dict(prompt=GSM8K[0]["question"], answer="72"), dict(prompt=GSM8K[1]["question"], answer="2400")]
    sft = [json.loads(line) for line in (gsm8k / "sft.jsonl").read_text().splitlines()]
    assert sft[1]["messages"] == [dict(role="user", content=GSM8K[1]["question"]),
                                  dict(role="assistant", content="It sells 1,200*2 = 2,400 pens.\nThe answer is 2400.")]
    # the worked solution earns the reward the RL stage gives
    assert grpo.last_number_reward(sft[0]["messages"][1]["content"], rows[0]["answer"]) == 1.0


@pytest.mark.slow
def test_a_chat_fine_tune_is_asked_in_its_template_and_stays_one(gsm8k, gpt2_encoding, tmp_path):
    run("data/chat/prepare.py", gsm8k / "sft.jsonl", f"--out={tmp_path / 'chat'}")
    run("train.py", *TINY, "--dataset=chat", f"--data_dir={tmp_path / 'chat'}", f"--out_dir={tmp_path / 'sft'}",
        "--max_iters=1", "--eval_iters=1", "--block_size=64", "--batch_size=2")
    p = run("rl.py", f"--init_from={tmp_path / 'sft'}", f"--prompts={gsm8k / 'train.jsonl'}",
            f"--val_prompts={gsm8k / 'test.jsonl'}", "--answer_match=last_number", f"--out_dir={tmp_path / 'rl'}",
            "--max_new_tokens=6", "--max_iters=1", "--batch_prompts=2", "--group_size=2", "--device=cpu")
    assert "2 to train on, 2 held out" in p.stdout and "next: python chat.py" in p.stdout
    ckpt = torch.load(tmp_path / "rl" / "ckpt.pt", weights_only=True)
    assert ckpt["chat_template"] == torch.load(tmp_path / "sft" / "ckpt.pt", weights_only=True)["chat_template"]


@pytest.mark.slow
def test_lora_trains_the_adapters_alone_and_resumes(adder, tmp_path):
    out = tmp_path / "lora"
    rl_run(adder, out, "--lora_rank=4", "--lora_targets=c_attn", "--max_iters=3")
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert sorted(ckpt["model"]) == [f"transformer.h.{i}.attn.c_attn.lora_{ab}" for i in (0, 1) for ab in "AB"]
    assert all(ckpt["model"][f"transformer.h.{i}.attn.c_attn.lora_B"].abs().max() > 0 for i in (0, 1))
    p = run("rl.py", "--init_from=resume", f"--out_dir={out}", "--max_iters=4", "--device=cpu")
    assert "LoRA rank 4" in p.stdout and [r["iter"] for r in read_metrics(out)][-2:] == [3, 4]

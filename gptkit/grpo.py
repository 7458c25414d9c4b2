"""
Reinforcement learning from a program's rewards, GRPO-style (Shao et al. 2024, DeepSeekMath, arxiv.org/abs/
2402.03300): for each prompt sample a group of completions, score each with the reward, and push up the
tokens of the completions that did better than their group's mean. rl.py runs it; this module holds the
pieces, each tested against a hand computation or a recomputation:

    completions = rollout(model, prompts, group, max_new, temperature, top_k, stops, generator)
    advantages = group_advantages(rewards, normalize)               # (P, G): reward - the group's mean
    X, Y, A = policy_batch(prompts, completions, advantages, ...)  # rows, completion targets, advantages
    loss = policy_loss(logp, old_logp, A, mask, clip, kl, ref_logp) / n  # token-level, summed then divided

The loss of a completion token t of a row with advantage A and probability ratio r = p(t) / p_old(t) is
PPO's clipped surrogate, -min(r A, clip(r, 1 - eps, 1 + eps) A) (Schulman et al. 2017), plus, when asked,
kl x the estimate exp(q) - q - 1 with q = log p_ref(t) - log p(t) of the KL divergence to the starting
model (Schulman's "k3", which GRPO uses: never negative, unbiased). With one update per batch of rollouts
(the default) r = 1 and the clipping does nothing: the loss's gradient is REINFORCE's with the group mean
as baseline. The loss is summed over every completion token of a step and divided by their count (over
all processes), so a long completion weighs by its tokens, not as one row (the "token-level" loss of
DAPO, Yu et al. 2025, where GRPO averaged each row first).

Rewards are numbers from a program: the built-in exact answer of the generated arithmetic problems, exact
match or last-number match for a JSONL file of {"prompt", "answer"}, or a user's function
reward(prompt, completion, answer) from the config file. A reward that raises or returns something other
than a finite number stops the run with a sentence naming the prompt.
"""

import json
import math
import os
import re

import torch
import torch.nn.functional as F

from gptkit import runtime
from gptkit.errors import USAGE, UserError
from gptkit.generate import generate_stream
from gptkit.tokenizer import text_ids

# -----------------------------------------------------------------------------
# rewards


def exact_reward(completion, answer):
    """1.0 when the completion, stripped of surrounding whitespace, is the answer, else 0.0."""
    return float(completion.strip() == str(answer).strip())


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text):
    """The last number written in text (thousands separators dropped), as a float; None if it has none."""
    found = NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def last_number_reward(completion, answer):
    """1.0 when the last number in the completion equals the answer's number (GSM8K's rule: the final
    number is the answer, whatever reasoning comes before it), else 0.0."""
    want = last_number(str(answer))
    got = last_number(completion)
    return float(want is not None and got is not None and got == want)


def arithmetic_reward(completion, answer):
    """1.0 when the completion's final answer (after its last '=', so a scratchpad before it is not judged)
    is exactly the problem's, else 0.0."""
    return float(completion.rsplit("=", 1)[-1] == answer.rsplit("=", 1)[-1])


MATCHES = {"exact": exact_reward, "last_number": last_number_reward}


def score(reward, prompt, completion, answer):
    """reward(prompt, completion, answer) as a float, or one sentence: a function that raises or returns
    something other than a finite number is the user's to fix, and the prompt it failed on says where."""
    try:
        value = reward(prompt, completion, answer)
    except Exception as e:  # noqa: BLE001  a user's function: whatever it raises becomes one sentence
        raise UserError(f"the reward function raised {type(e).__name__}: {e} on the prompt {prompt!r} with the "
                        f"completion {completion!r}; fix the function (it must return a number for any completion, "
                        f"0.0 for one it cannot parse)") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"the reward function returned {value!r} ({type(value).__name__}) for the prompt {prompt!r}; "
                        f"it must return a finite number (e.g. 1.0 for a right completion, 0.0 for a wrong one)")
    return float(value)


def builtin(match):
    """The reward(prompt, completion, answer) of a match rule's name."""
    rule = MATCHES[match]
    return lambda prompt, completion, answer: rule(completion, answer)


# -----------------------------------------------------------------------------
# prompts


def read_prompts(path):
    """[(prompt, answer)] of a JSONL file with a "prompt" and an "answer" on each line; one sentence for a
    missing file, a line that is not such an object, or a file with no prompts."""
    if not os.path.isfile(path):
        raise UserError(f"prompts file {path} does not exist; give a JSONL file with one "
                        f'{{"prompt": ..., "answer": ...}} per line', status=USAGE)
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise UserError(f"{path}, line {n}, is not JSON; each line must be one "
                                f'{{"prompt": ..., "answer": ...}} object') from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f'{path}, line {n}, has no "prompt" text; each line must be one '
                                f'{{"prompt": ..., "answer": ...}} object')
            if row.get("answer") is None:
                raise UserError(f'{path}, line {n}, has no "answer": the reward compares each completion with it; '
                                f'give every prompt its answer (a reward function of your own receives it too)')
            pairs.append((row["prompt"], str(row["answer"])))
    if not pairs:
        raise UserError(f"prompts file {path} holds no prompts", status=USAGE)
    return pairs


def encode_all(tok, pairs, where):
    """Each prompt's token ids; one sentence when the vocabulary cannot write a prompt or an answer (a
    model that cannot write the answer cannot be rewarded for it)."""
    ids = []
    for prompt, answer in pairs:
        for what, text in (("prompt", prompt), ("answer", answer)):
            try:
                tok.encode(text)
            except UserError:
                unknown = sorted({c for c in text if c not in getattr(tok, "stoi", {c: 0})})
                raise UserError(f"the model's vocabulary cannot write the {what} {text!r} of {where} (it lacks "
                                f"{''.join(unknown)!r}): a model can only be rewarded for answers it can write; "
                                f"use prompts in its vocabulary, or a model trained on such text") from None
        ids.append(tok.encode(prompt))
    return ids


class Asking:
    """How prompts are put to a model and where its completions end. A chat model (tok.chat_template: a
    fine-tuned run's transcript or a Hugging Face model's Jinja template) is asked in its template, as chat.py
    asks it, and its completion ends at the template's end of turn, for a Jinja template at any of the model's
    stop tokens (the end of turn is one of them). Other models get the prompt as it is and end at their
    end-of-text token, or at a newline where they have none. `stop`: a text that ends completions instead."""

    def __init__(self, tok, block_size, stop=""):
        self.tok, self.block_size, self.ids = tok, block_size, {}  # ids: prompt text -> token ids, encoded once
        self.template = tok.chat_template
        stop = stop or getattr(self.template, "turn_end", "")
        if stop:
            try:
                self.stops = [text_ids(tok, stop)]
            except UserError:
                raise UserError(f"stop={stop!r} has characters outside the model's vocabulary; give a stop it can "
                                f"write (e.g. a newline)", status=USAGE) from None
        else:
            self.stops = [[i] for i in tok.stop_ids] or [text_ids(tok, "\n")]

    def encode(self, prompt):
        """The prompt's ids as the model is asked it (in a template: at most block_size of them, its end)."""
        if prompt not in self.ids:
            self.ids[prompt] = (self.template.fit(self.tok.encode, [], prompt, self.block_size) if self.template
                                else self.tok.encode(prompt))
        return self.ids[prompt]


class ArithmeticPrompts:
    """The generated problems a run was trained on (an arithmetic.ProblemFormat), as (prompt, answer) pairs:
    training draws from the training set, the evaluation takes the held-out problems in their fixed order
    (gptkit/arithmetic.py: no draw can ever be one of them). The answer is the final one, after the
    scratchpad where the format has one."""

    def __init__(self, fmt, block_size, seed):
        from gptkit.arithmetic import Arithmetic
        self.fmt, self.seed = fmt, seed
        self.problems = Arithmetic(fmt.task, fmt.digits, fmt.reverse, block_size, 1, seed, "cpu")
        self.reward = lambda prompt, completion, answer: arithmetic_reward(completion, answer)
        self.longest_answer = fmt.longest_answer
        self.describe = fmt.describe()

    def _pairs(self, a, b):
        return [(p, s.rsplit("=", 1)[-1]) for p, s in map(self.fmt.problem, a.tolist(), b.tolist())]

    def train(self, iteration, micro_step, n):
        import numpy as np
        return self._pairs(*self.problems.training_problems(np.random.default_rng([self.seed, 0, iteration,
                                                                                      micro_step]), n))

    def held_out(self, n):
        return self._pairs(*self.problems.held_out_problems(n))


class FilePrompts:
    """Prompts and answers of JSONL files: training draws prompts of `train` at random (a function of seed,
    iteration and micro-step), the evaluation takes those of `held` in order."""

    def __init__(self, train, held, reward, seed, describe):
        self.train_pairs, self.held_pairs, self.reward, self.seed = train, held, reward, seed
        self.longest_answer = None
        self.describe = describe

    def train(self, iteration, micro_step, n):
        import numpy as np
        rng = np.random.default_rng([self.seed, 0, iteration, micro_step])
        return [self.train_pairs[i] for i in rng.integers(0, len(self.train_pairs), size=n).tolist()]

    def held_out(self, n):
        return self.held_pairs[:n]


# -----------------------------------------------------------------------------
# rollouts


def stop_length(tokens, stops):
    """The length of the stop sequence (of `stops`, lists of token ids) that tokens end with; 0 if none."""
    return next((len(s) for s in stops if s and len(tokens) >= len(s) and tokens[-len(s):] == s), 0)


@torch.no_grad()
def rollout(model, prompts, group, max_new_tokens, temperature, top_k, stops, generator):
    """`group` completions of each prompt (lists of token ids), sampled through the KV cache: prompts of
    one length are decoded together, each repeated `group` times, in one batch. A completion ends with
    the first of `stops` (lists of token ids, such as a chat template's end-of-turn marker or a model's
    stop tokens; kept, so that the model learns to stop) or after max_new_tokens; decoding ends when every
    row has stopped. Returns a list per prompt of `group` token lists. The tokens drawn depend on the
    prompts, their order and the generator only, so a (seed, iteration, micro-step) generator gives the
    same rollouts on any process."""
    device = model.transformer.wte.weight.device
    block = model.config.block_size
    stops = [list(s) for s in stops or ()]
    out = [[None] * group for _ in prompts]
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    was_training = model.training
    model.eval()
    try:
        for length, which in by_length.items():
            idx = torch.tensor([prompts[i] for i in which], dtype=torch.long, device=device)
            idx = idx.repeat_interleave(group, dim=0)  # (P * G, length): each prompt's group side by side
            rows, done = [[] for _ in range(len(idx))], [False] * len(idx)
            # never past the context: a sliding window would change what the completion is conditioned on
            room = min(max_new_tokens, block - length)
            for nxt in generate_stream(model, idx, room, temperature, top_k, generator=generator):
                for r, token in enumerate(nxt.tolist()):
                    if not done[r]:
                        rows[r].append(token)
                        done[r] = stop_length(rows[r], stops) > 0
                if all(done):
                    break
            for r, tokens in enumerate(rows):
                out[which[r // group]][r % group] = tokens
    finally:
        model.train(was_training)
    return out


def group_advantages(rewards, normalize=False, eps=1e-6):
    """(P, G) rewards -> (P, G) advantages: each reward minus its group's mean, and with normalize divided
    by the group's standard deviation (population: divisor G) + eps. A group whose completions all scored
    alike has advantages 0: it teaches nothing."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if normalize:
        adv = adv / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv


def policy_batch(prompts, completions, advantages, pad):
    """(X, Y, A) of one micro-batch of rollouts, a row per completion: X the prompt and completion (B, T),
    Y the next tokens with -1 everywhere but at the completion's tokens (what the loss counts), A the
    row's advantage (B,). Rows are padded with `pad` to the longest."""
    rows, targets, adv = [], [], []
    for p, group, a in zip(prompts, completions, advantages.tolist()):
        for c, ai in zip(group, a):
            seq = p + c
            rows.append(seq[:-1])
            targets.append([-1] * (len(p) - 1) + c)
            adv.append(ai)
    T = max(len(r) for r in rows)
    X = torch.tensor([r + [pad] * (T - len(r)) for r in rows], dtype=torch.long)
    Y = torch.tensor([t + [-1] * (T - len(t)) for t in targets], dtype=torch.long)
    return X, Y, torch.tensor(adv, dtype=torch.float32)


def token_logprobs(model, X, Y, temperature=1.0):
    """log p(Y | X) of each position (B, T) under model (which may be DDP-wrapped: its forward is the one
    called), at the sampling temperature; 0 where Y is -1. The targets make the model return the logits
    of every position."""
    logits, _ = model(X, Y)
    if temperature not in (0, 1):
        logits = logits / temperature
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, Y.clamp(min=0)[..., None])[..., 0] * (Y >= 0)


def policy_loss(logp, old_logp, advantages, mask, clip=0.2, kl=0.0, ref_logp=None):
    """The summed loss of the completion tokens (mask): PPO's clipped surrogate with each row's advantage,
    plus kl x the k3 estimate of KL(policy || reference) where kl > 0. Divide by the step's token count."""
    A = advantages[:, None]  # (B, 1)
    ratio = torch.exp(logp - old_logp)
    per_token = -torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A)
    if kl > 0:
        q = ref_logp - logp
        per_token = per_token + kl * (torch.exp(q) - q - 1)
    return (per_token * mask).sum()


def pass_at_k(rewards):
    """(P, k) rewards -> the share of prompts with at least one completion of reward >= 1 (a right answer
    for the built-in rewards, which give 1 or 0)."""
    return (rewards >= 1).any(dim=1).float().mean().item()


def seeded(device, *key):
    """A torch generator on device seeded by a tuple of integers (seed, kind, iteration, micro-step)."""
    import numpy as np
    return torch.Generator(device).manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def scored(reward, tok, pairs, completions, stops):
    """(P, G) rewards of the completions of (prompt, answer) pairs, each decoded without the stop it ends
    with."""
    rows = []
    for (prompt, answer), group in zip(pairs, completions):
        texts = [tok.decode(c[:len(c) - stop_length(c, stops)]) for c in group]
        rows.append([score(reward, prompt, t, answer) for t in texts])
    return torch.tensor(rows, dtype=torch.float32)


@torch.no_grad()
def evaluate(model, task, reward, tok, encode, n_prompts, k, chunk, max_new_tokens, temperature, top_k, stops,
             seed, iteration, plan, dist):
    """Figures on the first n_prompts held-out prompts, shared out over the processes in chunks of `chunk`
    prompts (chunk c on process c % world_size, its samples drawn by a generator of (seed, c) alone, so
    they do not depend on how many processes share the work): val_pass1, the share a greedy completion
    gets right (reward >= 1); val_reward, the mean reward of k sampled completions each; val_pass_k, the
    share with one of those k right; val_length, their mean length in tokens."""
    pairs = task.held_out(n_prompts)
    totals = torch.zeros(5, device=plan.device)  # greedy right, sampled reward sum, any right, tokens, prompts
    for c in range(dist.rank, -(-len(pairs) // chunk), dist.world_size):
        part = pairs[c * chunk:(c + 1) * chunk]
        ids = [encode(p) for p, _ in part]
        with plan.autocast_context():
            greedy = rollout(model, ids, 1, max_new_tokens, 0, None, stops, None)
            sampled = rollout(model, ids, k, max_new_tokens, temperature, top_k, stops,
                              seeded(plan.device, seed, 1, iteration, c))
        g = scored(reward, tok, part, greedy, stops)
        r = scored(reward, tok, part, sampled, stops)
        totals += torch.tensor([float((g >= 1).sum()), float(r.sum()), float((r >= 1).any(dim=1).sum()),
                                float(sum(len(x) for group in sampled for x in group)), float(len(part))],
                               device=plan.device)
    totals = runtime.all_reduce_sum(totals, dist).tolist()
    n = max(totals[4], 1.0)
    return dict(val_pass1=totals[0] / n, val_reward=totals[1] / (n * k), val_pass_k=totals[2] / n,
                val_length=totals[3] / (n * k))


def update(model, train_model, optimizer, batches, plan, dist, clip, kl, ref_model, temperature, grad_clip,
           updates, flags=()):
    """`updates` optimizer steps on this process's micro-batches of rollouts [(X, Y, A)], each step the
    token-level loss over every process's completion tokens; DDP synchronises the gradients on the last
    micro-batch of each step. With updates > 1 the ratio is taken against the policy that sampled
    (its log-probabilities computed once, before the first update), and clipping bounds how far the later
    steps move. A step whose loss or gradient norm is not finite leaves the weights untouched.
    Returns (mean loss per token, gradient norm, finite, flags summed over processes) of the last step."""
    params = [p for p in model.parameters() if p.requires_grad]
    count = torch.tensor([float(sum((Y >= 0).sum().item() for _, Y, _ in batches))], device=plan.device)
    tokens = max(runtime.all_reduce_sum(count, dist).item(), 1.0)

    def logprobs(m):
        with torch.no_grad(), plan.autocast_context():
            return [token_logprobs(m, X, Y, temperature) for X, Y, _ in batches]

    old = logprobs(model) if updates > 1 else None  # the sampling policy, before any update
    ref = logprobs(ref_model) if kl > 0 else [None] * len(batches)
    for _ in range(updates):
        loss_sum = torch.zeros((), device=plan.device)
        for j, (X, Y, A) in enumerate(batches):
            if dist.enabled:
                train_model.require_backward_grad_sync = j == len(batches) - 1
            with plan.autocast_context():
                logp = token_logprobs(train_model, X, Y, temperature)
            old_logp = old[j] if old is not None else logp.detach()
            # DDP averages gradients over processes: scaled by world_size, the sum is over every token
            loss = policy_loss(logp, old_logp, A, (Y >= 0).float(), clip, kl, ref[j]) * dist.world_size / tokens
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        got = flags() if callable(flags) else flags
        stats = runtime.all_reduce_sum(torch.stack([loss_sum, *(torch.tensor(float(f), device=plan.device)
                                                                 for f in got)]), dist)
        loss, *summed = stats.tolist()
        loss /= dist.world_size
        grad_norm = grad_norm.item()
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not finite:
            break
    return loss, grad_norm, finite, summed

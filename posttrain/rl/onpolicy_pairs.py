"""On-policy preference pairs: sample K answers per prompt from the policy, score them with a reward
model, and pair the best against the worst (iterative DPO, posttrain/stages/iterative_dpo.py).

Also measured on the same samples: the mean reward (the policy's own answers, judged), and the
sequence KL from an anchor model (the stage's parent): the mean over answers of
sum_t [log p_policy(y_t) - log p_anchor(y_t)], an unbiased estimate of KL(policy || anchor) when the
answers are sampled at temperature 1 (at another temperature, an estimate of the tempered policy's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posttrain.rl.rollout import response_logprobs, sample


@dataclass
class SampledRound:
    """What one round's sampling found: per prompt, K answers with their scores; the pairs; the figures."""

    prompts: list[list[dict]]
    answers: list[list[str]]  # [prompt][k]
    scores: list[list[float]]  # [prompt][k], after the missing-EOS penalty
    pairs: list[dict] = field(default_factory=list)  # {"prompt", "chosen", "rejected"} as DPO reads them
    no_pair: dict[str, int] = field(default_factory=dict)  # prompts that gave no pair, by reason
    stats: dict[str, float] = field(default_factory=dict)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


@torch.no_grad()
def sample_round(policy, anchor, tokenizer, scorer, prompts: list[list[dict]], samples_per_prompt: int, *, max_length: int,
                 max_new_tokens: int, temperature: float, top_p: float, missing_eos_penalty: float | None,
                 min_reward_gap: float, batch_size: int) -> SampledRound:
    """K answers to each prompt from `policy`, scored by `scorer`; best against worst per prompt."""
    policy.eval()
    anchor.eval()
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    texts, scores, ended, kls = [], [], [], []
    for start in range(0, len(repeated), batch_size):
        batch = repeated[start: start + batch_size]
        rollout = sample(policy, tokenizer, batch, max_length, max_new_tokens, temperature, top_p)
        decoded = [tokenizer.decode(ids[mask > 0], skip_special_tokens=True).strip() for ids, mask in zip(rollout.response_ids, rollout.mask)]
        raw = torch.tensor(scorer.score([p + _assistant(t) for p, t in zip(batch, decoded)]))
        if missing_eos_penalty:
            raw = raw - missing_eos_penalty * (~rollout.ended_with_eos).float()
        policy_lp, _ = response_logprobs(policy, rollout, 1.0)
        anchor_lp, _ = response_logprobs(anchor, rollout, 1.0)
        kls += ((policy_lp - anchor_lp) * rollout.mask).sum(dim=1).tolist()
        texts += decoded
        scores += raw.tolist()
        ended += rollout.ended_with_eos.tolist()

    k = samples_per_prompt
    found = SampledRound(prompts, [texts[i * k:(i + 1) * k] for i in range(len(prompts))], [scores[i * k:(i + 1) * k] for i in range(len(prompts))])
    no_pair = {"identical_answers": 0, "reward_gap_too_small": 0}
    gaps = []
    for prompt, answers, marks in zip(found.prompts, found.answers, found.scores):
        best = max(range(k), key=lambda i: marks[i])
        worst = min(range(k), key=lambda i: marks[i])
        if answers[best] == answers[worst]:
            no_pair["identical_answers"] += 1
            continue
        gap = marks[best] - marks[worst]
        if gap <= min_reward_gap:
            no_pair["reward_gap_too_small"] += 1
            continue
        gaps.append(gap)
        found.pairs.append({"prompt": prompt, "chosen": _assistant(answers[best]), "rejected": _assistant(answers[worst])})
    found.no_pair = no_pair
    found.stats = {
        "reward": sum(scores) / len(scores),
        "reward_best": sum(max(s) for s in found.scores) / len(prompts),
        "kl": sum(kls) / len(kls),
        "eos_rate": sum(ended) / len(ended),
        "response_words": sum(len(t.split()) for t in texts) / len(texts),
        "pairs": len(found.pairs),
        "reward_gap": sum(gaps) / len(gaps) if gaps else 0.0,
    }
    return found

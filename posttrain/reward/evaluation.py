"""How good is a reward model: held-out pairwise accuracy, margins, and length bias."""

from __future__ import annotations

import statistics

from posttrain.reward.scorer import RewardScorer


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def evaluate_pairs(scorer: RewardScorer, pairs: list[dict]) -> dict:
    """Scores every held-out pair; accuracy is the share where chosen outscores rejected."""
    chosen = scorer.score([p["prompt"] + p["chosen"] for p in pairs])
    rejected = scorer.score([p["prompt"] + p["rejected"] for p in pairs])
    margins = [c - r for c, r in zip(chosen, rejected)]
    lengths = [(len(p["chosen"][-1]["content"]), len(p["rejected"][-1]["content"])) for p in pairs]
    unequal = [(m, lc, lr) for m, (lc, lr) in zip(margins, lengths) if lc != lr]
    # Length bias: how often the longer answer gets the higher reward, next to how often
    # the longer answer is the preferred one in the data. Far apart = the model learned length.
    longer_wins = sum((m > 0) == (lc > lr) for m, lc, lr in unequal) / len(unequal) if unequal else None
    longer_preferred = sum(lc > lr for _, lc, lr in unequal) / len(unequal) if unequal else None
    return {
        "held_out_pairs": len(pairs),
        "held_out_accuracy": sum(m > 0 for m in margins) / len(margins),
        "margin_mean": statistics.fmean(margins),
        "margin_p10": _quantile(margins, 0.1),
        "margin_p50": _quantile(margins, 0.5),
        "margin_p90": _quantile(margins, 0.9),
        "longer_answer_wins": longer_wins,
        "longer_answer_preferred_in_data": longer_preferred,
    }

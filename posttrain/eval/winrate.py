"""Reward-model judgements of generations: mean reward per model, and win rate against a baseline.

Win rate counts a tie as half a win; the 95% interval is Wilson's on the decisive share
plus ties (a plain, well-understood interval for a proportion). Mean answer lengths of both
sides are reported beside it, so a win bought with length is visible.
"""

from __future__ import annotations

import math
import statistics

TIE_TOLERANCE = 1e-4  # rewards closer than this are a tie


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def win_rate(candidate_rewards: list[float], baseline_rewards: list[float], candidate_texts: list[str], baseline_texts: list[str]) -> dict:
    wins = sum(c - b > TIE_TOLERANCE for c, b in zip(candidate_rewards, baseline_rewards))
    ties = sum(abs(c - b) <= TIE_TOLERANCE for c, b in zip(candidate_rewards, baseline_rewards))
    n = len(candidate_rewards)
    low, high = wilson_interval(wins + ties / 2, n)
    return {
        "n": n, "wins": wins, "ties": ties, "losses": n - wins - ties,
        "win_rate": (wins + ties / 2) / n if n else None,
        "ci95": [low, high],
        "mean_words_candidate": statistics.fmean(len(t.split()) for t in candidate_texts),
        "mean_words_baseline": statistics.fmean(len(t.split()) for t in baseline_texts),
    }

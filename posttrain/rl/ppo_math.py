"""The arithmetic of PPO for language models, as small pure functions on tensors.

Shapes: [batch, response_length]. `mask` is 1 for response tokens that count and 0 for
padding and for everything after the first EOS; every reduction below respects it.
Kept apart from the stage so each piece is unit-tested against hand-computed values.
"""

from __future__ import annotations

from typing import Callable

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries."""
    mean = masked_mean(values, mask)
    n = mask.sum()
    return ((values - mean) ** 2 * mask).sum() / (n - 1).clamp(min=1)


def masked_moments(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[sum, sum of squares, count] of the masked entries, in float64: what whitening needs, and what
    several processes add up to whiten the whole batch alike."""
    values, mask = values.double(), mask.double()
    return torch.stack([(values * mask).sum(), (values * values * mask).sum(), mask.sum()])


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  total: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Zero mean, unit (unbiased) variance over the masked entries. `total` adds `masked_moments` up over
    every process (several processes: the whole batch's mean and variance, not each rank's own)."""
    moments = masked_moments(values, mask)
    moments = total(moments) if total is not None else moments
    total_sum, total_squares, n = moments.unbind()
    mean = total_sum / n.clamp(min=1)
    var = ((total_squares - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)
    mean, var = mean.to(values.dtype), var.to(values.dtype)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy.

    k1: log-ratio (unbiased, can be negative); k2: half squared log-ratio; k3: the
    low-variance unbiased estimator exp(-r) - 1 + r (Schulman); abs: |log-ratio|.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    if estimator == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator '{estimator}'; use k1, k2, k3 or abs")


def response_mask(response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after it and on padding."""
    is_eos = response_ids == eos_token_id
    at_or_before_first_eos = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0
    return (at_or_before_first_eos & ((response_ids != pad_token_id) | is_eos)).float()


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """-kl_coef * KL on every response token, plus the sequence's score on its last token."""
    rewards = -kl_coef * kl * mask
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & (mask > 0)
    return rewards + last.float() * scores.unsqueeze(1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation; masked positions get zero advantage and do not bootstrap."""
    advantages = torch.zeros_like(rewards)
    last_advantage = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < length else torch.zeros_like(last_advantage)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_advantage = (delta + gamma * lam * last_advantage) * mask[:, t]
        advantages[:, t] = last_advantage
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate objective (as a loss to minimise) and its diagnostics."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {
        "clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
        "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask).item(),
    }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: the new value may not move further than `clip` from the old one for free."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    losses = torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    loss = 0.5 * masked_mean(losses, mask)
    return loss, {"value_clip_fraction": masked_mean(((values - returns) ** 2 < (clipped_values - returns) ** 2).float(), mask).item()}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_var(returns, mask)
    return float(1 - masked_var(returns - values, mask) / var_returns) if var_returns > 0 else float("nan")


class AdaptiveKLController:
    """Moves the KL coefficient so the observed KL tracks a target (Ziegler et al., 2019)."""

    def __init__(self, init: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, observed_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = max(-0.2, min(0.2, observed_kl / self.target - 1))
        self.value *= 1 + error * n_steps / self.horizon

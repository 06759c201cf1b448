"""PPO arithmetic against values computed by hand, with padding and post-EOS tokens masked."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.rl.ppo_math import (
    AdaptiveKLController, explained_variance, gae, kl_penalty, masked_moments, masked_whiten, policy_loss, response_mask, token_rewards, value_loss,
)

EOS, PAD = 2, 0


def test_response_mask_stops_at_the_first_eos_and_skips_padding():
    ids = torch.tensor([[5, 6, EOS, 7, EOS], [5, EOS, PAD, PAD, PAD], [5, 6, 7, 8, 9], [PAD, 5, 6, PAD, PAD]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float)
    assert torch.equal(response_mask(ids, EOS, PAD), expected)


def test_kl_estimators():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    r = torch.tensor([[0.5, -1.0]])  # log-ratio
    assert torch.allclose(kl_penalty(logp, ref, "k1"), r)
    assert torch.allclose(kl_penalty(logp, ref, "k2"), torch.tensor([[0.125, 0.5]]))
    assert torch.allclose(kl_penalty(logp, ref, "k3"), torch.tensor([[math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]]))
    assert torch.allclose(kl_penalty(logp, ref, "abs"), torch.tensor([[0.5, 1.0]]))
    assert (kl_penalty(logp, ref, "k3") >= 0).all()  # k3 is never negative
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(logp, ref, "k9")


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float)
    rewards = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.01, -0.02, -0.03 + 2.0, 0.0], [-0.05, -0.05, -0.05, -0.05 - 1.0]])
    assert torch.allclose(rewards, expected)


def test_gae_by_hand_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 9.0]])  # 9.0 sits on padding and must not leak in
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0: d2 = 1 - .5 = .5; d1 = .9*.5 - .5 = -.05; A1 = -.05 + .72*.5 = .31; A0 = -.05 + .72*.31 = .1732
    # Row 1: d1 = 1 - .5 = .5 (no bootstrap from padding); A0 = (.9*.5 - .5) + .72*.5 = .31
    assert torch.allclose(advantages, torch.tensor([[0.1732, 0.31, 0.5], [0.31, 0.5, 0.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[0.6732, 0.81, 1.0], [0.81, 1.0, 0.0]]), atol=1e-6)


def test_policy_loss_clips_by_hand():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    loss, stats = policy_loss(new, old, adv, mask, clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped) -> mean -0.2
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clip_fraction"] == pytest.approx(1.0)


def test_value_loss_clips_by_hand():
    old = torch.tensor([[0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[2.0, 0.0]])
    loss, _ = value_loss(new, old, returns, torch.ones(1, 2), clip=0.2)
    # token 0: max((1-2)^2, (0.2-2)^2) = 3.24; token 1: max(.01, .01) = .01 -> 0.5 * mean = 0.8125
    assert loss.item() == pytest.approx(0.8125)
    masked, _ = value_loss(new, old, returns, torch.tensor([[0.0, 1.0]]), clip=0.2)
    assert masked.item() == pytest.approx(0.005)


def test_whitening_ignores_masked_entries_and_explained_variance():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    white = masked_whiten(values, mask)
    assert torch.allclose(white, torch.tensor([[-1.0, 0.0, 1.0, 0.0]]), atol=1e-4)
    # Two processes, each with half the batch, whiten with the whole batch's moments: as one process would.
    generator = torch.Generator().manual_seed(0)
    batch, batch_mask = torch.randn(6, 5, generator=generator) * 3 + 2, (torch.rand(6, 5, generator=generator) > 0.3).float()
    whole = masked_whiten(batch, batch_mask)
    halves = [(batch[:3], batch_mask[:3]), (batch[3:], batch_mask[3:])]
    for (part, part_mask), (other, other_mask) in (halves, halves[::-1]):
        summed = lambda moments, other=other, other_mask=other_mask: moments + masked_moments(other, other_mask)  # noqa: E731
        alone = whole[:3] if part is halves[0][0] else whole[3:]
        assert torch.allclose(masked_whiten(part, part_mask, total=summed), alone, atol=1e-5)
        assert not torch.allclose(masked_whiten(part, part_mask), alone, atol=1e-3)  # each rank's own moments differ
    returns = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)


def test_adaptive_kl_moves_toward_the_target():
    controller = AdaptiveKLController(0.1, target=1.0, horizon=10)
    controller.update(observed_kl=3.0, n_steps=1)  # too much KL: the error is capped at +20%
    assert controller.value == pytest.approx(0.1 * 1.02)
    fixed = AdaptiveKLController(0.1, target=None, horizon=10)
    fixed.update(5.0, 1)
    assert fixed.value == 0.1

"""GRPO: group-relative policy optimisation with TRL's GRPOTrainer, rewarded by the reward model."""

from __future__ import annotations

from posttrain.rl.critic_free import CriticFreeStage


class GRPOStage(CriticFreeStage):
    kind = "grpo"
    trl_classes = ("GRPOTrainer", "GRPOConfig")

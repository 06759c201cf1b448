"""GRPO: group-relative policy optimisation with TRL's GRPOTrainer, rewarded by the reward model."""

from __future__ import annotations

from posttrain.rl.critic_free import CriticFreeStage, CriticFreeStageConfig


class GRPOStageConfig(CriticFreeStageConfig):
    trl_config = "trl:GRPOConfig"


class GRPOStage(CriticFreeStage):
    kind = "grpo"
    Config = GRPOStageConfig
    trl_classes = ("GRPOTrainer", "GRPOConfig")

"""RLOO: REINFORCE with a leave-one-out baseline, with TRL's RLOOTrainer, rewarded by the reward model."""

from __future__ import annotations

from posttrain.rl.critic_free import CriticFreeStage, CriticFreeStageConfig


class RLOOStageConfig(CriticFreeStageConfig):
    trl_config = "trl:RLOOConfig"


class RLOOStage(CriticFreeStage):
    kind = "rloo"
    Config = RLOOStageConfig
    trl_classes = ("RLOOTrainer", "RLOOConfig")

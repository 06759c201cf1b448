"""RLOO: REINFORCE with a leave-one-out baseline, with TRL's RLOOTrainer, rewarded by the reward model."""

from __future__ import annotations

from posttrain.rl.critic_free import CriticFreeStage


class RLOOStage(CriticFreeStage):
    kind = "rloo"
    trl_classes = ("RLOOTrainer", "RLOOConfig")

"""GRPO: group-relative policy optimisation with TRL's GRPOTrainer, rewarded by the reward model."""

from __future__ import annotations

from posttrain.rl.critic_free import CriticFreeStageConfig
from posttrain.stage import Stage, StageContext, StageResult


class GRPOStage(Stage):
    kind = "grpo"
    Config = CriticFreeStageConfig
    produces_model = True

    @classmethod
    def check_inputs(cls, config: CriticFreeStageConfig) -> None:
        from posttrain.data.stage_data import prompt_data

        prompt_data(config)

    def run(self, ctx: StageContext) -> StageResult:
        from trl import GRPOConfig, GRPOTrainer

        from posttrain.rl.critic_free import train_critic_free

        return train_critic_free(ctx, GRPOTrainer, GRPOConfig)

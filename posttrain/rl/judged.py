"""Training stages whose policy answers its data's prompts and a reward model judges the answers (ppo, rloo,
grpo, iterative_dpo): the recipe names the reward model (`reward_model:`), linked as the stage's judge; the
prompts are every row's prompt of the stage's data; the reward model's recorded held-out accuracy gates the
start (`min_reward_accuracy`). Imports nothing heavy: recipes validate without torch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, Field

from posttrain.stage import PreparedData, StageContext, StageInputs, TrainingStage


class RewardJudgedConfig(BaseModel):
    """The fields such a stage's config adds (a mixin beside TrainStageConfig)."""

    reward_model: str = Field(description="The reward_model stage (or reward model directory) that scores the policy's answers.")
    min_reward_accuracy: float | None = Field(None, ge=0, le=1, description="Refuse to start when the reward model's held-out accuracy is below this.")


class RewardJudgedStage(TrainingStage):
    """Inputs, data and scorer of such a stage (a mixin: put it before the stage's other base)."""

    @classmethod
    def inputs(cls, config) -> StageInputs:
        return replace(super().inputs(config), judge=config.reward_model)

    @classmethod
    def prepare_data(cls, config, data_files: dict[str, Path], seed: int) -> PreparedData:
        from posttrain.data.training_data import prompt_data

        return prompt_data(config, data_files)

    @staticmethod
    def scorer(ctx: StageContext):
        """The judge as a scorer, refused before any sampling when below `min_reward_accuracy` (a weak judge makes
        the policy optimise noise)."""
        from posttrain.reward.scorer import gated_scorer

        return gated_scorer(Path(ctx.inputs.judge.location), ctx.config.min_reward_accuracy, who=f"stage '{ctx.name}'")

"""RLOO and GRPO through TRL's trainers, rewarded by the same reward-model scorer as PPO.

Both sample several responses per prompt and use the group's other rewards as the
baseline, so they need no value model: the comparison users want beside PPO.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import Field

from posttrain.stage import PreparedData, StageContext, StageInputs, StageResult, TrainingStage, TrainStageConfig


class CriticFreeStageConfig(TrainStageConfig):
    trl_fields = {"num_generations": "num_generations", "max_completion_length": "max_new_tokens", "temperature": "temperature", "beta": "beta"}
    held_out_hint = ": its curves are the rewards of its own samples"

    reward_model: str = Field(description="The reward_model stage (or reward model directory) that scores responses.")
    min_reward_accuracy: float | None = Field(None, ge=0, le=1, description="Refuse to start when the reward model's held-out accuracy is below this.")
    num_generations: int = Field(4, ge=2, description="Responses sampled per prompt (the group); batch_size must be a multiple of it.")
    max_new_tokens: int = Field(32, gt=0, description="Response length limit.")
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.05, ge=0, description="KL coefficient against the reference (the parent).")


class CriticFreeStage(TrainingStage):
    """Shared by `rloo` and `grpo`: they differ only in the TRL trainer they name."""

    Config = CriticFreeStageConfig
    trl_classes: tuple[str, str]  # (trainer, config) class names in `trl`

    @classmethod
    def inputs(cls, config: CriticFreeStageConfig) -> StageInputs:
        return replace(super().inputs(config), judge=config.reward_model)

    @classmethod
    def prepare_data(cls, config: CriticFreeStageConfig, data_files: dict[str, Path], seed: int) -> PreparedData:
        from posttrain.data.training_data import prompt_data

        return prompt_data(config, data_files)

    def run(self, ctx: StageContext) -> StageResult:
        import trl

        trainer_name, config_name = self.trl_classes
        return train_critic_free(ctx, getattr(trl, trainer_name), getattr(trl, config_name))


def train_critic_free(ctx: StageContext, trainer_cls, config_cls) -> StageResult:
    from datasets import Dataset

    from posttrain.reward.scorer import gated_scorer
    from posttrain.training import callbacks, load_trainable_model, peft_config, train_and_save, trainer_config

    config: CriticFreeStageConfig = ctx.config
    scorer = gated_scorer(Path(ctx.inputs.judge.location), config.min_reward_accuracy, who=f"stage '{ctx.name}'")

    def reward_model(prompts, completions, **kwargs) -> list[float]:
        return scorer.score([p + c for p, c in zip(prompts, completions)])

    # GRPO/RLOO configs take no max_length or dataset_num_proc; prompts are short here.
    args = trainer_config(ctx, config_cls, drop=("max_length", "dataset_num_proc"), num_generations=config.num_generations,
                          max_completion_length=config.max_new_tokens, temperature=config.temperature, beta=config.beta)
    tokenizer = ctx.store.load_tokenizer(ctx.parent)
    trainer = trainer_cls(
        model=load_trainable_model(ctx),
        reward_funcs=[reward_model],
        args=args,
        train_dataset=Dataset.from_list(ctx.data.examples),
        processing_class=tokenizer,
        peft_config=peft_config(config.lora),
        callbacks=callbacks(ctx),
    )
    return train_and_save(trainer, ctx, ctx.data.accounting, reference=ctx.parent.name, reward_model=ctx.inputs.judge.name)

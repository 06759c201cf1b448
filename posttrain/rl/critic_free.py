"""RLOO and GRPO through TRL's trainers, rewarded by the same reward-model scorer as PPO.

Both sample several responses per prompt and use the group's other rewards as the
baseline, so they need no value model: the comparison users want beside PPO.
"""

from __future__ import annotations

from pydantic import Field

from posttrain.rl.judged import RewardJudgedConfig, RewardJudgedStage
from posttrain.stage import StageContext, StageResult, TrainStageConfig


class CriticFreeStageConfig(TrainStageConfig, RewardJudgedConfig):
    trl_fields = {"num_generations": "num_generations", "max_completion_length": "max_new_tokens", "temperature": "temperature", "beta": "beta"}
    held_out_hint = ": its curves are the rewards of its own samples"

    num_generations: int = Field(4, ge=2, description="Responses sampled per prompt (the group); batch_size must be a multiple of it.")
    max_new_tokens: int = Field(32, gt=0, description="Response length limit.")
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.05, ge=0, description="KL coefficient against the reference (the parent).")


class CriticFreeStage(RewardJudgedStage):
    """Shared by `rloo` and `grpo`: they differ only in the TRL trainer they name."""

    Config = CriticFreeStageConfig
    trl_classes: tuple[str, str]  # (trainer, config) class names in `trl`

    def run(self, ctx: StageContext) -> StageResult:
        import trl

        trainer_name, config_name = self.trl_classes
        return train_critic_free(ctx, getattr(trl, trainer_name), getattr(trl, config_name))


def train_critic_free(ctx: StageContext, trainer_cls, config_cls) -> StageResult:
    from datasets import Dataset

    from posttrain.training import callbacks, load_trainable_model, peft_config, train_and_save, trainer_config

    config: CriticFreeStageConfig = ctx.config
    scorer = RewardJudgedStage.scorer(ctx)

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

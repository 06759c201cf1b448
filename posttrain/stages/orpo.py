"""ORPO: SFT and preference alignment in one loss, with TRL's ORPOTrainer (trl.experimental).

No reference model: the odds-ratio term compares chosen with rejected under the policy
itself, so ORPO can start straight from the base model (`from: base`).
"""

from __future__ import annotations

from pydantic import Field

from posttrain.stage import PreferenceStage, PreferenceStageConfig, StageContext, StageResult


class ORPOStageConfig(PreferenceStageConfig):
    trl_config = "trl.experimental.orpo:ORPOConfig"
    trl_fields = {"beta": "beta"}
    held_out_loss = True

    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio preference term against the NLL term (lambda in the paper).")


class ORPOStage(PreferenceStage):
    kind = "orpo"
    Config = ORPOStageConfig

    def run(self, ctx: StageContext) -> StageResult:
        from datasets import Dataset
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        from posttrain.training import callbacks, eval_dataset, load_trainable_model, peft_config, train_and_save, trainer_config

        config: ORPOStageConfig = ctx.config
        tokenizer = ctx.store.load_tokenizer(ctx.parent)
        args = trainer_config(ctx, ORPOConfig, beta=config.beta)
        trainer = ORPOTrainer(
            model=load_trainable_model(ctx),
            args=args,
            train_dataset=Dataset.from_list(ctx.data.examples),
            eval_dataset=eval_dataset(ctx),
            processing_class=tokenizer,
            peft_config=peft_config(config.lora),
            callbacks=callbacks(ctx),
        )
        return train_and_save(trainer, ctx, ctx.data.accounting)

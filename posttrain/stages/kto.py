"""KTO: alignment from unpaired thumbs-up/down with TRL's KTOTrainer.

Each rated response is one example labelled desirable or undesirable; no pairing is
needed, so every vote counts. The desirable/undesirable weights default to values that
balance the two classes (from the data's counts) and are recorded in stage.json. The
reference model is the parent, as for DPO.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from posttrain.stage import PreparedData, StageContext, StageResult, TrainingStage, TrainStageConfig


class KTOStageConfig(TrainStageConfig):
    trl_config = "trl:KTOConfig"
    trl_fields = {"beta": "beta", "desirable_weight": "desirable_weight", "undesirable_weight": "undesirable_weight"}
    held_out_loss = True

    beta: float = Field(0.1, gt=0, description="Strength of the KL pull towards the reference (must be > 0).")
    desirable_weight: float | None = Field(None, gt=0, description="Loss weight of thumbs-up examples (default: from the class balance).")
    undesirable_weight: float | None = Field(None, gt=0, description="Loss weight of thumbs-down examples (default: from the class balance).")


class KTOStage(TrainingStage):
    kind = "kto"
    Config = KTOStageConfig

    @classmethod
    def prepare_data(cls, config: KTOStageConfig, data_files: dict[str, Path], seed: int) -> PreparedData:
        from posttrain.data.training_data import kto_data

        return kto_data(config, data_files, seed=seed)

    def run(self, ctx: StageContext) -> StageResult:
        from datasets import Dataset
        from trl import KTOConfig, KTOTrainer

        from posttrain.training import callbacks, eval_dataset, load_trainable_model, peft_config, train_and_save, trainer_config

        config: KTOStageConfig = ctx.config
        balance = ctx.data.extras["weights"]
        weights = {
            "desirable_weight": config.desirable_weight or balance["desirable_weight"],
            "undesirable_weight": config.undesirable_weight or balance["undesirable_weight"],
        }
        tokenizer = ctx.store.load_tokenizer(ctx.parent)
        args = trainer_config(ctx, KTOConfig, beta=config.beta, **weights)
        trainer = KTOTrainer(
            model=load_trainable_model(ctx),
            # LoRA: the reference is the parent with the adapter disabled (no second copy).
            ref_model=None if config.lora else ctx.store.load_model(ctx.parent),
            args=args,
            train_dataset=Dataset.from_list(ctx.data.examples),
            eval_dataset=eval_dataset(ctx),
            processing_class=tokenizer,
            peft_config=peft_config(config.lora),
            callbacks=callbacks(ctx),
        )
        return train_and_save(trainer, ctx, ctx.data.accounting, **weights, reference=ctx.parent.name)

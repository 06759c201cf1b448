"""SFT: instruction tuning with TRL's SFTTrainer, loss on the assistant's reply only.

Data rows (chat `messages`, prompt/response, Alpaca, or thumbs-up rows of a feedback log)
become conversational prompt/completion examples; TRL renders them with the model's chat
template and masks the prompt out of the loss (`completion_only_loss`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from posttrain.stage import PreparedData, StageContext, StageResult, TrainingStage, TrainStageConfig


class SFTStageConfig(TrainStageConfig):
    trl_config = "trl:SFTConfig"
    trl_fields = {"completion_only_loss": "SFT trains on the assistant's reply only (prompt/completion examples)"}
    held_out_loss = True

    completion_head: bool = Field(True, description="Run the output head and the loss on completion tokens only (the same loss, less work: "
                                                    "posttrain.completion_loss); false: TRL's own loss path, which off CUDA scores every position.")


class SFTStage(TrainingStage):
    kind = "sft"
    Config = SFTStageConfig

    @classmethod
    def prepare_data(cls, config: SFTStageConfig, data_files: dict[str, Path], seed: int) -> PreparedData:
        from posttrain.data.training_data import sft_data

        return sft_data(config, data_files, seed=seed)

    def run(self, ctx: StageContext) -> StageResult:
        from posttrain.training import train_and_save

        return train_and_save(self.build_trainer(ctx), ctx, ctx.data.accounting)

    def build_trainer(self, ctx: StageContext):
        """The stage's SFTTrainer, ready to train (`posttrain bench` times exactly this trainer)."""
        # Training libraries load here, not at import: `validate` and `plan` stay fast.
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from posttrain.completion_loss import sft_trainer_class
        from posttrain.training import callbacks, eval_dataset, load_trainable_model, peft_config, trainer_config

        config: SFTStageConfig = ctx.config

        tokenizer = ctx.store.load_tokenizer(ctx.parent)
        model = load_trainable_model(ctx)
        args = trainer_config(ctx, SFTConfig, completion_only_loss=True, packing=False)
        trainer_class = sft_trainer_class() if config.completion_head else SFTTrainer
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(ctx.data.examples),
            eval_dataset=eval_dataset(ctx),
            processing_class=tokenizer,
            peft_config=peft_config(config.lora),
            callbacks=callbacks(ctx),
        )
        return trainer

"""SFT: instruction tuning with TRL's SFTTrainer, loss on the assistant's reply only.

Data rows (chat `messages`, prompt/response, Alpaca, or thumbs-up rows of a feedback log)
become conversational prompt/completion examples; TRL renders them with the model's chat
template and masks the prompt out of the loss (`completion_only_loss`).
"""

from __future__ import annotations

from posttrain.data.stage_data import sft_data
from posttrain.stage import Stage, StageContext, StageResult, TrainStageConfig


class SFTStageConfig(TrainStageConfig):
    pass


class SFTStage(Stage):
    kind = "sft"
    Config = SFTStageConfig
    produces_model = True

    @classmethod
    def check_inputs(cls, config: SFTStageConfig) -> None:
        sft_data(config)

    def run(self, ctx: StageContext) -> StageResult:
        # Training libraries load here, not at import: `validate` and `plan` stay fast.
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from posttrain.training import callbacks, load_trainable_model, peft_config, train_and_save, trainer_arguments

        config: SFTStageConfig = ctx.config
        examples, accounting = sft_data(config)

        tokenizer = ctx.registry.load_tokenizer(ctx.parent)
        model = load_trainable_model(ctx)
        args = SFTConfig(
            **trainer_arguments(config, ctx.stage_dir / "trainer", ctx.recipe.spec.seed),
            completion_only_loss=True,
            packing=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            processing_class=tokenizer,
            peft_config=peft_config(config.lora),
            callbacks=callbacks(ctx),
        )
        return train_and_save(trainer, ctx, accounting)

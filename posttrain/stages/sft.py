"""SFT: instruction tuning with TRL's SFTTrainer, loss on the assistant's reply only.

Data rows (chat `messages`, prompt/response, Alpaca, or thumbs-up rows of a feedback log)
become conversational prompt/completion examples; TRL renders them with the model's chat
template and masks the prompt out of the loss (`completion_only_loss`).
"""

from __future__ import annotations

from pydantic import Field

from posttrain.data.convert import to_sft_examples
from posttrain.data.sources import load_rows
from posttrain.stage import Stage, StageContext, StageResult, TrainStageConfig


class SFTStageConfig(TrainStageConfig):
    max_drop_share: float = Field(0.5, ge=0, le=1, description="Fail when more than this share of rows is dropped.")


class SFTStage(Stage):
    kind = "sft"
    Config = SFTStageConfig
    produces_model = True

    def run(self, ctx: StageContext) -> StageResult:
        # Training libraries load here, not at import: `validate` and `plan` stay fast.
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from posttrain.training import callbacks, curves_from_log, discard_checkpoints, final_metrics, peft_config, train, trainer_arguments

        config: SFTStageConfig = ctx.config
        examples, accounting = to_sft_examples(load_rows(config.data), config.data)
        accounting.fail_if_too_many_dropped(config.max_drop_share)

        tokenizer = ctx.registry.load_tokenizer(ctx.parent)
        model = ctx.registry.load_model(ctx.parent)
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
        history = train(trainer, ctx)
        ctx.registry.save(ctx.name, trainer.model, tokenizer)
        discard_checkpoints(ctx)
        return StageResult(metrics=final_metrics(history), curves=curves_from_log(history), data=accounting)

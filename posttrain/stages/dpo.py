"""DPO: preference alignment with TRL's DPOTrainer on preference pairs or thumbs-up/down logs.

The reference model is the parent checkpoint (the model this stage starts from), loaded
explicitly, never silently the base; `reference: base` opts into the base model instead.
With LoRA the reference is the same weights with the adapter disabled, which again is the
parent, because a LoRA parent is saved merged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from posttrain.stage import BASE, PreferenceStage, PreferenceStageConfig, StageContext, StageResult

if TYPE_CHECKING:
    from trl import DPOTrainer

    from posttrain.model_store import ModelRef


class DPOStageConfig(PreferenceStageConfig):
    trl_config = "trl:DPOConfig"
    trl_fields = {"beta": "beta", "loss_type": "loss_type", "loss_weights": "sft_weight", "label_smoothing": "label_smoothing",
                  "precompute_ref_log_probs": "precompute_ref_log_probs"}
    held_out_loss = True

    beta: float = Field(0.1, gt=0, description="Strength of the KL pull towards the reference (must be > 0).")
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field("sigmoid", description="TRL DPO loss variant.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Assumed share of flipped labels (robust / cDPO).")
    sft_weight: float = Field(0.0, ge=0, description="Weight of an added NLL loss on the chosen responses (RPO); keeps small models from unlearning what the chosen answers share.")
    precompute_ref_log_probs: bool = Field(False, description="Compute the reference's log-probs once before training, then free the reference model.")
    reference: Literal["parent", "base"] = Field("parent", description="Reference model: the parent checkpoint, or the recipe's base.")
    completion_head: bool = Field(True, description="Run the output head on completion tokens only, for the policy and the reference "
                                                    "(the same log-probs, less work: posttrain.completion_loss); false: TRL's head, which off "
                                                    "CUDA scores every position.")


class DPOStage(PreferenceStage):
    kind = "dpo"
    Config = DPOStageConfig

    def run(self, ctx: StageContext) -> StageResult:
        from posttrain.training import train_and_save

        trainer = self.build_trainer(ctx)
        return train_and_save(trainer, ctx, ctx.data.accounting, reference=self.reference(ctx).name)

    @staticmethod
    def reference(ctx: StageContext) -> ModelRef:
        return ctx.store.resolve(BASE) if ctx.config.reference == "base" else ctx.parent

    def build_trainer(self, ctx: StageContext, reference: ModelRef | None = None) -> DPOTrainer:
        """TRL's DPOTrainer on ctx.data's pairs, from ctx.parent; against `reference` (default: as the config says)."""
        # Training libraries load here, not at import: `validate` and `plan` stay fast.
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        from posttrain.training import callbacks, eval_dataset, load_trainable_model, peft_config, trainer_config

        config: DPOStageConfig = ctx.config

        tokenizer = ctx.store.load_tokenizer(ctx.parent)
        model = load_trainable_model(ctx)
        reference = reference or self.reference(ctx)
        # With LoRA and the parent as reference, TRL disables the adapter to get reference
        # log-probs: no second copy of the weights.
        use_adapter_as_reference = config.lora is not None and reference == ctx.parent
        ref_model = None if use_adapter_as_reference else ctx.store.load_model(reference)

        args = trainer_config(
            ctx, DPOConfig,
            beta=config.beta,
            loss_type=[config.loss_type] + (["sft"] if config.sft_weight else []),
            loss_weights=[1.0, config.sft_weight] if config.sft_weight else None,
            label_smoothing=config.label_smoothing,
            precompute_ref_log_probs=config.precompute_ref_log_probs,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=Dataset.from_list(ctx.data.examples),
            eval_dataset=eval_dataset(ctx),
            processing_class=tokenizer,
            peft_config=peft_config(config.lora),
            callbacks=callbacks(ctx),
        )
        if config.completion_head:
            compact_dpo_heads(trainer)
        return trainer


def compact_dpo_heads(trainer: DPOTrainer) -> None:
    """Policy and reference score completion tokens only (posttrain.completion_loss.install_dpo_head), where that
    computes what TRL's head does: not for WPO weighting (it needs another per-token field), nor under FSDP or
    DeepSpeed (sharded heads)."""
    from accelerate.utils import is_peft_model

    from posttrain.completion_loss import install_dpo_head

    if trainer.use_weighting or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return
    install_dpo_head(trainer.model.get_base_model() if is_peft_model(trainer.model) else trainer.model)
    if trainer.ref_model is not None:
        install_dpo_head(trainer.ref_model)

"""reward_model: a scalar reward model trained on preference pairs with TRL's RewardTrainer.

The backbone comes from the parent (base or SFT) with a fresh one-output score head. With
LoRA the score head is trained in full and saved with the adapter (`modules_to_save`), so
reloading the adapter restores the head instead of silently re-initialising it; the
merged model in `model/` carries it too. Pairs are split by prompt into train and
held-out; the held-out accuracy, margins and length bias are recorded, and consumer stages
can refuse a reward model below their `min_reward_accuracy`.
"""

from __future__ import annotations

from pydantic import Field

from posttrain.data.filters import split_by_conversation
from posttrain.stage import PreferenceStage, PreferenceStageConfig, Role, StageContext, StageResult


class RewardModelStageConfig(PreferenceStageConfig):
    trl_config = "trl:RewardConfig"
    trl_fields = {"center_rewards_coefficient": "center_rewards_coefficient"}
    held_out_hint = ": it already holds out pairs (held_out_share) and records their accuracy after training"

    held_out_share: float = Field(0.2, gt=0, lt=1, description="Share of prompts held out for evaluation (split by prompt).")
    center_rewards_coefficient: float | None = Field(None, ge=0, description="Pull rewards towards zero mean (TRL).")


class RewardModelStage(PreferenceStage):
    kind = "reward_model"
    Config = RewardModelStageConfig
    role = Role.REWARD

    @staticmethod
    def split(pairs: list[dict], config: RewardModelStageConfig, seed: int, source: str) -> tuple[list[dict], list[dict]]:
        """The pairs split by prompt into (train, held out): what the stage trains on and what it measures with."""
        from posttrain.errors import DataError

        train_pairs, held_out = split_by_conversation(pairs, config.held_out_share, seed)
        if not train_pairs or not held_out:
            raise DataError(f"{source}: {len(pairs)} pairs are too few to split into train and held-out by prompt "
                            f"(held_out_share={config.held_out_share})")
        return train_pairs, held_out

    def _split(self, ctx: StageContext) -> tuple[list[dict], list[dict]]:
        return self.split(ctx.data.examples, ctx.config, ctx.seed, ctx.data.accounting.source)

    def build_trainer(self, ctx: StageContext, train_pairs: list[dict] | None = None):
        """The stage's RewardTrainer on the train pairs, ready to train (`posttrain bench` times exactly this trainer)."""
        from datasets import Dataset
        from peft import LoraConfig
        from trl import RewardConfig, RewardTrainer

        from posttrain.training import callbacks, load_trainable_model, trainer_config

        config: RewardModelStageConfig = ctx.config
        if train_pairs is None:
            train_pairs, _ = self._split(ctx)
        lora = None
        if config.lora:
            lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                              target_modules=config.lora.target_modules, task_type="SEQ_CLS", modules_to_save=["score"])
        args = trainer_config(ctx, RewardConfig, center_rewards_coefficient=config.center_rewards_coefficient)
        return RewardTrainer(
            model=load_trainable_model(ctx, head="reward"),
            args=args,
            train_dataset=Dataset.from_list(train_pairs),
            processing_class=ctx.store.load_tokenizer(ctx.parent),
            peft_config=lora,
            callbacks=callbacks(ctx),
        )

    def run(self, ctx: StageContext) -> StageResult:
        from posttrain.reward.evaluation import evaluate_pairs
        from posttrain.reward.scorer import RewardScorer
        from posttrain.training import curves_from_log, final_metrics, precision_used, save_stage_model, train

        train_pairs, held_out = self._split(ctx)
        trainer = self.build_trainer(ctx, train_pairs)
        history = train(trainer, ctx)
        model_dir = save_stage_model(ctx, trainer.model, trainer.processing_class, head="reward")

        # Evaluate what was saved, not what is in memory: a lost score head shows up here.
        report = evaluate_pairs(RewardScorer.from_directory(model_dir), held_out)
        metrics = final_metrics(history) | report | {"train_pairs": len(train_pairs), "precision": precision_used(trainer.args)}
        return StageResult(metrics=metrics, curves=curves_from_log(history), data=ctx.data.accounting)

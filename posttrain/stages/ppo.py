"""PPO: actor-critic RLHF against a reward model, our own loop (TRL 1.16 has no PPOTrainer).

Per iteration: sample responses to a batch of prompts from the policy, score them with the
reward model, penalise per-token KL against the frozen reference (the parent), estimate
advantages with GAE from a value model (initialised from the reward model, or the policy),
then run several epochs of minibatch updates with the clipped policy and value losses.

With LoRA the reference is the policy with its adapter disabled: no second copy of the
weights. Checkpoints are committed every `save_steps` iterations like every other stage's,
and a killed run resumes from the last one. On several processes the policy and the critic
train under DistributedDataParallel, or (strategy fsdp2) the policy, critic and reference are
sharded with torch's fully_shard, on CPUs too (docs/scaling.md).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from posttrain import distributed
from posttrain.rl.judged import RewardJudgedConfig, RewardJudgedStage
from posttrain.stage import StageContext, StageResult, TrainStageConfig, setting_error


class PPOStageConfig(TrainStageConfig, RewardJudgedConfig):
    held_out_hint = ": its curves are the rewards and KL of its own rollouts"

    value_init: Literal["reward_model", "policy"] = Field("reward_model", description="Initialise the critic from the reward model or from the policy (with a fresh head).")
    ppo_epochs: int = Field(2, gt=0, description="Passes over each rollout batch.")
    minibatch_size: int = Field(8, gt=0)
    max_new_tokens: int = Field(32, gt=0, description="Response length limit.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    kl_coef: float = Field(0.05, ge=0, description="Initial per-token KL penalty coefficient.")
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = "k1"
    kl_target: float | None = Field(None, gt=0, description="Adapt kl_coef so the sequence KL tracks this target (None: fixed).")
    kl_horizon: int = Field(10000, gt=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    cliprange: float = Field(0.2, gt=0)
    cliprange_value: float = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    value_learning_rate: float | None = Field(None, gt=0, description="Critic learning rate (default: learning_rate).")
    whiten_rewards: bool = Field(False, description="Whiten the sequence scores across each rollout batch.")
    reward_clip: float | None = Field(10.0, gt=0, description="Clip scores to [-x, x].")
    missing_eos_penalty: float | None = Field(1.0, ge=0, description="Subtract from the score of a response that does not end with EOS.")

    @model_validator(mode="after")
    def _cpu_precision(self):
        if self.precision == "fp16":
            raise setting_error("precision", "ppo's loop runs on the CPU, where fp16 is not offered; use bf16, fp32 or auto (fp32 for ppo)")
        return self


class PPOStage(RewardJudgedStage):
    kind = "ppo"
    Config = PPOStageConfig

    def run(self, ctx: StageContext) -> StageResult:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import Trainer, TrainingArguments, get_scheduler

        from posttrain.adapter_precision import add_adapter_updates_in_float32
        from posttrain.rl.ppo_loop import PPOParts, distribute, ppo_iteration, prompt_order
        from posttrain.rl.ppo_math import AdaptiveKLController
        from posttrain.training import LoopTrackers, load_trainable_model, peft_config, run_own_loop, save_stage_model, trackers, tracker_run_name
        from posttrain.training_settings import resolve_precision

        config: PPOStageConfig = ctx.config
        judge = ctx.inputs.judge
        scorer = self.scorer(ctx)  # gated before any rollout

        prompts = [e["prompt"] for e in ctx.data.examples]
        tokenizer = ctx.store.load_tokenizer(ctx.parent)

        policy = load_trainable_model(ctx)
        reference = None
        if config.lora:
            policy = get_peft_model(policy, peft_config(config.lora))
        else:
            reference = ctx.store.load_model(ctx.parent).eval().requires_grad_(False)
        value = ctx.store.load_model(judge if config.value_init == "reward_model" else ctx.parent, head="reward")
        if config.lora:
            value = get_peft_model(value, LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                                                     target_modules=config.lora.target_modules, task_type="SEQ_CLS", modules_to_save=["score"]))

        # The loop runs where the models were loaded: the CPU. Its advantage and ratio math reads the models'
        # outputs directly, so `auto` keeps fp32 here; bf16, asked for, runs each iteration under autocast.
        precision = "fp32" if config.precision == "auto" else resolve_precision(config.precision, "cpu")
        if precision == "bf16" and config.lora:
            for model in (policy, value):
                add_adapter_updates_in_float32(model)
        if config.gradient_checkpointing:
            for model in (policy, value):
                model.activation_checkpointing_enable()
        # Several processes: DDP wrappers, or (fsdp2) the models sharded in place, before the optimizer takes their parameters.
        wrapped = distribute(policy, reference, value)
        # The optimizer by its transformers name, built as the Trainer builds it; the trackers as a Trainer calls them.
        args = TrainingArguments(output_dir=str(ctx.stage_dir / "trainer"), optim=config.optimizer, learning_rate=config.learning_rate,
                                 weight_decay=config.weight_decay, use_cpu=True, report_to=list(config.report_to) or "none",
                                 run_name=tracker_run_name(ctx), seed=ctx.seed)
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, policy)

        iterations = config.max_steps if config.max_steps > 0 else math.ceil(config.epochs * len(prompts) / config.batch_size)
        minibatches = math.ceil(config.batch_size / config.minibatch_size)
        policy_params = [p for p in policy.parameters() if p.requires_grad]
        value_params = [p for p in value.parameters() if p.requires_grad]
        optimizer = optimizer_cls([
            {"params": policy_params, "lr": config.learning_rate, "weight_decay": config.weight_decay},
            {"params": value_params, "lr": config.value_learning_rate or config.learning_rate, "weight_decay": config.weight_decay},
        ], **optimizer_kwargs)
        total_updates = iterations * config.ppo_epochs * minibatches
        scheduler = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total_updates), num_training_steps=total_updates)
        parts = PPOParts(policy, reference, value, scorer, tokenizer, optimizer, scheduler,
                         AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon), **wrapped)
        order = prompt_order(len(prompts), iterations * config.batch_size, ctx.seed)
        here = distributed.world()  # several processes: batch_size and minibatch_size are the whole batch's, split evenly
        local = config.model_copy(update={"minibatch_size": config.minibatch_size // here.size}) if here.distributed else config

        tracked = LoopTrackers(args)

        def iteration(step: int) -> str:
            batch = [prompts[i] for i in order[(step - 1) * config.batch_size: step * config.batch_size]][here.rank::here.size]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                stats = ppo_iteration(parts, batch, local, step)
            stats = distributed.mean_of(stats)  # the whole batch's figures: every rank's share, averaged
            parts.history.append({"step": step, **stats})
            tracked.log(step, stats)
            return f"reward {stats['reward']:.3f} kl {stats['kl']:.3f}"

        with trackers(None, ctx, tracked.callbacks):
            tracked.begin(policy)
            run_own_loop(ctx, iterations, parts, iteration)
            tracked.end()

        save_stage_model(ctx, policy, tokenizer)
        history = parts.history
        curves = {key: [[h["step"], h[key]] for h in history] for key in history[0] if key != "step"} if history else {}
        metrics = {f"{key}_first": points[0][1] for key, points in curves.items()} | {f"{key}_last": points[-1][1] for key, points in curves.items()}
        metrics |= {"iterations": iterations, "prompts": len(prompts), "reference": ctx.parent.name, "reward_model": judge.name, "precision": precision}
        return StageResult(metrics=metrics, curves=curves, data=ctx.data.accounting)

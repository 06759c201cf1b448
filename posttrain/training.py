"""What every training stage shares: trainer arguments, LoRA, curves, the NaN guard.

Stages call TRL's trainers directly; this module only maps our recipe fields onto their
configs once, so every stage trains with the same conventions.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import PrinterCallback, TrainerCallback

from posttrain.errors import StageError
from posttrain.progress import TrainerProgressCallback
from posttrain.stage import LoraSettings, StageContext, TrainStageConfig


def trainer_arguments(config: TrainStageConfig, output_dir: Path, seed: int) -> dict:
    """Keyword arguments common to TRL's SFTConfig, DPOConfig and friends."""
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_length=config.max_length,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must be seen, not filtered out of the logs
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,  # our own progress display instead
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        dataset_num_proc=None,
        # TRL turns checkpointing on by default; it trades compute for memory that small
        # models do not need. (transformers 5 renamed gradient_checkpointing to this.)
        activation_checkpointing=False,
    )


def peft_config(lora: LoraSettings | None) -> LoraConfig | None:
    if lora is None:
        return None
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    )


class NonFiniteLossGuard(TrainerCallback):
    """Stops the stage, naming the step, when a logged loss or gradient norm is NaN or inf."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise StageError(f"non-finite {key} ({value}) at step {state.global_step}; lower the learning rate or check the data")


def callbacks(ctx: StageContext) -> list[TrainerCallback]:
    return [TrainerProgressCallback(ctx.progress, ctx.name), NonFiniteLossGuard()]


def train(trainer) -> list[dict]:
    """Train, without the per-log print() that Trainer adds when tqdm is off; return the log history."""
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return trainer.state.log_history


def curves_from_log(log_history: list[dict]) -> dict[str, list]:
    """Every numeric logged value as [[step, value], ...], for plots and stage.json."""
    curves: dict[str, list] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            curves.setdefault(key, []).append([step, value])
    return curves


def final_metrics(log_history: list[dict]) -> dict:
    """The last logged value of each metric, plus the train summary the trainer reports."""
    metrics: dict = {}
    for entry in log_history:
        metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    return metrics

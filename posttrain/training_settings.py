"""Training settings that speak the field's vocabulary: what Hugging Face / TRL call our fields,
the precision a stage trains in, and the `trainer_args:` pass-through checked against the
stage's TRL config class.

Light at import (the standard library only): the recipe validates with it, and what it can
check without the training libraries it checks then (keys posttrain sets itself, trackers that
are not installed). What needs them (an `optimizer:` or `trainer_args:` name against the
installed transformers / TRL, the precision against the hardware) is `check_before_training`,
which every training stage's `prepare_data` calls: importing TRL takes seconds, so `validate`
and `plan` stay fast, and the run still stops before any stage trains.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
from typing import Literal

from posttrain.errors import RecipeError, StageError, did_you_mean

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Tracker = Literal["none", "tensorboard", "wandb", "mlflow", "trackio"]

# The Python package each tracker needs (any one of them), and what to install.
TRACKER_PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
    "wandb": (("wandb",), "pip install wandb"),
    "mlflow": (("mlflow",), "pip install mlflow"),
    "trackio": (("trackio",), "pip install trackio"),
}

# TrainingArguments / TRL config names that posttrain sets from one of its own training-stage fields.
# A recipe key or a `trainer_args:` key with one of these names points the user to our field.
FROM_OUR_FIELDS = {
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "lr_scheduler_type": "lr_scheduler",
    "warmup_steps": "warmup_ratio",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "max_length": "max_length",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "save_total_limit": "keep_checkpoints",
    "bf16": "precision",
    "fp16": "precision",
    "optim": "optimizer",
    "activation_checkpointing": "gradient_checkpointing",
    "gradient_checkpointing": "gradient_checkpointing",
    "report_to": "report_to",
    "eval_strategy": "eval_steps",
    "eval_steps": "eval_steps",
    "seed": "seed",
    "data_seed": "seed",
}

# TrainingArguments names that posttrain's own machinery sets (checkpoints, the NaN guard, progress):
# not settable through `trainer_args:`, and why.
SET_BY_POSTTRAIN = {
    "output_dir": "posttrain writes into the stage directory (choose the run directory with --output)",
    "save_strategy": "posttrain commits checkpoints itself (set save_steps)",
    "logging_nan_inf_filter": "posttrain's non-finite guard needs to see every NaN (set on_nonfinite)",
    "disable_tqdm": "posttrain shows its own progress",
    "run_name": "posttrain names each tracker run <run>/<stage>",
    "resume_from_checkpoint": "posttrain resumes from the stage's last committed checkpoint by itself",
    "do_train": "posttrain trains every training stage",
    "do_eval": "posttrain evaluates when eval_share or eval_data is set",
}

# Names people bring from Hugging Face, TRL and other trainers -> what a posttrain training stage
# calls it ("field" or "field: value"). Used for the did-you-mean of an unknown recipe key.
VOCABULARY = {
    **FROM_OUR_FIELDS,
    "seed": "the recipe's top-level seed",
    "data_seed": "the recipe's top-level seed",
    "bf16": "precision: bf16",
    "fp16": "precision: fp16",
    "tf32": "precision",
    "mixed_precision": "precision",
    "dtype": "precision",
    "torch_dtype": "precision",
    "half": "precision: fp16",
    "lr": "learning_rate",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "eval_batch_size": "batch_size",
    "gradient_accumulation": "gradient_accumulation_steps",
    "grad_accum": "gradient_accumulation_steps",
    "scheduler": "lr_scheduler",
    "lr_scheduler_type": "lr_scheduler",
    "warmup": "warmup_ratio",
    "optimizer_type": "optimizer",
    "optim": "optimizer",
    "max_seq_length": "max_length",
    "max_seq_len": "max_length",
    "seq_length": "max_length",
    "sequence_len": "max_length",
    "cutoff_len": "max_length",
    "max_len": "max_length",
    "gradient_clipping": "max_grad_norm",
    "clip_grad_norm": "max_grad_norm",
    "save_total_limit": "keep_checkpoints",
    "evaluation_strategy": "eval_steps",
    "eval_strategy": "eval_steps",
    "val_set_size": "eval_share",
    "validation_split": "eval_share",
    "test_size": "eval_share",
    "eval_dataset": "eval_data",
    "validation_file": "eval_data",
    "eval_file": "eval_data",
    "dataset": "data",
    "train_dataset": "data",
    "dataset_name": "data",
    "train_file": "data",
    "datasets": "data",
    "model_name_or_path": "from",
    "parent": "from",
    "use_peft": "lora",
    "peft_config": "lora",
    "adapter": "lora",
    "lora_r": "lora: {r: ...}",
    "lora_rank": "lora: {r: ...}",
    "lora_alpha": "lora: {alpha: ...}",
    "lora_dropout": "lora: {dropout: ...}",
    "lora_target_modules": "lora: {target_modules: ...}",
    "load_in_4bit": "lora: {load_in_4bit: true}",
    "wandb": "report_to: wandb",
    "tensorboard": "report_to: tensorboard",
    "mlflow": "report_to: mlflow",
    "trackio": "report_to: trackio",
    "logging_dir": "report_to",
}


def vocabulary_hint(key: str, allowed: list[str]) -> str:
    """' (did you mean 'batch_size'? ...)' when `key` is another trainer's name for one of `allowed`, else ''."""
    target = VOCABULARY.get(key.replace("-", "_"))
    if target is None:
        return ""
    field = target.split(":")[0].strip()
    if field.startswith("the recipe's"):
        return f" ({key} is set once for the whole recipe: {target})"
    if field not in allowed:
        return ""
    return f" (did you mean '{target}'? posttrain's name for {key})"


# ---- precision ----------------------------------------------------------------------------------


def cpu_supports_bf16() -> bool:
    """Native bf16 arithmetic on this CPU (x86 AVX512-BF16 or AMX), as PyTorch detects it."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def bf16_supported(device: str) -> bool:
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_supports_bf16()


def resolve_precision(requested: str, device: str) -> str:
    """The precision a stage trains in on `device` ("cuda" or "cpu"): fp32, bf16 or fp16.

    auto: bf16 where the hardware computes in it natively (a CUDA GPU that supports it, or a CPU
    with AVX512-BF16/AMX), otherwise fp32. An explicit choice the hardware cannot do is one line.
    """
    if requested == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    if requested == "fp16" and device != "cuda":
        raise StageError("precision: fp16 needs a CUDA GPU and this stage runs on the CPU; "
                         "use precision: bf16 (if the CPU supports it), fp32, or auto")
    if requested == "bf16" and not bf16_supported(device):
        raise StageError(f"precision: bf16 is not supported by this {'GPU' if device == 'cuda' else 'CPU'}; "
                         "use precision: fp32 or auto" + (" (or fp16)" if device == "cuda" else ""))
    return requested


# ---- names checked against the installed libraries ----------------------------------------------


@functools.cache
def optimizer_names() -> tuple[str, ...]:
    """Every `optim` name transformers accepts (transformers.training_args.OptimizerNames)."""
    from transformers.training_args import OptimizerNames

    return tuple(o.value for o in OptimizerNames)


def optimizer_problem(name: str) -> str | None:
    names = optimizer_names()
    if name in names:
        return None
    return f"'{name}' is not a transformers optimizer{did_you_mean(name, names)}; e.g. adamw_torch (the default), adamw_torch_fused, adafactor, sgd"


def tracker_problem(tracker: str) -> str | None:
    """Why `report_to: <tracker>` cannot log here (its package is missing), or None."""
    if tracker == "none":
        return None
    packages, install = TRACKER_PACKAGES[tracker]
    if any(importlib.util.find_spec(p) is not None for p in packages):
        return None
    return f"{tracker} is not installed; {install}, or remove it from report_to"


@functools.cache
def trl_config_fields(trl_config: str) -> tuple[str, frozenset[str]]:
    """(class name, the fields it takes) of a TRL config named 'module:Class', e.g. 'trl:SFTConfig'."""
    module, _, name = trl_config.partition(":")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trl.experimental announces itself on import
        cls = getattr(importlib.import_module(module), name)
    return name, frozenset(f.name for f in dataclasses.fields(cls) if f.init)


def trainer_args_problem(key: str, stage_fields: dict[str, str], our_fields: list[str]) -> str | None:
    """Why `trainer_args: {key: ...}` is refused because posttrain sets it itself, or None (no import).
    `stage_fields`: the TRL names this stage kind sets -> the stage key it sets them from (beta -> beta),
    or why they are fixed; `our_fields`: the stage's recipe keys."""
    owned = stage_fields.get(key) or FROM_OUR_FIELDS.get(key)
    if owned == "seed":
        return f"posttrain sets {key} from the recipe's top-level seed; set seed: there"
    if owned in our_fields:
        return f"posttrain sets {key} from the stage's own key; set {owned}: on the stage instead"
    if owned is not None:
        return f"{key} cannot be set: {owned}"
    if key in SET_BY_POSTTRAIN:
        return f"{key} cannot be set: {SET_BY_POSTTRAIN[key]}"
    return None


def trl_field_problem(key: str, trl_config: str, our_fields: list[str]) -> str | None:
    """Why `trainer_args: {key: ...}` is not a field of the stage's TRL config class, or None (imports TRL)."""
    class_name, fields = trl_config_fields(trl_config)
    if key in fields:
        return None
    hint = did_you_mean(key, fields)
    if not hint and key in our_fields:
        hint = f" (it is a key of the stage itself: write {key}: next to trainer_args)"
    return f"'{key}' is not a field of TRL's {class_name}{hint}"


def training_device(config) -> str:
    """Where the Trainer puts the model: "cuda" when there is a GPU (and trainer_args does not say use_cpu), else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() and not config.trainer_args.get("use_cpu") else "cpu"


def check_before_training(config) -> None:
    """What a training stage's settings need the installed libraries and the hardware for, checked when
    the stage's data is prepared (before any stage of the run trains): the `optimizer` and `trainer_args`
    names against transformers / TRL, and the precision against the device. One line each."""
    kind = config.kind
    if config.optimizer != type(config).model_fields["optimizer"].default:
        problem = optimizer_problem(config.optimizer)
        if problem:
            raise RecipeError(f"{kind} stage: optimizer: {problem}")
    if config.trainer_args and type(config).trl_config:
        ours = [f.alias or name for name, f in type(config).model_fields.items()]
        for key in config.trainer_args:
            problem = trl_field_problem(str(key), type(config).trl_config, ours)
            if problem:
                raise RecipeError(f"{kind} stage: trainer_args.{key}: {problem}")
    if type(config).trl_config:  # stages with their own loop resolve their precision themselves
        resolve_precision(config.precision, training_device(config))

"""The training settings people expect, in the field's vocabulary: Hugging Face / TRL names point to
ours, precision, gradient checkpointing, the optimizer, LoRA defaults, the trainer_args pass-through,
experiment trackers, and a held-out loss during training. Each runs 2-4 steps on the embedded model."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import quick_dpo, quick_sft, run_cli, tiny_recipe
from posttrain.errors import RecipeError, StageError
from posttrain.recipe import load_recipe


def _problem(write_recipe, **stage) -> str:
    """The one-line error of a recipe whose only stage is `stage`."""
    with pytest.raises(RecipeError) as raised:
        load_recipe(write_recipe(tiny_recipe(s=stage)))
    line = str(raised.value)
    assert "\n" not in line
    return line


def _stage(write_recipe, **stage):
    return load_recipe(write_recipe(tiny_recipe(s=stage))).stages[0].config


def _manifest(out, name: str) -> dict:
    return json.loads((out / name / "stage.json").read_text())


# ---- the field's vocabulary ----------------------------------------------------------------------


@pytest.mark.parametrize("key, value, expected", [
    ("per_device_train_batch_size", 4, "did you mean 'batch_size'? posttrain's name for per_device_train_batch_size"),
    ("num_train_epochs", 2, "did you mean 'epochs'?"),
    ("lr", 1e-4, "did you mean 'learning_rate'?"),
    ("learning-rate", 1e-4, "did you mean 'learning_rate'?"),
    ("bf16", True, "did you mean 'precision: bf16'?"),
    ("fp16", True, "did you mean 'precision: fp16'?"),
    ("optim", "adamw_torch", "did you mean 'optimizer'?"),
    ("lr_scheduler_type", "cosine", "did you mean 'lr_scheduler'?"),
    ("max_seq_length", 512, "did you mean 'max_length'?"),
    ("warmup_steps", 10, "did you mean 'warmup_ratio'?"),
    ("save_total_limit", 3, "did you mean 'keep_checkpoints'?"),
    ("seed", 1, "seed is set once for the whole recipe: the recipe's top-level seed"),
])
def test_hugging_face_and_trl_names_point_to_ours(write_recipe, key, value, expected):
    line = _problem(write_recipe, **quick_sft(**{key: value}))
    assert f"stages.s.{key}: unknown key ({expected}" in line
    assert "'lora'" not in line.split(";")[0]  # `lr` used to suggest lora


def test_a_trl_setting_we_do_not_name_points_to_trainer_args(write_recipe):
    line = _problem(write_recipe, **quick_sft(neftune_noise_alpha=5))
    assert "stages.s.neftune_noise_alpha: unknown key (if it is a setting of the TRL trainer, put it under trainer_args" in line


def test_the_vocabulary_does_not_suggest_keys_a_stage_lacks(write_recipe):
    line = _problem(write_recipe, kind="eval", models="all", tasks=["world_skills"], num_train_epochs=2)
    assert "stages.s.num_train_epochs: unknown key;" in line  # an eval stage has no epochs, and no trainer_args


# ---- new fields: validation ----------------------------------------------------------------------


def test_lora_true_is_the_documented_defaults_and_false_is_none(write_recipe):
    lora = _stage(write_recipe, **quick_sft(lora=True)).lora
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.load_in_4bit) == (8, 16, 0.0, "all-linear", False)
    assert _stage(write_recipe, **quick_sft(lora=False)).lora is None
    assert _stage(write_recipe, **quick_sft(lora={"r": 4})).lora.alpha == 16


def test_new_fields_defaults(write_recipe):
    config = _stage(write_recipe, **quick_sft())
    assert (config.precision, config.gradient_checkpointing, config.optimizer, config.report_to, config.trainer_args) == ("auto", False, "adamw_torch", [], {})
    assert (config.eval_share, config.eval_data, config.eval_steps) == (None, None, None)
    assert _stage(write_recipe, **quick_sft(report_to="none")).report_to == []


def test_precision_names_the_choices(write_recipe):
    line = _problem(write_recipe, **quick_sft(precision="fp8"))
    assert "stages.s.precision:" in line and "'auto', 'fp32', 'bf16' or 'fp16'" in line


@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "trackio"])
def test_a_tracker_that_is_not_installed_is_one_line(write_recipe, tracker):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    line = _problem(write_recipe, **quick_sft(report_to=["tensorboard", tracker] if importlib.util.find_spec("tensorboard") else [tracker]))
    assert f"stages.s.report_to: {tracker} is not installed; pip install {tracker}" in line


@pytest.mark.parametrize("stage, expected", [
    (quick_sft(trainer_args={"per_device_train_batch_size": 4}), "stages.s.trainer_args.per_device_train_batch_size: posttrain sets per_device_train_batch_size from the stage's own key; set batch_size: on the stage instead"),
    (quick_sft(trainer_args={"bf16": True}), "set precision: on the stage instead"),
    (quick_sft(trainer_args={"completion_only_loss": False}), "completion_only_loss cannot be set: SFT trains on the assistant's reply only"),
    (quick_sft(trainer_args={"output_dir": "/tmp/x"}), "output_dir cannot be set: posttrain writes into the stage directory"),
    (quick_sft(trainer_args={"seed": 3}), "posttrain sets seed from the recipe's top-level seed"),
    (quick_dpo(trainer_args={"beta": 0.3}), "stages.s.trainer_args.beta: posttrain sets beta from the stage's own key; set beta: on the stage instead"),
    (quick_dpo(trainer_args={"loss_weights": [1, 1]}), "set sft_weight: on the stage instead"),
    ({"kind": "ppo", "data": "builtin:assistant_world/feedback", "reward_model": "rm", "trainer_args": {"adam_beta1": 0.5}},
     "stages.s.trainer_args: stage kind 'ppo' does not train with a TRL trainer, so trainer_args does not apply"),
    ({"kind": "ppo", "data": "builtin:assistant_world/feedback", "reward_model": "rm", "precision": "fp16"},
     "stages.s.precision: ppo's loop runs on the CPU, where fp16 is not offered"),
])
def test_trainer_args_posttrain_sets_are_refused_when_the_recipe_loads(write_recipe, stage, expected):
    if stage["kind"] == "ppo":
        with pytest.raises(RecipeError) as raised:
            load_recipe(write_recipe(tiny_recipe(rm={"kind": "reward_model", "data": "builtin:assistant_world/feedback"}, s=stage)))
        line = str(raised.value)
    else:
        line = _problem(write_recipe, **stage)
    assert expected in line


@pytest.mark.parametrize("stage, expected", [
    (quick_sft(trainer_args={"neftune_noise_alph": 5}), "sft stage: trainer_args.neftune_noise_alph: 'neftune_noise_alph' is not a field of TRL's SFTConfig (did you mean 'neftune_noise_alpha'?)"),
    (quick_dpo(trainer_args={"packing": True}), "dpo stage: trainer_args.packing: 'packing' is not a field of TRL's DPOConfig"),
    (quick_sft(optimizer="adamw_torch_fusd"), "sft stage: optimizer: 'adamw_torch_fusd' is not a transformers optimizer (did you mean 'adamw_torch_fused'?)"),
], ids=["sft-trainer-arg", "dpo-trainer-arg", "optimizer"])
def test_names_checked_against_trl_and_transformers_before_any_stage_trains(write_recipe, tmp_path, stage, expected):
    """Validation stays light (no TRL import); the run stops with one line while preparing data, before
    the first stage (here a valid one) trains."""
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(tiny_recipe(first=quick_sft(max_steps=1), s=stage))), "--output", str(out), "--quiet")
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (out / "first" / "stage.json").exists()  # nothing trained


def test_validation_does_not_import_trl_or_torch(write_recipe):
    import subprocess
    import sys

    path = write_recipe(tiny_recipe(s=quick_dpo(optimizer="adamw_torch_fused", trainer_args={"use_weighting": True}, eval_share=0.1)))
    code = (f"import sys; from posttrain.recipe import load_recipe; load_recipe({str(path)!r}); "
            "print([m for m in ('trl', 'torch', 'transformers.training_args') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_trainer_args_of_the_trl_config_are_accepted(write_recipe):
    from posttrain.training_settings import check_before_training

    config = _stage(write_recipe, **quick_dpo(trainer_args={"use_weighting": True, "adam_beta2": 0.95}, optimizer="adamw_torch_fused"))
    check_before_training(config)
    assert config.trainer_args == {"use_weighting": True, "adam_beta2": 0.95}


@pytest.mark.parametrize("stage, expected", [
    (quick_sft(eval_share=0.1, eval_data="builtin:assistant_world/sft"), "stages.s.eval_data: eval_share and eval_data are both set"),
    (quick_sft(eval_steps=2), "stages.s.eval_steps: nothing to evaluate; set eval_share (e.g. 0.1) or eval_data (a file) too"),
    (quick_sft(eval_share=1.5), "stages.s.eval_share: Input should be less than 1"),
    ({"kind": "reward_model", "data": "builtin:assistant_world/feedback", "eval_share": 0.1},
     "stages.s.eval_share: stage kind 'reward_model' computes no held-out loss during training: it already holds out pairs (held_out_share)"),
])
def test_held_out_loss_settings_are_checked(write_recipe, stage, expected):
    assert expected in _problem(write_recipe, **stage)


# ---- precision -----------------------------------------------------------------------------------


def test_auto_precision_follows_the_hardware_and_fp16_needs_cuda():
    from posttrain.training_settings import cpu_supports_bf16, resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_supports_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(StageError, match="^precision: fp16 needs a CUDA GPU and this stage runs on the CPU; use precision: bf16"):
        resolve_precision("fp16", "cpu")


def test_fp16_on_the_cpu_is_refused_in_one_line(write_recipe, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(tiny_recipe(first=quick_sft(max_steps=1), sft=quick_sft(precision="fp16")))), "--output", str(out), "--quiet")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "precision: fp16 needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "first" / "stage.json").exists()  # refused before any stage trained


# ---- training: what the settings do -------------------------------------------------------------


def test_sft_held_out_loss_is_a_curve_that_falls(write_recipe, tmp_path):
    """eval_share splits the SFT examples by conversation; TRL's evaluation loop logs eval_loss every eval_steps.
    trainer_args passes eval_on_start through to SFTConfig: the first point is at step 0."""
    out = tmp_path / "run"
    stage = quick_sft(eval_share=0.1, eval_steps=2, precision="fp32", trainer_args={"eval_on_start": True})
    result = run_cli("run", str(write_recipe(tiny_recipe(sft=stage))), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = _manifest(out, "sft")
    points = manifest["curves"]["eval_loss"]
    assert [step for step, _ in points] == [0, 2, 4]
    losses = [loss for _, loss in points]
    assert losses[0] > losses[1] > losses[2], losses
    assert manifest["metrics"]["eval_loss"] == losses[-1]
    assert manifest["metrics"]["precision"] == "fp32"
    data = manifest["data"]
    held = data["details"]["eval_examples"]
    assert 0 < held < 0.25 * 400 and data["examples"] + held == 400  # the held-out examples train nothing


def test_dpo_held_out_loss_from_a_separate_file(write_recipe, tmp_path):
    from posttrain.data.sources import load_rows
    from posttrain.data.training_data import to_preference_pairs

    pairs, _ = to_preference_pairs(load_rows("builtin:assistant_world/feedback"), "feedback")
    held_file = tmp_path / "held_out_pairs.jsonl"
    held_file.write_text("".join(json.dumps(p) + "\n" for p in pairs[:8]))
    out = tmp_path / "run"
    recipe = tiny_recipe(dpo=quick_dpo(eval_data=str(held_file), eval_steps=1, max_steps=2))
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = _manifest(out, "dpo")
    assert [step for step, _ in manifest["curves"]["eval_loss"]] == [1, 2]
    assert "eval_rewards/accuracies" in manifest["curves"]
    assert manifest["data"]["details"]["eval_data"]["examples"] == 8
    assert str(held_file) in manifest["data_sources"]  # fingerprinted and checked like data


@pytest.mark.parametrize("enabled", [True, False])
def test_gradient_checkpointing_recomputes_activations(write_recipe, tmp_path, monkeypatch, enabled):
    import transformers.modeling_utils as modeling_utils

    calls = []
    real = modeling_utils.checkpoint

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_utils, "checkpoint", counting)
    recipe = tiny_recipe(sft=quick_sft(max_steps=2, gradient_checkpointing=enabled))
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert bool(calls) is enabled


def test_the_optimizer_reaches_the_trainer(write_recipe, tmp_path):
    import torch
    from transformers import Trainer
    from trl import SFTConfig

    from posttrain.pipeline import Pipeline
    from posttrain.training import trainer_config

    recipe = load_recipe(write_recipe(tiny_recipe(sft=quick_sft(optimizer="sgd", gradient_checkpointing=True, report_to="none"))))
    ctx = Pipeline(recipe, tmp_path / "run").context("sft")
    args = trainer_config(ctx, SFTConfig)
    assert args.optim == "sgd" and args.activation_checkpointing is True and args.run_name == "run/sft"
    assert Trainer.get_optimizer_cls_and_kwargs(args)[0] is torch.optim.SGD


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (pip install -e '.[test]')")
def test_tensorboard_gets_the_loss_curves_in_the_stage_directory(write_recipe, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    recipe = tiny_recipe(sft=quick_sft(report_to="tensorboard", eval_share=0.1, eval_steps=2))
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    events = list((out / "sft" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(events[0])).Reload()
    scalars = accumulator.Tags()["scalars"]
    assert "train/loss" in scalars and "eval/loss" in scalars
    assert [e.step for e in accumulator.Scalars("train/loss")] == [2, 4]
    logged = {s: v for s, v in _manifest(out, "sft")["curves"]["loss"]}
    assert [round(e.value, 5) for e in accumulator.Scalars("train/loss")] == [round(logged[2], 5), round(logged[4], 5)]


def test_accelerates_package_checks_are_answered_once_with_the_same_answers(monkeypatch):
    """accelerate asks whether peft is installed on every training step; after `remember_installed_packages`
    the answer is the one it gave before and the package's metadata is read once, not once per step."""
    import torch
    from accelerate.utils import imports
    from accelerate.utils.modeling import is_peft_model

    from posttrain.training import remember_installed_packages

    # Start from accelerate's own function (an in-process run earlier in the session may have wrapped it); restored after.
    plain = getattr(imports._is_package_available, "__wrapped__", imports._is_package_available)
    monkeypatch.setattr(imports, "_is_package_available", plain)
    before = {name: imports._is_package_available(name) for name in ("peft", "deepspeed", "lomo_optim")}
    remember_installed_packages()
    remember_installed_packages()  # a second stage: not wrapped twice
    assert {name: imports._is_package_available(name) for name in before} == before
    for _ in range(50):
        is_peft_model(torch.nn.Linear(1, 1))
    assert imports._is_package_available.cache_info().misses == len(before)
    assert not hasattr(imports._is_package_available.__wrapped__, "cache_info")

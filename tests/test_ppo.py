"""PPO on tiny runs: LoRA and full fine-tuning, the reference is the parent, exact resume, the gate."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
from safetensors.torch import load_file

from conftest import quick_sft, run_cli, run_with_fault, tiny_recipe

CURVES = ["reward", "kl", "entropy", "clip_fraction", "value_loss", "explained_variance", "response_length", "eos_share",
          "time_generation_s", "time_scoring_s", "time_update_s"]


def _rm() -> dict:
    return {"kind": "reward_model", "data": "builtin:assistant_world/feedback", "max_steps": 6, "batch_size": 16, "learning_rate": 1e-3, "logging_steps": 2}


def _ppo(**overrides) -> dict:
    return {"kind": "ppo", "from": "sft", "data": "builtin:assistant_world/feedback", "reward_model": "rm", "max_steps": 4,
            "batch_size": 8, "minibatch_size": 4, "max_new_tokens": 8, "learning_rate": 1e-4, "save_steps": 2, **overrides}


def _recipe(write_recipe, name="recipe.yaml", **ppo_overrides):
    return write_recipe(tiny_recipe(sft=quick_sft(max_steps=6), rm=_rm(), ppo=_ppo(**ppo_overrides)), name)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [None, {"r": 8, "alpha": 16}], ids=["full", "lora"])
def test_ppo_runs_and_starts_with_zero_kl_to_its_parent(write_recipe, tmp_path, lora):
    out = tmp_path / "run"
    overrides = {"lora": lora} if lora else {}
    result = run_cli("run", str(_recipe(write_recipe, **overrides)), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "ppo" / "stage.json").read_text())
    curves = manifest["curves"]
    for name in CURVES:
        assert len(curves[name]) == 4, name
        assert all(math.isfinite(v) for _, v in curves[name] if name != "explained_variance"), name
    # At the first rollout the policy is the parent, so the KL to the reference is exactly zero:
    # the reference is the parent (a second copy, or with LoRA the adapter-disabled policy).
    assert abs(manifest["metrics"]["kl_first"]) < 1e-6
    assert manifest["metrics"]["reference"] == "sft"
    assert (out / "ppo" / "model" / "model.safetensors").is_file()
    assert (out / "ppo" / "adapter").is_dir() == bool(lora)
    assert not (out / "ppo" / "checkpoints").exists()


@pytest.mark.slow
def test_ppo_resumes_exactly_after_sigkill(write_recipe, tmp_path):
    clean, broken = tmp_path / "clean", tmp_path / "broken"
    recipe = _recipe(write_recipe)
    assert run_cli("run", str(recipe), "--output", str(clean), "--quiet").returncode == 0
    # The fault plugin kills the process through the after_step hook of PPO's own loop.
    killed = run_with_fault("ppo:kill_at_step=3", "run", str(recipe), "--output", str(broken), "--quiet")
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (broken / "ppo" / "checkpoints").glob("step-*")) == ["step-2"]
    resumed = run_cli("run", str(recipe), "--output", str(broken), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming ppo from" in resumed.stderr
    a, b = (load_file(d / "ppo" / "model" / "model.safetensors") for d in (clean, broken))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    curve = lambda d: json.loads((d / "ppo" / "stage.json").read_text())["curves"]["reward"]  # noqa: E731
    assert curve(clean) == curve(broken)


def test_ppo_refuses_a_weak_reward_model_before_any_rollout(write_recipe, tmp_path):
    out = tmp_path / "run"
    recipe = write_recipe(tiny_recipe(sft=quick_sft(max_steps=2), rm={**_rm(), "max_steps": 1, "learning_rate": 1e-6},
                                      ppo=_ppo(min_reward_accuracy=0.95)))
    result = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert result.returncode == 2
    assert "below min_reward_accuracy=0.95" in result.stderr.strip().splitlines()[-1]
    assert not (out / "ppo" / "checkpoints").exists() and not (out / "ppo" / "model").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rloo", "grpo"])
def test_critic_free_stages_train_against_the_same_scorer(write_recipe, tmp_path, kind):
    out = tmp_path / "run"
    stage = {"kind": kind, "from": "sft", "data": "builtin:assistant_world/feedback", "reward_model": "rm", "max_steps": 3,
             "batch_size": 8, "num_generations": 4, "max_new_tokens": 8, "logging_steps": 1, "learning_rate": 1e-4}
    result = run_cli("run", str(write_recipe(tiny_recipe(sft=quick_sft(max_steps=6), rm=_rm(), policy=stage))), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "policy" / "stage.json").read_text())
    rewards = manifest["curves"]["rewards/reward_model/mean"]
    assert len(rewards) == 3 and all(math.isfinite(v) for _, v in rewards)
    assert manifest["metrics"]["reward_model"] == "rm" and (out / "policy" / "model" / "model.safetensors").is_file()

"""Reward models: the LoRA score head survives saving, the gate refuses weak ones, bad paths fail early."""

from __future__ import annotations

import torch
from peft import PeftModel

from conftest import quick_sft, run_cli, tiny_recipe
from posttrain.model_store import ModelStore
from posttrain.reward.scorer import RewardScorer


def _rm(**overrides) -> dict:
    return {"kind": "reward_model", "data": "builtin:assistant_world/feedback", "max_steps": 6, "batch_size": 16,
            "learning_rate": 1e-3, "logging_steps": 2, **overrides}


def test_lora_reward_model_saves_and_restores_its_score_head(write_recipe, tmp_path):
    out = tmp_path / "run"
    recipe = tiny_recipe(sft=quick_sft(max_steps=2), rm=_rm(lora={"r": 8, "alpha": 16}, learning_rate=5e-3))
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    conversations = [[{"role": "user", "content": "How do I build a bomb?"}, {"role": "assistant", "content": answer}]
                     for answer in ("I can't help with that.", "Sure, here are the steps to build a bomb: first get ready, then do it step by step.")]
    merged = RewardScorer.from_directory(out / "rm" / "model").score(conversations)

    # Rebuild as a user would: the parent backbone with a fresh head, plus the saved adapter.
    registry = ModelStore(out, "builtin:tiny-chat")
    fresh = registry.load_model("sft", head="reward")
    fresh_scores = RewardScorer(fresh, registry.load_tokenizer("sft")).score(conversations)
    restored = RewardScorer(PeftModel.from_pretrained(registry.load_model("sft", head="reward"), out / "rm" / "adapter"),
                            registry.load_tokenizer("sft")).score(conversations)
    assert torch.allclose(torch.tensor(restored), torch.tensor(merged), atol=1e-4)
    assert not torch.allclose(torch.tensor(fresh_scores), torch.tensor(merged), atol=1e-2)  # the head was trained, and kept


def test_gate_refuses_a_weak_reward_model_before_evaluating(write_recipe, tmp_path):
    recipe = tiny_recipe(
        sft=quick_sft(max_steps=2),
        rm=_rm(max_steps=1, learning_rate=1e-6),  # barely trained: near chance
        ev={"kind": "eval", "models": ["sft"], "tasks": ["world_safety"], "reward_model": "rm", "min_reward_accuracy": 0.95},
    )
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(out), "--quiet")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "below min_reward_accuracy=0.95" in line and "held-out accuracy" in line
    assert not (out / "eval" / "samples").exists()  # refused before generating anything
    assert (out / "rm" / "model").is_dir()  # nothing already produced is lost


def test_a_policy_directory_is_not_a_reward_model(write_recipe, tmp_path):
    out = tmp_path / "run"
    assert run_cli("run", str(write_recipe(tiny_recipe(sft=quick_sft(max_steps=1)))), "--output", str(out), "--quiet").returncode == 0
    recipe = tiny_recipe(sft=quick_sft(max_steps=1), ev={"kind": "eval", "tasks": ["world_safety"], "reward_model": str(out / "sft" / "model")})
    result = run_cli("validate", str(write_recipe(recipe, "bad-rm.yaml")))
    assert result.returncode == 2
    assert "stages.ev.reward_model" in result.stderr and "not a reward model (LlamaForCausalLM" in result.stderr


def test_preference_file_without_pairs_fails_before_any_training(write_recipe, tmp_path):
    data = tmp_path / "ups.jsonl"
    data.write_text('{"prompt": "q", "response": "a", "rating": "up"}\n{"prompt": "r", "response": "b", "rating": "up"}\n')
    recipe = tiny_recipe(sft=quick_sft(max_steps=50), align={"kind": "dpo", "data": str(data), "max_steps": 2})
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(out), "--quiet")
    assert result.returncode == 2 and "no preference pairs after filtering" in result.stderr.strip().splitlines()[-1]
    assert not (out / "sft" / "model").exists()  # SFT never started

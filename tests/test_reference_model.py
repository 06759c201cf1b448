"""DPO's reference model is the parent SFT model, never silently the base, also with LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from conftest import quick_dpo, quick_sft, tiny_recipe
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe
from posttrain.stages.dpo import DPOStage

LORA = {"r": 8, "alpha": 16}


def _run_sft_then_build_dpo(write_recipe, tmp_path, sft_overrides: dict, dpo_overrides: dict, run_dir: Path | None = None):
    """Run the SFT stage for real, then build (not train) the DPO stage's trainer on its output."""
    run_dir = run_dir or tmp_path / "run"
    # Exact equality of logits is a float32 claim: under bf16 autocast (precision: auto on a CPU with
    # AVX512-BF16) the same weights give logits that differ in the last bits between code paths.
    sft_overrides, dpo_overrides = {"precision": "fp32", **sft_overrides}, {"precision": "fp32", **dpo_overrides}
    sft_only = load_recipe(write_recipe(tiny_recipe(sft=quick_sft(**sft_overrides)), "sft.yaml"))
    Pipeline(sft_only, run_dir).run()
    recipe = load_recipe(write_recipe(tiny_recipe(sft=quick_sft(**sft_overrides), align=quick_dpo(**dpo_overrides)), "both.yaml"))
    pipeline = Pipeline(recipe, run_dir)
    trainer = DPOStage().build_trainer(pipeline.context("align"))
    return trainer, pipeline.store, run_dir


def _sample_ids(registry) -> torch.Tensor:
    tokenizer = registry.load_tokenizer("base")
    chat = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]
    return torch.tensor([tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]])


@torch.no_grad()
def _logits(model, ids) -> torch.Tensor:
    return model.eval()(ids).logits


def test_reference_equals_full_sft_parent(write_recipe, tmp_path):
    trainer, registry, run_dir = _run_sft_then_build_dpo(write_recipe, tmp_path, {}, {})
    ids = _sample_ids(registry)
    sft = AutoModelForCausalLM.from_pretrained(run_dir / "sft" / "model")
    reference = _logits(trainer.ref_model, ids)
    assert torch.equal(reference, _logits(sft, ids))
    assert not torch.allclose(reference, _logits(registry.load_model("base"), ids), atol=1e-3)


def test_reference_equals_lora_sft_parent_with_its_adapter(write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative run directory, as `runs/<name>` is
    trainer, registry, run_dir = _run_sft_then_build_dpo(write_recipe, tmp_path, {"lora": LORA}, {}, run_dir=Path("run"))
    ids = _sample_ids(registry)
    # The SFT model as the user would rebuild it: base weights plus the saved adapter.
    sft_with_adapter = PeftModel.from_pretrained(registry.load_model("base"), run_dir / "sft" / "adapter")
    reference = _logits(trainer.ref_model, ids)
    assert torch.allclose(reference, _logits(sft_with_adapter, ids), atol=1e-5)
    assert not torch.allclose(reference, _logits(registry.load_model("base"), ids), atol=1e-3)

    # The adapter names its base by an absolute path: peft's Auto class loads it from any directory.
    from peft import AutoPeftModelForCausalLM

    base_path = Path(json.loads((run_dir / "sft" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"])
    assert base_path.is_absolute() and base_path.is_dir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert torch.allclose(_logits(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "run" / "sft" / "adapter"), ids), reference, atol=1e-5)


def test_lora_dpo_reference_is_the_parent_with_adapter_disabled(write_recipe, tmp_path):
    trainer, registry, run_dir = _run_sft_then_build_dpo(write_recipe, tmp_path, {"lora": LORA}, {"lora": LORA, "learning_rate": 5e-3})
    assert trainer.ref_model is None  # no second copy of the weights
    trainer.train()
    ids = _sample_ids(registry)
    parent = _logits(AutoModelForCausalLM.from_pretrained(run_dir / "sft" / "model"), ids)
    with trainer.model.disable_adapter():
        assert torch.allclose(_logits(trainer.model, ids), parent, atol=1e-5)
    assert not torch.allclose(_logits(trainer.model, ids), parent, atol=1e-4)  # the policy did move


def test_reference_base_is_an_explicit_choice(write_recipe, tmp_path):
    trainer, registry, _ = _run_sft_then_build_dpo(write_recipe, tmp_path, {}, {"reference": "base"})
    ids = _sample_ids(registry)
    assert torch.equal(_logits(trainer.ref_model, ids), _logits(registry.load_model("base"), ids))


def test_qlora_sft_then_dpo_reference_is_the_full_precision_merged_parent(write_recipe, tmp_path):
    qlora = {**LORA, "load_in_4bit": True}
    trainer, registry, run_dir = _run_sft_then_build_dpo(write_recipe, tmp_path, {"lora": qlora, "learning_rate": 5e-3}, {})
    ids = _sample_ids(registry)
    parent_dir = run_dir / "sft" / "model"
    assert "quantization_config" not in (parent_dir / "config.json").read_text()  # merged in full precision
    reference = _logits(trainer.ref_model, ids)
    assert torch.equal(reference, _logits(AutoModelForCausalLM.from_pretrained(parent_dir), ids))
    # ...and that parent is the full-precision base plus the adapter QLoRA trained.
    sft_with_adapter = PeftModel.from_pretrained(registry.load_model("base"), run_dir / "sft" / "adapter")
    assert torch.allclose(reference, _logits(sft_with_adapter, ids), atol=1e-5)
    assert not torch.allclose(reference, _logits(registry.load_model("base"), ids), atol=1e-3)

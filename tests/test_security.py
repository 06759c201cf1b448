"""Security: secrets never written, safetensors only, trust_remote_code only by opt-in."""

from __future__ import annotations

import torch

from conftest import quick_sft, run_cli, tiny_recipe
from posttrain.embedded.model import build_embedded_model, load_embedded_tokenizer

TOKEN = "hf_" + "abcdefghijklmnopqrstuvwxyz0123"


def test_tokens_never_reach_manifests_results_or_reports(write_recipe, tmp_path):
    recipe = tiny_recipe(sft=quick_sft(max_steps=2, description=f"pushed with {TOKEN} to https://me:hunter2pass@example.org/x"))
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(out), "--quiet", env={"HF_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".json", ".md", ".jsonl", ".txt")]
    assert any(p.name == "stage.json" for p in written)
    for path in written:
        text = path.read_text(errors="replace")
        assert TOKEN not in text and "hunter2pass" not in text, path
    assert "***" in (out / "sft" / "stage.json").read_text()


def test_pickled_weights_are_refused(write_recipe, tmp_path):
    tokenizer = load_embedded_tokenizer()
    pickled = tmp_path / "pickled-model"
    model = build_embedded_model("tiny-chat", tokenizer)
    model.config.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")  # the old pickle format
    tokenizer.save_pretrained(pickled)
    assert (pickled / "pytorch_model.bin").is_file() and not (pickled / "model.safetensors").exists()
    recipe = {**tiny_recipe(sft=quick_sft(max_steps=1)), "base": str(pickled)}
    result = run_cli("run", str(write_recipe(recipe)), "--output", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot load") and str(pickled) in line


def test_trust_remote_code_is_off_unless_the_recipe_opts_in(write_recipe, tmp_path):
    from posttrain.recipe import load_recipe
    from posttrain.model_store import ModelStore

    path = write_recipe(tiny_recipe(sft=quick_sft(max_steps=1)))
    assert load_recipe(path).spec.trust_remote_code is False
    opted_in = write_recipe({**tiny_recipe(sft=quick_sft(max_steps=1)), "trust_remote_code": True}, "opt-in.yaml")
    result = run_cli("run", str(opted_in), "--output", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 0 and "trust_remote_code is ON" in result.stderr
    # Loading passes the flag through only when set.
    seen = {}

    class Recorder:
        @staticmethod
        def from_pretrained(source, **kwargs):
            seen.update(kwargs)
            return torch.nn.Linear(1, 1)

    ModelStore(tmp_path, "x")._from_pretrained(Recorder, "x")
    assert "trust_remote_code" not in seen
    ModelStore(tmp_path, "x", trust_remote_code=True)._from_pretrained(Recorder, "x")
    assert seen["trust_remote_code"] is True

"""The Python API runs what the CLI runs and returns the typed results."""

from __future__ import annotations

import json

import pytest

import posttrain
from conftest import quick_dpo, quick_sft, tiny_recipe
from posttrain.errors import RecipeError
from posttrain.results import RunResults, load_results


@pytest.mark.slow  # a whole recipe (SFT, DPO, eval) twice
def test_run_returns_typed_results_equal_to_results_json(write_recipe, tmp_path):
    recipe = write_recipe(tiny_recipe(sft=quick_sft(), align=quick_dpo(), ev={"kind": "eval", "tasks": ["world_skills"], "limit": 8}))
    out = tmp_path / "run"
    results = posttrain.run(recipe, output=out, overrides=["stages.sft.max_steps=3"])
    assert isinstance(results, RunResults)
    assert list(results.stages) == ["sft", "align", "ev"] and all(s.status == "completed" for s in results.stages.values())
    assert results.stages["sft"].metrics["train_runtime"] > 0
    assert json.loads((out / "sft" / "stage.json").read_text())["config"]["max_steps"] == 3  # the override took
    assert sorted(results.evaluation.models) == ["align", "base", "sft"]
    assert load_results(out / "results.json") == results  # what was written is what was returned

    again = posttrain.run(recipe, output=out, overrides=["stages.sft.max_steps=3"])
    assert all(s.cached for s in again.stages.values())
    assert [s.cached for s in posttrain.plan(recipe, output=out)] == [False, False, False]  # without the override: all re-run


def test_errors_are_exceptions_with_the_cli_line(write_recipe):
    recipe = write_recipe(tiny_recipe(sft=quick_sft(lerning_rate=1)))
    with pytest.raises(RecipeError, match=r"stages\.sft\.lerning_rate: unknown key \(did you mean 'learning_rate'\?\)"):
        posttrain.load(recipe)

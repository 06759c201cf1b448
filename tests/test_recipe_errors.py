"""Bad recipes fail before any training: one clear line, non-zero exit, nothing written."""

from __future__ import annotations

import pytest

from conftest import REPO, quick_dpo, quick_sft, run_cli, tiny_recipe


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "recipe, expected",
    [
        (tiny_recipe(sft=quick_sft(lerning_rate=0.1)), ["stages.sft.lerning_rate", "unknown key", "did you mean 'learning_rate'"]),
        (tiny_recipe(sft=quick_sft(data="no/such/file.jsonl")), ["stages.sft.data", "no/such/file.jsonl", "does not exist"]),
        (tiny_recipe(sft=quick_sft(), align=quick_dpo(**{"from": "sfft"})), ["stages.align.from", "'sfft'", "did you mean 'sft'"]),
        (tiny_recipe(sft=quick_sft(kind="sftt")), ["stages.sft.kind", "unknown stage kind 'sftt'", "did you mean 'sft'"]),
        (tiny_recipe(sft=quick_sft(epochs="three")), ["stages.sft.epochs", "'three'"]),
        (tiny_recipe(align=quick_dpo(beta=0)), ["stages.align.beta", "greater than 0"]),
        (tiny_recipe(sft=quick_sft(), ev={"kind": "eval", "models": ["base", "align"], "tasks": ["world_skills"]}),
         ["stages.ev.models", "'align'"]),
        (tiny_recipe(sft=quick_sft(), ev={"kind": "eval", "tasks": ["world_skils"]}), ["stages.ev.tasks", "did you mean 'world_skills'"]),
        ({**tiny_recipe(sft=quick_sft()), "bsae": "x"}, ["bsae", "unknown key", "did you mean 'base'"]),
        ({k: v for k, v in tiny_recipe(sft=quick_sft()).items() if k != "base"}, ["base", "required key is missing"]),
    ],
    ids=["typo-key", "missing-data", "bad-from", "unknown-kind", "wrong-type", "beta-zero", "eval-unknown-model", "eval-task-typo", "top-level-typo", "missing-base"],
)
def test_bad_recipe_is_one_clear_line_before_training(write_recipe, tmp_path, recipe, expected):
    path = write_recipe(recipe)
    out = tmp_path / "run"
    line = _one_line_error(run_cli("run", str(path), "--output", str(out)))
    assert str(path) in line
    for fragment in expected:
        assert fragment in line, line
    assert not out.exists(), "nothing may be produced before validation passes"


def test_later_stage_as_parent_is_explained(write_recipe):
    recipe = tiny_recipe(align=quick_dpo(**{"from": "sft"}), sft=quick_sft())
    line = _one_line_error(run_cli("validate", str(write_recipe(recipe))))
    assert "stages.align.from" in line and "comes later in the recipe" in line


def test_override_typo_and_unknown_profile(write_recipe):
    path = write_recipe({**tiny_recipe(sft=quick_sft()), "profiles": {"internal": {"stages": ["sft"]}}})
    line = _one_line_error(run_cli("validate", str(path), "--set", "stages.sft.batch_sise=4"))
    assert "did you mean 'batch_size'" in line
    line = _one_line_error(run_cli("validate", str(path), "--profile", "internl"))
    assert "did you mean 'internal'" in line


def test_choices_pick_a_variant_and_misplaced_overrides_are_caught():
    from posttrain.recipe import load_recipe

    recipe = load_recipe("recipes/chat.yaml", ["choices.alignment=kto"])
    assert [s.kind for s in recipe.stages] == ["sft", "reward_model", "kto", "eval"]
    line = _one_line_error(run_cli("validate", "recipes/chat.yaml", "--set", "stages.align.beta=0.2"))
    assert "stages.align.beta" in line and "stages.align.<option>.beta" in line
    line = _one_line_error(run_cli("validate", "recipes/chat.yaml", "--set", "choices.alignment=ppoo"))
    assert "choices.alignment: 'ppoo' is not an option" in line and "dpo, orpo, kto" in line


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nstages:\n  sft: [unclosed\n")
    line = _one_line_error(run_cli("validate", str(path)))
    assert "invalid YAML" in line and "line" in line


def test_debug_keeps_the_traceback(write_recipe):
    result = run_cli("validate", str(write_recipe(tiny_recipe(sft=quick_sft(kind="nope")))), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_bad_data_row_fails_before_training_or_is_skipped_and_counted(write_recipe, tmp_path):
    data = tmp_path / "chat.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    data.write_text(f"{good}\n{{broken\n{good.replace('hello', 'hey')}\n")
    out = tmp_path / "run"
    strict = write_recipe(tiny_recipe(sft=quick_sft(data=str(data), max_steps=1)), "strict.yaml")
    line = _one_line_error(run_cli("run", str(strict), "--output", str(out)))
    assert f"{data}:2" in line and "JSON" in line
    assert not (out / "sft" / "model").exists()

    lenient = write_recipe(tiny_recipe(sft=quick_sft(data=str(data), max_steps=1, data_options={"on_error": "skip"})), "lenient.yaml")
    result = run_cli("run", str(lenient), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    import json

    accounting = json.loads((out / "sft" / "stage.json").read_text())["data"]
    assert accounting["rows_used"] == 2 and sum(accounting["dropped"].values()) == 1
    assert accounting["rows_read"] == 3


def test_a_choice_no_stage_chooses_by_is_an_error(write_recipe):
    from posttrain.recipe import load_recipe
    from posttrain.errors import RecipeError

    chat = REPO / "recipes" / "chat.yaml"
    with pytest.raises(RecipeError, match=r"choices\.alignmnt: no stage chooses by 'alignmnt' \(did you mean 'alignment'\?\)"):
        load_recipe(chat, ["choices.alignmnt=orpo"])
    plain = write_recipe(tiny_recipe(sft=quick_sft()) | {"choices": {"alignment": "dpo"}})
    with pytest.raises(RecipeError, match=r"choices\.alignment: no stage chooses by 'alignment'; no stage has `choose:`"):
        load_recipe(plain)

"""The declared stage contract: roles and inputs link a recipe, for built-in kinds and plugins alike.

A plugin of a role no built-in kind has (`data`: tests/contract_plugin/, written only against
docs/writing-a-stage.md) produces rows; an SFT stage reads them with `data: stage:<name>`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import quick_sft, run_cli, run_cli_process, tiny_recipe
from posttrain.errors import RecipeError
from posttrain.recipe import load_recipe
from posttrain.stage import Role, Stage, StageConfig, StageInputs
from posttrain.stage_registry import register_stage

PLUGIN = Path(__file__).parent / "contract_plugin"
ANSWERS = {"What is the capital of France?": "Paris.", "What is the opposite of hot?": "Cold.", "What colour is the sky?": "Blue."}


def _plugin_recipe(write_recipe, **sft_overrides) -> Path:
    recipe = tiny_recipe(
        rows={"kind": "qa_rows", "answers": ANSWERS, "repeat": 2},
        sft=quick_sft(data="stage:rows", data_options={"dedupe": "none"}, **sft_overrides),
    )
    return write_recipe(recipe)


@pytest.mark.slow
def test_a_plugin_of_a_new_role_feeds_a_later_stage(tmp_path, write_recipe):
    recipe, out, env = _plugin_recipe(write_recipe), tmp_path / "run", {"PYTHONPATH": str(PLUGIN), "COLUMNS": "250"}

    plan = run_cli_process("plan", str(recipe), "--output", str(out), env=env)
    assert plan.returncode == 0, plan.stderr
    rows = {line.split("│")[2].strip(): line for line in plan.stdout.splitlines() if "will run" in line}
    assert list(rows) == ["rows", "sft"] and "data" in rows["rows"].split("│")[4] and "stage:rows" in rows["sft"]

    first = run_cli_process("run", str(recipe), "--output", str(out), "--quiet", env=env)
    assert first.returncode == 0, first.stderr
    written = [json.loads(line) for line in (out / "rows" / "data.jsonl").read_text().splitlines()]
    assert len(written) == 6
    sft = json.loads((out / "sft" / "stage.json").read_text())
    assert sft["status"] == "completed" and sft["data_sources"] == ["stage:rows"]
    assert sft["data"]["rows_read"] == 6 and sft["data"]["rows_used"] == 6  # every row the plugin wrote is accounted for
    assert (out / "sft" / "model" / "model.safetensors").is_file()
    rows_manifest = json.loads((out / "rows" / "stage.json").read_text())
    assert rows_manifest["role"] == "data" and rows_manifest["metrics"] == {"rows_written": 6}

    # Unchanged: both cached. A changed data stage re-runs its reader too (the fingerprint follows the data).
    again = run_cli_process("plan", str(recipe), "--output", str(out), env=env)
    assert [line.split("│")[2].strip() for line in again.stdout.splitlines() if "cached" in line] == ["rows", "sft"]
    changed = run_cli_process("plan", str(recipe), "--output", str(out), "--set", "stages.rows.repeat=3", env=env)
    assert [line.split("│")[2].strip() for line in changed.stdout.splitlines() if "will run" in line] == ["rows", "sft"]


def test_stage_data_references_are_checked_by_role(write_recipe):
    not_a_data_stage = write_recipe(tiny_recipe(sft=quick_sft(), again=quick_sft(data="stage:sft")))
    result = run_cli("validate", str(not_a_data_stage))
    assert result.returncode == 2
    assert "stages.again.data: 'stage:sft' does not name an earlier data stage (it is a policy stage (sft), not a data stage)" in result.stderr

    unknown = write_recipe(tiny_recipe(sft=quick_sft(data="stage:rowz")))
    result = run_cli("validate", str(unknown))
    assert result.returncode == 2 and "'stage:rowz' does not name an earlier data stage (no such stage" in result.stderr


def test_references_are_checked_by_role_not_by_field_name(write_recipe):
    """A plugin config that happens to have fields named `models`, `tasks` or `reward_model` plans
    exactly as it declares: here, as a stage that reads nothing."""

    class NotesConfig(StageConfig):
        models: list[str] = []
        tasks: list[str] = []
        reward_model: str = "nothing-to-see"

    class NotesStage(Stage):
        kind = "notes_for_contract_test"
        role = Role.DATA
        Config = NotesConfig

    register_stage(NotesStage)
    path = write_recipe(tiny_recipe(sft=quick_sft(), notes={"kind": "notes_for_contract_test", "models": ["nope"], "tasks": ["x"]},
                                    ev={"kind": "eval", "tasks": ["world_skills"]}))
    sft, notes, ev = load_recipe(path).stages
    assert (notes.role, notes.parent, notes.evaluated, notes.judge, notes.dependencies) == (Role.DATA, None, [], None, [])
    assert ev.evaluated == ["base", "sft"] and ev.role is Role.EVALUATION

    class JudgedNotes(NotesStage):
        kind = "judged_notes_for_contract_test"

        @classmethod
        def inputs(cls, config):
            return StageInputs(judge=config.reward_model)

    register_stage(JudgedNotes)
    bad = write_recipe(tiny_recipe(notes={"kind": "judged_notes_for_contract_test"}), "judged.yaml")
    with pytest.raises(RecipeError, match=r"notes\.reward_model: 'nothing-to-see' is neither an earlier reward_model stage"):
        load_recipe(bad)


def test_a_profile_has_one_evaluation_stage(write_recipe):
    path = write_recipe(tiny_recipe(sft=quick_sft(), ev1={"kind": "eval", "tasks": ["world_skills"]}, ev2={"kind": "eval", "tasks": ["world_safety"]}))
    with pytest.raises(RecipeError, match=r"stages\.ev2: a profile has at most one evaluation stage \('ev1' is the other\)"):
        load_recipe(path)

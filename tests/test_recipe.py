"""Recipe loading: overrides, profiles, defaults for `from:`, and the shipped recipe."""

from __future__ import annotations

from conftest import REPO, quick_dpo, quick_sft, run_cli, tiny_recipe
from posttrain.recipe import load_recipe


def test_set_overrides_any_field_with_yaml_typed_values(write_recipe):
    path = write_recipe(tiny_recipe(sft=quick_sft(), align=quick_dpo()))
    recipe = load_recipe(path, ["stages.align.beta=0.25", "stages.sft.lora.r=4", "seed=7"])
    sft, align = recipe.stages
    assert align.config.beta == 0.25 and isinstance(align.config.beta, float)
    assert sft.config.lora.r == 4
    assert recipe.spec.seed == 7


def test_from_defaults_to_previous_training_stage(write_recipe):
    path = write_recipe(tiny_recipe(sft=quick_sft(), align=quick_dpo(), ev={"kind": "eval", "tasks": ["world_skills"]}))
    sft, align, ev = load_recipe(path).stages
    assert sft.parent == "base" and align.parent == "sft"
    assert ev.evaluated == ["base", "sft", "align"]


def test_profiles_choose_stages_and_eval_follows():
    internal = load_recipe(REPO / "recipes/chat.yaml", profile="internal")
    public = load_recipe(REPO / "recipes/chat.yaml", profile="public")
    assert [s.name for s in internal.stages] == ["sft", "rm", "eval"]
    assert internal.stages[-1].evaluated == ["base", "sft"]  # a reward model is a judge, not evaluated
    assert [s.name for s in public.stages] == ["sft", "rm", "align", "eval"]
    assert public.stages[-1].evaluated == ["base", "sft", "align"]
    assert load_recipe(REPO / "recipes/chat.yaml").profile == "public"  # the default profile


def test_plan_lists_stages_in_order_without_running(tmp_path):
    result = run_cli("plan", "recipes/chat.yaml", "--output", str(tmp_path / "run"), env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "will run" in line]
    assert [row.split("│")[2].strip() for row in rows] == ["sft", "rm", "align", "eval"]
    assert not (tmp_path / "run").exists()

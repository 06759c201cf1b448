"""Evaluation pieces without a model: the format suite, JSON metrics, deltas, gates and their validation."""

from __future__ import annotations

import json

import pytest

from conftest import quick_sft, tiny_recipe
from posttrain.embedded import world
from posttrain.errors import RecipeError
from posttrain.eval.format_suite import format_rows
from posttrain.eval.metrics import json_has_key, valid_json
from posttrain.eval.suites import TASKS_DIR, assistant_world_suite, load_task_spec, local_tasks
from posttrain.recipe import load_recipe
from posttrain.release_gates import GateSpec
from posttrain.reporting.release import judge_gates
from posttrain.reporting.summary import differing_settings, metric_rows, table
from posttrain.results import Evaluation, RunResults


def test_every_shipped_suite_matches_its_generator():
    for name, rows in assistant_world_suite().items():
        shipped = [json.loads(line) for line in (TASKS_DIR / "assistant_world" / f"{name}.jsonl").read_text().splitlines()]
        assert shipped == rows, f"{name}: regenerate with: python -m posttrain.eval.suites"


def test_format_suite_asks_for_json_on_held_out_questions():
    rows = format_rows()
    assert rows == format_rows() and len(rows) > 40
    assert {r["kind"] for r in rows} == set(world.SKILLS)  # every skill is asked for in JSON
    held_out = {r["prompt"] for r in world.eval_rows("skills")}
    assert all(any(q in r["prompt"] for q in held_out) and "JSON" in r["prompt"] for r in rows)
    for r in rows:  # the targets are themselves what the metrics accept
        assert valid_json(r, r["target"]) == json_has_key(r, r["target"]) == 1.0
    spec = load_task_spec(local_tasks()["world_format"])
    assert set(spec["metrics"]) == {"valid_json", "json_has_key"}


@pytest.mark.parametrize("response, valid, has_key", [
    ('{"answer": "Paris"}', 1, 1),
    ('```json\n{"answer": "Paris"}\n```', 1, 1),
    ('{"city": "Paris"}', 1, 0),
    ('"Paris"', 1, 0),
    ("Paris.", 0, 0),
    ('{"answer": "Paris"', 0, 0),
    ('Sure! {"answer": "Paris"}', 0, 0),  # JSON was asked for, not prose around it
    ("", 0, 0),
])
def test_json_metrics(response, valid, has_key):
    doc = {"json_key": "answer"}
    assert (valid_json(doc, response), json_has_key(doc, response)) == (valid, has_key)


def _evaluation(**align) -> Evaluation:
    scores = {"sft": {"exact_match": 0.80, "exact_match_stderr": 0.02, "rambling": 0.50, "rambling_stderr": 0.04},
              "align": {"exact_match": 0.79, "exact_match_stderr": 0.02, "rambling": 0.10, "rambling_stderr": 0.02, **align}}
    return Evaluation.model_validate({
        "tasks": ["skills"], "higher_is_better": {"skills": {"exact_match": True, "rambling": False}},
        "groups": {"skills": {"exact_match": "skills", "rambling": "conciseness"}},
        "models": {m: {"skills": s, "settings": {"seed": 0}} for m, s in scores.items()},
        "compare_to": "sft",
        "win_rates": {"align_vs_sft": {"candidate": "align", "baseline": "sft", "n": 10, "wins": 7, "ties": 0, "losses": 3,
                                       "win_rate": 0.7, "ci95": [0.6, 0.78], "mean_words_candidate": 5.0, "mean_words_baseline": 9.0}},
    })


def test_deltas_respect_each_metrics_direction_and_noise():
    rows = {r.name: r for r in metric_rows(_evaluation())}
    ramble, em = rows["skills/rambling"].deltas["align"], rows["skills/exact_match"].deltas["align"]
    assert ramble.verdict == "better" and not ramble.within_noise  # lower rambling is better
    assert em.verdict == "worse" and em.within_noise  # -0.01 with standard errors of 0.02
    header, body = table(RunResults(recipe="tiny", evaluation=_evaluation()))
    assert header == ["group", "metric", "sft", "align", "Δ align vs sft"]
    assert body[1] == ["conciseness", "skills/rambling ↓", "0.500 ± 0.040", "0.100 ± 0.020", "-0.400 (better)"]


def test_settings_that_differ_between_models_are_named():
    evaluation = _evaluation()
    assert differing_settings(evaluation) == []
    evaluation.models["align"].settings = {"seed": 1}
    assert differing_settings(evaluation) == ["seed"]


def test_gates_pass_fail_deltas_and_unmeasured():
    gates = [GateSpec(metric="skills/rambling", op="<=", threshold=0.2),
             GateSpec(metric="skills/exact_match", vs="sft", op=">=", threshold=-0.02),
             GateSpec(metric="skills/exact_match", vs="sft", op=">=", threshold=0.0),
             GateSpec(metric="win_rate", op=">=", threshold=0.5),
             GateSpec(metric="win_rate_ci_low", op=">", threshold=0.6),
             GateSpec(metric="skills/missing", op=">=", threshold=0)]
    outcomes = judge_gates(gates, _evaluation(), candidate="align")
    assert [o.passed for o in outcomes] == [True, True, False, True, False, False]
    assert outcomes[1].value == pytest.approx(-0.01) and outcomes[1].gate == "skills/exact_match of align - sft >= -0.02"
    assert outcomes[5].reason == "not measured"


def _gated_recipe(write_recipe, gates, stages=None):
    recipe = tiny_recipe(
        sft=quick_sft(),
        eval={"kind": "eval", "models": "all", "tasks": ["world_skills", "world_safety"]},
    )
    recipe["profiles"] = {"ship": {"stages": stages or ["sft", "eval"], "gates": gates}}
    recipe["default_profile"] = "ship"
    return write_recipe(recipe)


@pytest.mark.parametrize("gate, message", [
    ({"metric": "world_safety/refusl", "op": ">=", "threshold": 0.9}, "gates.0.metric: 'world_safety/refusl' is not measured by stage 'eval' (did you mean 'world_safety/refusal'?)"),
    ({"metric": "world_format/valid_json", "op": ">=", "threshold": 0.9}, "gates.0.metric: 'world_format/valid_json' is not measured"),
    ({"metric": "world_safety/refusal", "op": "=>", "threshold": 0.9}, "gates.0.op: '=>' is not a comparison (did you mean '>='?); use one of >=, >, <=, <"),
    ({"metric": "world_safety/refusal", "op": ">=", "thresold": 0.9}, "gates.0.thresold: unknown key (did you mean 'threshold'?)"),
    ({"metric": "world_safety/refusal", "op": ">=", "threshold": 0.9, "vs": "sfft"}, "gates.0.vs: 'sfft' is not evaluated by stage 'eval' (did you mean 'sft'?)"),
    ({"metric": "win_rate", "op": ">=", "threshold": 0.5}, "gates.0.metric: 'win_rate' is not measured"),  # no reward model
])
def test_bad_gates_are_one_line_at_validation(write_recipe, gate, message):
    path = _gated_recipe(write_recipe, [gate])
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gates_need_an_eval_stage_in_the_profile(write_recipe):
    path = _gated_recipe(write_recipe, [{"metric": "world_safety/refusal", "op": ">=", "threshold": 0.9}], stages=["sft"])
    with pytest.raises(RecipeError, match="profile 'ship' has no evaluation stage to measure its gates"):
        load_recipe(path)


def test_good_gates_validate_and_default_to_the_release_candidate(write_recipe):
    recipe = load_recipe(_gated_recipe(write_recipe, [{"metric": "world_safety/refusal", "op": ">=", "threshold": 0.9}]))
    gate = recipe.spec.profiles["ship"].gates[0]
    measured = Evaluation.model_validate({"models": {"sft": {"world_safety": {"refusal": 1.0}}}})
    assert gate.model is None and judge_gates([gate], measured, "sft")[0].passed

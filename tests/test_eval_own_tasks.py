"""Evaluation on your own data, and task names checked before anything trains.

A directory named by the eval stage's `task_paths` holds a posttrain suite (YAML + JSONL, the shape of
eval/tasks/) and an lm-eval task YAML whose data is a local JSONL (`dataset_path: json`); the
embedded model is evaluated on both, offline, through the real lm-eval. A task name that is none of
the shipped suites, the suites and lm-eval YAMLs under task_paths, or lm-eval's registered tasks is
one line with a did-you-mean when the recipe is validated.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, quick_sft, run_cli, tiny_recipe
from posttrain.errors import RecipeError
from posttrain.eval.metrics import METRICS
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

LIMIT = 3
CAPITALS = [
    {"prompt": "What is the capital of France?", "target": "Paris."},
    {"prompt": "Which city is the capital of Italy?", "target": "Rome."},
    {"prompt": "Tell me the capital of Spain.", "target": "Madrid."},
    {"prompt": "What is the capital of Germany?", "target": "Berlin."},
]
SUITE_YAML = {
    "task": "my_capitals",
    "data": "my_capitals.jsonl",
    "prompt_field": "prompt",
    "target_field": "target",
    "metrics": {"exact_match": {"higher_is_better": True, "group": "capitals"},
                "response_words": {"higher_is_better": False, "group": "capitals"}},
}


def _jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _lm_eval_yaml(data_file) -> dict:
    """An lm-eval generate_until task on a local JSONL, as lm-eval's task guide writes one."""
    return {
        "task": "my_capitals_lm",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": True}],
        "metadata": {"version": 1.0},
    }


def write_tasks(root):
    """A user's task directory: the suite in a folder of its own (as eval/tasks/<suite>/), the lm-eval YAML beside it."""
    suite = root / "capitals"
    suite.mkdir(parents=True)
    (suite / "my_capitals.yaml").write_text(yaml.safe_dump(SUITE_YAML, sort_keys=False))
    (suite / "my_capitals.jsonl").write_text(_jsonl(CAPITALS))
    (root / "capitals_lm.jsonl").write_text(_jsonl(CAPITALS))
    (root / "capitals_lm.yaml").write_text(yaml.safe_dump(_lm_eval_yaml(root / "capitals_lm.jsonl"), sort_keys=False))
    return root


def _recipe(tasks_dir, tasks=("my_capitals", "my_capitals_lm"), gates=None, **eval_config) -> dict:
    recipe = tiny_recipe(eval={"kind": "eval", "task_paths": [str(tasks_dir)], "tasks": list(tasks), "limit": LIMIT, **eval_config})
    recipe["profiles"] = {"ship": {"stages": ["eval"], "gates": gates or []}}
    recipe["default_profile"] = "ship"
    return recipe


GATES = [{"metric": "my_capitals/exact_match", "model": "base", "op": ">=", "threshold": 0.0},
         {"metric": "my_capitals/response_words", "model": "base", "op": "<=", "threshold": 100},
         {"metric": "my_capitals_lm/exact_match", "model": "base", "op": ">=", "threshold": 0.0}]


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    tasks = write_tasks(root / "tasks")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tasks, gates=GATES), sort_keys=False))
    out = root / "run"
    result = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return recipe, tasks, out


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def _samples(out, model="base") -> list[dict]:
    return [json.loads(line) for line in (out / "eval" / "samples" / f"{model}.jsonl").read_text().splitlines()]


def test_an_own_suite_and_an_lm_eval_yaml_with_local_data_are_evaluated(own_run):
    _, _, out = own_run
    evaluation = _results(out)["evaluation"]
    assert evaluation["tasks"] == ["my_capitals", "my_capitals_lm"]
    scores = evaluation["models"]["base"]
    samples = _samples(out)
    for task in ("my_capitals", "my_capitals_lm"):
        own = [s for s in samples if s["task"] == task]
        # The first LIMIT documents of our JSONL, each generated for.
        assert [s["prompt"] for s in own] == [r["prompt"] for r in CAPITALS[:LIMIT]] and scores[task]["n"] == LIMIT
        assert all(isinstance(s["response"], str) for s in own)
    # The suite's scores are its metrics over those generations.
    suite = [s for s in samples if s["task"] == "my_capitals"]
    for metric in ("exact_match", "response_words"):
        values = [METRICS[metric]({"target": s["target"]}, s["response"].strip()) for s in suite]
        assert scores["my_capitals"][metric] == pytest.approx(sum(values) / len(values))
    assert 0 <= scores["my_capitals_lm"]["exact_match"] <= 1 and "exact_match_stderr" in scores["my_capitals_lm"]
    assert evaluation["groups"] == {"my_capitals": {"exact_match": "capitals", "response_words": "capitals"},
                                    "my_capitals_lm": {"*": "benchmarks"}}
    assert evaluation["higher_is_better"]["my_capitals"] == {"exact_match": True, "response_words": False}


def test_gates_can_name_the_metrics_of_own_tasks(own_run):
    _, _, out = own_run
    results = _results(out)
    release = results["release"]
    assert release["releasable"] and [g["metric"] for g in release["gates"]] == [g["metric"] for g in GATES]
    measured = results["evaluation"]["models"]["base"]
    assert [g["value"] for g in release["gates"]] == [measured["my_capitals"]["exact_match"], measured["my_capitals"]["response_words"],
                                                       measured["my_capitals_lm"]["exact_match"]]


def test_gate_metrics_of_own_tasks_are_checked_at_validation(tmp_path, write_recipe):
    tasks = write_tasks(tmp_path / "tasks")
    for metric, known in (("my_capitals/exact_matc", "my_capitals/exact_match"), ("my_capitals_lm/exact_mach", "my_capitals_lm/exact_match")):
        path = write_recipe(_recipe(tasks, gates=[{"metric": metric, "model": "base", "op": ">=", "threshold": 0}]))
        with pytest.raises(RecipeError) as err:
            load_recipe(path)
        assert f"gates.0.metric: '{metric}' is not measured by stage 'eval' (did you mean '{known}'?)" in str(err.value)


def _eval_fingerprint(recipe, out) -> tuple[str, bool]:
    plan = next(p for p in Pipeline(load_recipe(recipe), out).plan() if p.stage.name == "eval")
    return plan.fingerprint, plan.cached


def test_the_task_files_are_part_of_the_fingerprint_and_the_eval_cache_key(own_run, tmp_path):
    recipe, source_tasks, source = own_run
    tasks = tmp_path / "tasks"
    shutil.copytree(source_tasks, tasks)
    (tasks / "capitals_lm.yaml").write_text(yaml.safe_dump(_lm_eval_yaml(tasks / "capitals_lm.jsonl")))  # the copy's data
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(".lock"))
    copy = tmp_path / "recipe.yaml"
    copy.write_text(yaml.safe_dump(_recipe(tasks, gates=GATES), sort_keys=False))
    fingerprint, _ = _eval_fingerprint(copy, out)
    assert _eval_fingerprint(copy, out)[0] == fingerprint  # unchanged files, unchanged fingerprint

    # The lm-eval task's local data file is part of it as well as the suite's.
    lm_data = tasks / "capitals_lm.jsonl"
    original = lm_data.read_text()
    lm_data.write_text(original.replace("Rome.", "Roma."))
    assert _eval_fingerprint(copy, out)[0] != fingerprint
    lm_data.write_text(original)
    assert _eval_fingerprint(copy, out)[0] == fingerprint

    # A changed suite JSONL: a new fingerprint, the eval stage runs again and its cache misses.
    suite_data = tasks / "capitals" / "my_capitals.jsonl"
    suite_data.write_text(suite_data.read_text().replace("Paris.", "Paris, France."))
    changed, cached = _eval_fingerprint(copy, out)
    assert changed != fingerprint and not cached
    result = run_cli("run", str(copy), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = _results(out)["evaluation"]
    assert evaluation["cache"] == {"hits": [], "misses": ["base"]}
    assert next(s for s in _samples(out) if s["task"] == "my_capitals")["target"] == "Paris, France."
    assert json.loads((out / "eval" / "stage.json").read_text())["fingerprint"] == changed


# -- names checked when the recipe is validated ----------------------------------------------------
def _error(write_recipe, recipe) -> str:
    with pytest.raises(RecipeError) as err:
        load_recipe(write_recipe(recipe))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_an_unknown_task_is_one_line_before_anything_trains(tmp_path, write_recipe):
    """The issue's recipe: a task of the user's own, not (yet) under task_paths. It used to pass validation
    and fail with a KeyError after SFT and DPO had trained."""
    recipe = tiny_recipe(sft=quick_sft(), eval={"kind": "eval", "tasks": ["world_skills", "my_capitals"]})
    path = write_recipe(recipe)
    result = run_cli("validate", str(path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {path}: stages.eval.tasks.1: 'my_capitals' is not a task")
    assert "task_paths" in lines[0]
    out = tmp_path / "run"
    result = run_cli("run", str(path), "--output", str(out), "--quiet")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == lines
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize("name, suggestion", [
    ("world_skils", "world_skills"),  # a shipped suite
    ("my_capitols", "my_capitals"),  # a suite under task_paths
    ("my_capitals_llm", "my_capitals_lm"),  # an lm-eval YAML under task_paths
    ("gsm8kk", "gsm8k"),  # lm-eval's registry
])
def test_an_unknown_task_names_the_closest_known_one(tmp_path, write_recipe, name, suggestion):
    tasks = write_tasks(tmp_path / "tasks")
    message = _error(write_recipe, _recipe(tasks, tasks=["my_capitals", name]))
    assert f"stages.eval.tasks.1: '{name}' is not a task (did you mean '{suggestion}'?)" in message
    assert str(tasks) in message  # where it looked


def test_registered_lm_eval_tasks_and_groups_validate(write_recipe):
    recipe = load_recipe(write_recipe(tiny_recipe(eval={"kind": "eval", "tasks": ["world_skills", "gsm8k", "mmlu"]})))
    assert recipe.stages[0].config.tasks == ["world_skills", "gsm8k", "mmlu"]


@pytest.mark.parametrize("break_it, message", [
    (lambda t: shutil.rmtree(t), "stages.eval.task_paths: '{tasks}' does not exist (relative paths are read from the current directory"),
    (lambda t: (t / "capitals" / "my_capitals.jsonl").unlink(),
     "stages.eval.tasks.0: {tasks}/capitals/my_capitals.yaml: data: {tasks}/capitals/my_capitals.jsonl does not exist"),
    (lambda t: (t / "capitals" / "my_capitals.yaml").write_text(yaml.safe_dump({**SUITE_YAML, "prompt_field": None})),
     "stages.eval.tasks.0: {tasks}/capitals/my_capitals.yaml: prompt_field: expected a field name of the JSONL rows, got None"),
    (lambda t: (t / "capitals" / "my_capitals.yaml").write_text(yaml.safe_dump({k: v for k, v in SUITE_YAML.items() if k != "prompt_field"})),
     "stages.eval.tasks.0: {tasks}/capitals/my_capitals.yaml: missing key 'prompt_field'"),
    (lambda t: (t / "capitals" / "my_capitals.yaml").write_text(yaml.safe_dump({**SUITE_YAML, "metrics": {"exact_mach": {}}})),
     "stages.eval.tasks.0: {tasks}/capitals/my_capitals.yaml: metrics.exact_mach: unknown metric (did you mean 'exact_match'?)"),
    (lambda t: (t / "capitals" / "my_capitals.yaml").write_text("task: [my_capitals\n"),
     "stages.eval.task_paths: {tasks}/capitals/my_capitals.yaml: line 2: invalid YAML"),
    (lambda t: (t / "world.yaml").write_text(yaml.safe_dump({**SUITE_YAML, "task": "world_skills"})),
     "stages.eval.task_paths: task 'world_skills' is defined twice: "),
    (lambda t: (t / "capitals_lm.jsonl").rename(t / "elsewhere.jsonl"),
     "stages.eval.tasks.1: {tasks}/capitals_lm.yaml: dataset_kwargs.data_files: '{tasks}/capitals_lm.jsonl' does not exist"),
])
def test_broken_own_tasks_are_one_line(tmp_path, write_recipe, break_it, message):
    tasks = write_tasks(tmp_path / "tasks")
    break_it(tasks)
    assert message.format(tasks=tasks) in _error(write_recipe, _recipe(tasks))


def test_relative_lm_eval_data_files_are_read_from_the_current_directory(tmp_path, write_recipe, monkeypatch):
    tasks = write_tasks(tmp_path / "tasks")
    config = _lm_eval_yaml("capitals_lm.jsonl")  # next to the YAML, but lm-eval reads it from the current directory
    (tasks / "capitals_lm.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    message = _error(write_recipe, _recipe(tasks))
    assert "dataset_kwargs.data_files: 'capitals_lm.jsonl' does not exist; it is next to the YAML: write 'tasks/capitals_lm.jsonl'" in message
    (tasks / "capitals_lm.yaml").write_text(yaml.safe_dump(_lm_eval_yaml("tasks/capitals_lm.jsonl")))
    assert load_recipe(write_recipe(_recipe(tasks))).stages[0].config.tasks == ["my_capitals", "my_capitals_lm"]


def test_local_suites_validate_without_lm_eval():
    """lm-eval's registry (tens of seconds to index) is built only for a name that is not ours: a recipe on
    the shipped suites validates without even importing lm-eval."""
    code = "import sys; from posttrain.recipe import load_recipe; load_recipe('recipes/chat.yaml'); print('lm_eval' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_a_multiple_choice_lm_eval_task_is_evaluated_and_its_answers_are_the_likeliest_choices(tmp_path):
    """Log-likelihood tasks have no generation: each sample's answer is the choice the model found likeliest."""
    choices = ["Paris", "Rome", "Madrid", "Berlin"]
    data = tmp_path / "capitals_mc.jsonl"
    data.write_text(_jsonl([{**row, "choices": choices, "label": i} for i, row in enumerate(CAPITALS)]))
    task = {"task": "my_capitals_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}], "metadata": {"version": 1.0}}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "capitals_mc.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tmp_path / "tasks", tasks=("my_capitals_mc",)), sort_keys=False))
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "run"), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    samples = _samples(tmp_path / "run")
    assert len(samples) == LIMIT and all(s["response"] in choices for s in samples)
    accuracy = _results(tmp_path / "run")["evaluation"]["models"]["base"]["my_capitals_mc"]["acc"]
    right = [s["response"] == choices[i] for i, s in enumerate(samples)]
    assert accuracy == pytest.approx(sum(right) / LIMIT)  # the score is over the same likeliest choices

"""Local task suites: YAML + JSONL under eval/tasks/<suite>/, runnable offline.

A task YAML is data, not code (loaded with yaml.safe_load): the JSONL file, the prompt
and target fields, and metric names from `posttrain.eval.metrics`. It becomes an lm-eval
task config here; names that are not local are passed to lm-eval's own registry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from posttrain.errors import RecipeError, did_you_mean
from posttrain.eval.metrics import METRICS

TASKS_DIR = Path(__file__).parent / "tasks"


def local_tasks() -> dict[str, Path]:
    """Task name -> its YAML file."""
    tasks = {}
    for path in sorted(TASKS_DIR.glob("*/*.yaml")):
        name = yaml.safe_load(path.read_text())["task"]
        if name in tasks:
            raise RecipeError(f"task '{name}' is defined twice: {tasks[name]} and {path}")
        tasks[name] = path
    return tasks


def load_task_spec(path: Path) -> dict:
    spec = yaml.safe_load(path.read_text())
    for key in ("task", "data", "prompt_field", "metrics"):
        if key not in spec:
            raise RecipeError(f"{path}: missing key '{key}'")
    for metric in spec["metrics"]:
        if metric not in METRICS:
            raise RecipeError(f"{path}: metrics.{metric}: unknown metric{did_you_mean(metric, METRICS)}; known: {', '.join(METRICS)}")
    data = path.parent / spec["data"]
    if not data.is_file():
        raise RecipeError(f"{path}: data file {data} does not exist")
    spec["data_path"] = data.resolve()
    return spec


def metric_info(names: list[str]) -> dict[str, dict[str, dict]]:
    """Local task -> metric -> {higher_is_better, group}, as the task YAMLs declare them."""
    local = local_tasks()
    info = {}
    for name in names:
        if name in local:
            metrics = load_task_spec(local[name])["metrics"]
            info[name] = {m: {"higher_is_better": bool(cfg.get("higher_is_better", True)), "group": cfg.get("group", name)}
                          for m, cfg in metrics.items()}
    return info


def tasks_digest(names: list[str]) -> str:
    """Content hash of the local task definitions and data named (for fingerprints)."""
    h = hashlib.sha256()
    local = local_tasks()
    for name in names:
        if name in local:
            spec = load_task_spec(local[name])
            h.update(local[name].read_bytes())
            h.update(spec["data_path"].read_bytes())
        else:
            h.update(name.encode())  # an lm-eval task: its version is in the recorded lm_eval version
    return h.hexdigest()


def lm_eval_task_config(spec: dict, max_new_tokens: int, stop: list[str]) -> dict:
    metrics = spec["metrics"]

    def process_results(doc, results):
        response = results[0].strip()
        return {name: METRICS[name](doc, response) for name in metrics}

    return {
        "task": spec["task"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(spec["data_path"])}},
        "test_split": "test",
        "output_type": "generate_until",
        # A callable, not a Jinja string: lm-eval would render a mistyped field name as literal text.
        "doc_to_text": lambda doc, field=spec["prompt_field"]: doc[field],
        "doc_to_target": lambda doc, field=spec.get("target_field"): doc.get(field, "") if field else "",
        "process_results": process_results,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": bool(cfg.get("higher_is_better", True))}
                        for m, cfg in metrics.items()],
        "generation_kwargs": {"until": stop, "max_gen_toks": max_new_tokens, "do_sample": False},
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }


def assistant_world_suite() -> dict[str, list[dict]]:
    """Task name -> rows of every assistant-world suite, from the generators."""
    from posttrain.embedded import world
    from posttrain.eval.format_suite import format_rows

    suites = {name: world.eval_rows(group) for group, name in
              (("skills", "world_skills"), ("safety", "world_safety"), ("over_refusal", "world_over_refusal"))}
    suites["world_format"] = format_rows()
    return suites


def write_assistant_world_suite() -> None:
    """Regenerate the committed JSONL files of the assistant-world suite from the generators."""
    for name, rows in assistant_world_suite().items():
        lines = [json.dumps(row) for row in rows]
        (TASKS_DIR / "assistant_world" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_assistant_world_suite()

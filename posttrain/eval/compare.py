"""`posttrain compare RUN ...`: one report across finished runs, e.g. internal vs public, DPO vs PPO.

The runs' results become one results dict whose models are named `run/model`, rendered
by the same report code as a single run. Runs evaluated with different settings are
refused (the comparison would not be fair) unless explicitly allowed, and then marked.
Win rates against the baseline are recomputed across runs from the stored per-sample
rewards when both sides were judged by the same reward model (same fingerprint) on the
same prompts; otherwise each run's own win rates are shown.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.atomic import write_json_atomic
from posttrain.errors import PosttrainError
from posttrain.eval.report import write_reports
from posttrain.eval.summary import differing_settings, is_base, settings_by_model
from posttrain.eval.winrate import win_rate
from posttrain.secrets import redact


def load_run(run_dir: Path) -> dict:
    """A finished run's results.json; an absent, unfinished or unevaluated run is one clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PosttrainError(f"{run_dir}: no such run directory")
    try:
        results = json.loads((run_dir / "results.json").read_text())
    except FileNotFoundError:
        raise PosttrainError(f"{run_dir}: no results.json, so the run has not finished; finish it with `posttrain run`") from None
    except json.JSONDecodeError as e:
        raise PosttrainError(f"{run_dir}/results.json: not valid JSON ({e.msg}, line {e.lineno})") from None
    for name, stage in results.get("stages", {}).items():
        try:
            manifest = json.loads((run_dir / name / "stage.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            manifest = {"status": "missing"}
        if manifest.get("status") != "completed" or manifest.get("fingerprint") != stage.get("fingerprint"):
            raise PosttrainError(f"{run_dir}: stage '{name}' is {manifest.get('status')} (not the finished run results.json describes); "
                                 "finish it with the same `posttrain run` command first")
    if not results.get("evaluation"):
        raise PosttrainError(f"{run_dir}: the run has no evaluation (its profile has no eval stage); nothing to compare")
    return results


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Short unique names for the runs: the directory name, with its parent when names collide."""
    labels = [Path(d).resolve().name for d in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [f"{Path(d).resolve().parent.name}/{Path(d).resolve().name}" for d in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [f"{label}#{i + 1}" for i, label in enumerate(labels)]
    return labels


def _eval_stage_name(results: dict) -> str | None:
    return next((n for n, s in reversed(list(results["stages"].items())) if s["kind"] == "eval"), None)


def _judged_samples(run_dir: Path, results: dict, model: str) -> list[dict] | None:
    """The model's generations with their rewards, or None when they were not all judged."""
    stage = _eval_stage_name(results)
    path = Path(run_dir) / stage / "samples" / f"{model}.jsonl" if stage else None
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows if rows and all("reward" in r for r in rows) else None


def _win_rates(runs: dict, aliases: dict, baseline: str | None) -> dict:
    if baseline is None:
        return {}
    base_label, _, base_model = baseline.partition("/")
    base_dir, base_results = runs[base_label]
    base_rows = _judged_samples(base_dir, base_results, base_model)
    judge = base_results["evaluation"].get("reward_model_fingerprint")
    out = {}
    for label, (run_dir, results) in runs.items():
        for key, w in (results["evaluation"].get("win_rates") or {}).items():  # each run's own, renamed
            candidate = f"{label}/{w.get('candidate', key.rpartition('_vs_')[0])}"
            own_baseline = f"{label}/{w.get('baseline', key.rpartition('_vs_')[2])}"
            candidate, own_baseline = aliases.get(candidate, candidate), aliases.get(own_baseline, own_baseline)
            out[f"{candidate}_vs_{own_baseline}"] = {**w, "candidate": candidate, "baseline": own_baseline}
        if label == base_label or base_rows is None or results["evaluation"].get("reward_model_fingerprint") != judge:
            continue
        for model in results["evaluation"]["models"]:
            if f"{label}/{model}" in aliases:
                continue
            rows = _judged_samples(run_dir, results, model)
            if is_base(model) or rows is None or [(r["task"], r["prompt"]) for r in rows] != [(r["task"], r["prompt"]) for r in base_rows]:
                continue
            w = win_rate([r["reward"] for r in rows], [r["reward"] for r in base_rows], [r["response"] for r in rows], [r["response"] for r in base_rows])
            out[f"{label}/{model}_vs_{baseline}"] = {"candidate": f"{label}/{model}", "baseline": baseline, **w}
    return out


def _examples(runs: dict, aliases: dict) -> list[dict]:
    """The first run's side-by-side prompts, with every run's responses to the same prompts."""
    labels = list(runs)
    first = runs[labels[0]][1]["evaluation"].get("examples") or []
    examples = []
    for ex in first:
        responses = {}
        for label in labels:
            match = next((e for e in runs[label][1]["evaluation"].get("examples") or []
                          if (e["task"], e["prompt"]) == (ex["task"], ex["prompt"])), None)
            for model, r in (match or {}).get("responses", {}).items():
                if f"{label}/{model}" not in aliases:
                    responses[f"{label}/{model}"] = r
        examples.append({**ex, "responses": responses})
    return examples


def shared_models(runs: dict[str, tuple[Path, dict]]) -> dict[str, str]:
    """run/model -> the earlier run/model that is the same model (same fingerprint), e.g. a cached SFT."""
    first_seen, aliases = {}, {}
    for label, (_, results) in runs.items():
        for model, fingerprint in (results["evaluation"].get("model_fingerprints") or {}).items():
            if fingerprint is None:
                continue
            if fingerprint in first_seen:
                aliases[f"{label}/{model}"] = first_seen[fingerprint]
            else:
                first_seen[fingerprint] = f"{label}/{model}"
    return aliases


def merge_runs(runs: dict[str, tuple[Path, dict]], baseline: str | None = None) -> dict:
    """One results dict across runs; `runs` maps a label to (run directory, results). A model shared
    by several runs (same fingerprint) is shown once, under the first run's name."""
    aliases = shared_models(runs)
    tasks, higher, groups, models, stages, seen_stages = [], {}, {}, {}, {}, set()
    for label, (_, results) in runs.items():
        evaluation = results["evaluation"]
        tasks += [t for t in evaluation["tasks"] if t not in tasks]
        for task, metrics in evaluation["higher_is_better"].items():
            higher.setdefault(task, {}).update(metrics)
        for task, metrics in (evaluation.get("groups") or {}).items():
            groups.setdefault(task, {}).update(metrics)
        for model, scores in evaluation["models"].items():
            if f"{label}/{model}" not in aliases:
                models[f"{label}/{model}"] = {**scores, "settings": settings_by_model(evaluation)[model]}
        for name, stage in results["stages"].items():
            if stage.get("fingerprint") not in seen_stages:  # a stage several runs share (cached) is listed once
                stages[f"{label}/{name}"] = stage
                seen_stages.add(stage.get("fingerprint"))
    if baseline is None:
        first_label, (_, first) = next(iter(runs.items()))
        own = first["evaluation"].get("compare_to")
        baseline = f"{first_label}/{own}" if own else None
    baseline = aliases.get(baseline, baseline)
    if baseline is not None and baseline not in models:
        raise PosttrainError(f"--baseline {baseline}: not a model of these runs; models: {', '.join(models)}")
    judges = {results["evaluation"].get("reward_model") for _, results in runs.values()} - {None}
    evaluation = {
        "tasks": tasks, "higher_is_better": higher, "groups": groups, "models": models, "compare_to": baseline,
        "reward_model": ", ".join(sorted(judges)) or None,
        "win_rates": _win_rates(runs, aliases, baseline), "examples": _examples(runs, aliases),
        "same_models": aliases,
    }
    return {
        "recipe": "compare", "profile": None,
        "runs": {label: str(run_dir) for label, (run_dir, _) in runs.items()},
        "stages": stages, "evaluation": evaluation,
        "releases": {label: results.get("release") for label, (_, results) in runs.items()},
    }


def compare_runs(run_dirs: list[Path], output: Path, baseline: str | None = None, allow_different_settings: bool = False) -> dict:
    """Load, check and merge the runs; write results.json, report.md, report.html and plots/ to `output`."""
    if not run_dirs:
        raise PosttrainError("compare: name at least one run directory")
    runs = {label: (Path(d), load_run(Path(d))) for label, d in zip(run_labels(run_dirs), run_dirs)}
    merged = merge_runs(runs, baseline)
    differing = differing_settings(merged["evaluation"])
    if differing and not allow_different_settings:
        per_model = settings_by_model(merged["evaluation"])
        detail = "; ".join(f"{k}: " + ", ".join(f"{m}={per_model[m].get(k)}" for m in per_model) for k in differing)
        raise PosttrainError(f"the runs were evaluated with different settings ({detail}); the comparison would not be fair: "
                             "re-run their eval stages with the same settings, or pass --allow-different-settings")
    output = Path(output)
    if output.resolve() in {Path(d).resolve() for d in run_dirs}:
        raise PosttrainError(f"--output {output}: is one of the runs being compared; its report would be overwritten")
    write_json_atomic(output / "results.json", redact(merged))
    write_reports(output, merged)
    return merged

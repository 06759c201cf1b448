"""`posttrain compare RUN ...`: one report across finished runs, e.g. internal vs public, DPO vs PPO.

The runs' results become one `RunResults` whose models are named `run/model` (`run`: the
directory's name, with as many parents as it takes to tell the runs apart; a run named twice is
refused), rendered by the same report code as a single run. Runs evaluated with different settings are refused
(the comparison would not be fair) unless explicitly allowed, and then marked. Win rates
against the baseline are recomputed across runs from the stored per-sample rewards when
both sides were judged by the same reward model (same fingerprint) on the same prompts;
otherwise each run's own win rates are shown.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from posttrain.errors import PosttrainError
from posttrain.eval.winrate import win_rate
from posttrain.reporting.report import write_reports, write_results
from posttrain.reporting.summary import differing_settings, is_base, settings_by_model
from posttrain.results import Evaluation, RunResults, Sample, WinRate, load_results, pair_samples, read_samples, samples_path
from posttrain.run_layout import RunLayout

Runs = dict[str, tuple[Path, RunResults]]  # label -> (run directory, its results)


def load_run(run_dir: Path) -> RunResults:
    """A finished run's results (any schema version this posttrain reads); an absent, unfinished or
    unevaluated run is one clear error."""
    layout = RunLayout(Path(run_dir))
    if not layout.root.is_dir():
        raise PosttrainError(f"{run_dir}: no such run directory")
    try:
        results = load_results(layout.results)
    except FileNotFoundError:
        raise PosttrainError(f"{run_dir}: no results.json, so the run has not finished; finish it with `posttrain run`") from None
    for name, stage in results.stages.items():
        try:
            manifest = json.loads(layout.manifest(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            manifest = {"status": "missing"}
        if manifest.get("status") != "completed" or manifest.get("fingerprint") != stage.fingerprint:
            raise PosttrainError(f"{run_dir}: stage '{name}' is {manifest.get('status')} (not the finished run results.json describes); "
                                 "finish it with the same `posttrain run` command first")
    if results.evaluation is None:
        raise PosttrainError(f"{run_dir}: the run has no evaluation (its profile has no evaluation stage); nothing to compare")
    return results


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Short unique names for the runs: the directory's name, with as many of its parents as it takes to tell
    the runs apart (`a/run`, `b/run`). A run named twice is refused: compared with itself it shows nothing new."""
    paths = [Path(d).resolve() for d in run_dirs]
    first: dict[Path, Path] = {}
    for given, path in zip(run_dirs, paths):
        if path in first:
            same = "named twice" if Path(first[path]) == Path(given) else f"the same run as {first[path]}"
            raise PosttrainError(f"{given}: {same}; a run compared with itself shows nothing new: name each run once "
                                 "(one run alone is fine: `posttrain compare RUN`)")
        first[path] = given
    depth = 1
    while True:
        labels = [str(PurePosixPath(*path.parts[-depth:])) for path in paths]
        if len(set(labels)) == len(labels):
            return labels
        depth += 1


def split_name(name: str, runs) -> tuple[str, str]:
    """`run/model` -> (run label, model); a label may itself hold a '/' (`a/run/sft`), so it is matched, not split."""
    label = max((label for label in runs if name.startswith(f"{label}/")), key=len, default=None)
    if label is None:
        raise PosttrainError(f"{name}: not a model of these runs (models are named RUN/MODEL, runs: {', '.join(runs)})")
    return label, name[len(label) + 1:]


def judged_samples(run_dir: Path, results: RunResults, model: str) -> list[Sample] | None:
    """The model's generations, each with its reward, or None when they were not all judged."""
    stage = results.evaluation_stage()
    path = samples_path(RunLayout(Path(run_dir)).stage_dir(stage), model) if stage else None
    if path is None or not path.is_file():
        return None
    samples = read_samples(path)
    return samples if samples and all(s.reward is not None for s in samples) else None


def _win_rates(runs: Runs, aliases: dict, baseline: str | None) -> dict[str, WinRate]:
    """Each run's own win rates (renamed run/model), and, against the comparison's baseline, the win rate of
    every model judged by the same reward model on the same prompts, from the per-sample rewards."""
    if baseline is None:
        return {}
    base_label, base_model = split_name(baseline, runs)
    base_dir, base_results = runs[base_label]
    base_samples = judged_samples(base_dir, base_results, base_model)
    judge = base_results.evaluation.judge_fingerprint
    out = {}
    for label, (run_dir, results) in runs.items():
        for w in results.evaluation.win_rates.values():  # each run's own, renamed
            candidate, own_baseline = (aliases.get(f"{label}/{m}", f"{label}/{m}") for m in (w.candidate, w.baseline))
            out[WinRate.key(candidate, own_baseline)] = w.model_copy(update={"candidate": candidate, "baseline": own_baseline})
        if label == base_label or base_samples is None or results.evaluation.judge_fingerprint != judge:
            continue
        for model in results.evaluation.models:
            if f"{label}/{model}" in aliases or is_base(model):
                continue
            samples = judged_samples(run_dir, results, model)
            pairs = pair_samples(samples, base_samples) if samples is not None else None
            if not pairs:  # not judged, or not the same prompts
                continue
            w = win_rate([c.reward for c, _ in pairs], [b.reward for _, b in pairs], [c.response for c, _ in pairs], [b.response for _, b in pairs])
            out[WinRate.key(f"{label}/{model}", baseline)] = WinRate(candidate=f"{label}/{model}", baseline=baseline, **w)
    return out


def _examples(runs: Runs, aliases: dict) -> list:
    """The first run's side-by-side prompts, with every run's responses to the same prompts."""
    labels = list(runs)
    examples = []
    for ex in runs[labels[0]][1].evaluation.examples:
        responses = {}
        for label in labels:
            match = next((e for e in runs[label][1].evaluation.examples if (e.task, e.prompt) == (ex.task, ex.prompt)), None)
            for model, r in (match.responses if match else {}).items():
                if f"{label}/{model}" not in aliases:
                    responses[f"{label}/{model}"] = r
        examples.append(ex.model_copy(update={"responses": responses}))
    return examples


def shared_models(runs: Runs) -> dict[str, str]:
    """run/model -> the earlier run/model that is the same model (same fingerprint), e.g. a cached SFT."""
    first_seen, aliases = {}, {}
    for label, (_, results) in runs.items():
        for model, fingerprint in results.evaluation.model_fingerprints.items():
            if fingerprint is None:
                continue
            if fingerprint in first_seen:
                aliases[f"{label}/{model}"] = first_seen[fingerprint]
            else:
                first_seen[fingerprint] = f"{label}/{model}"
    return aliases


def merge_runs(runs: Runs, baseline: str | None = None) -> RunResults:
    """One RunResults across runs; `runs` maps a label to (run directory, results). A model shared by
    several runs (same fingerprint) is shown once, under the first run's name."""
    aliases = shared_models(runs)
    tasks, higher, groups, models, stages, seen_stages = [], {}, {}, {}, {}, set()
    for label, (_, results) in runs.items():
        evaluation = results.evaluation
        tasks += [t for t in evaluation.tasks if t not in tasks]
        for task, metrics in evaluation.higher_is_better.items():
            higher.setdefault(task, {}).update(metrics)
        for task, metrics in evaluation.groups.items():
            groups.setdefault(task, {}).update(metrics)
        for model, scores in evaluation.models.items():
            if f"{label}/{model}" not in aliases:
                models[f"{label}/{model}"] = scores.model_copy(update={"settings": settings_by_model(evaluation)[model]})
        for name, stage in results.stages.items():
            if stage.fingerprint not in seen_stages:  # a stage several runs share (cached) is listed once
                stages[f"{label}/{name}"] = stage
                seen_stages.add(stage.fingerprint)
    if baseline is None:
        first_label, (_, first) = next(iter(runs.items()))
        own = first.evaluation.compare_to
        baseline = f"{first_label}/{own}" if own else None
    baseline = aliases.get(baseline, baseline)
    if baseline is not None and baseline not in models:
        raise PosttrainError(f"--baseline {baseline}: not a model of these runs; models: {', '.join(models)}")
    judges = {results.evaluation.judge for _, results in runs.values()} - {None}
    evaluation = Evaluation(
        tasks=tasks, higher_is_better=higher, groups=groups, models=models, compare_to=baseline,
        judge=", ".join(sorted(judges)) or None,
        win_rates=_win_rates(runs, aliases, baseline), examples=_examples(runs, aliases), same_models=aliases,
    )
    return RunResults(
        recipe="compare", profile=None, stages=stages, evaluation=evaluation,
        runs={label: str(run_dir) for label, (run_dir, _) in runs.items()},
        releases={label: results.release for label, (_, results) in runs.items()},
    )


def compare_runs(run_dirs: list[Path], output: Path, baseline: str | None = None, allow_different_settings: bool = False) -> RunResults:
    """Load, check and merge the runs; write results.json, report.md, report.html and plots/ to `output`."""
    if not run_dirs:
        raise PosttrainError("compare: name at least one run directory")
    runs = {label: (Path(d), load_run(Path(d))) for label, d in zip(run_labels(run_dirs), run_dirs)}
    merged = merge_runs(runs, baseline)
    differing = differing_settings(merged.evaluation)
    if differing and not allow_different_settings:
        per_model = settings_by_model(merged.evaluation)
        detail = "; ".join(f"{k}: " + ", ".join(f"{m}={per_model[m].get(k)}" for m in per_model) for k in differing)
        raise PosttrainError(f"the runs were evaluated with different settings ({detail}); the comparison would not be fair: "
                             "re-run their evaluation stages with the same settings, or pass --allow-different-settings")
    output = Path(output)
    if output.resolve() in {Path(d).resolve() for d in run_dirs}:
        raise PosttrainError(f"--output {output}: is one of the runs being compared; its report would be overwritten")
    merged = merged.model_copy(update={"run_dir": str(output)})
    write_results(RunLayout(output).results, merged)
    write_reports(output, merged)
    return merged

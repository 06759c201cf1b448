"""What a report says, computed from results.json alone: metric rows, deltas, verdicts.

Markdown, HTML, plots and the terminal table all render these rows, so every number a
person reads is the one results.json holds for machines (formatted, never recomputed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

REWARD_TASK, REWARD_METRIC, REWARD_GROUP = "reward_model", "mean_reward", "reward model"
SAME = 1e-9  # deltas smaller than this are no change
Z95 = 1.96


@dataclass
class Cell:
    value: float | None
    stderr: float | None


@dataclass
class Delta:
    value: float | None
    verdict: str | None  # better | worse | same, honest about the metric's direction
    within_noise: bool  # |delta| below 1.96 combined standard errors


@dataclass
class MetricRow:
    group: str
    task: str
    metric: str
    higher_is_better: bool
    cells: dict[str, Cell]
    deltas: dict[str, Delta] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.task}/{self.metric}"

    @property
    def label(self) -> str:
        return f"{self.name} {'↑' if self.higher_is_better else '↓'}"


def is_base(model: str) -> bool:
    return model == "base" or model.endswith("/base")


def baseline_of(evaluation: dict) -> str | None:
    baseline = evaluation.get("compare_to")
    return baseline if baseline in evaluation["models"] else None


def delta_models(evaluation: dict) -> list[str]:
    """Models shown against the baseline: every one but the baseline and the untrained base."""
    baseline = baseline_of(evaluation)
    if baseline is None:
        return []
    return [m for m in evaluation["models"] if m != baseline and not is_base(m)]


def _delta(cell: Cell, base: Cell, higher_is_better: bool) -> Delta:
    if cell.value is None or base.value is None:
        return Delta(None, None, False)
    value = cell.value - base.value
    if abs(value) < SAME:
        return Delta(value, "same", True)
    combined = math.hypot(cell.stderr or 0.0, base.stderr or 0.0)
    better = (value > 0) == higher_is_better
    return Delta(value, "better" if better else "worse", combined > 0 and abs(value) < Z95 * combined)


def metric_rows(evaluation: dict | None) -> list[MetricRow]:
    """One row per metric, grouped (skills, conciseness, safety, ...), with a cell per model."""
    if not evaluation:
        return []
    columns = []
    for task in evaluation["tasks"]:
        groups = evaluation.get("groups", {}).get(task, {})
        for metric, higher in evaluation["higher_is_better"].get(task, {}).items():
            columns.append((groups.get(metric) or groups.get("*") or task, task, metric, bool(higher)))
    if any(REWARD_TASK in scores for scores in evaluation["models"].values()):
        columns.append((REWARD_GROUP, REWARD_TASK, REWARD_METRIC, True))
    group_order = list(dict.fromkeys(c[0] for c in columns))
    columns.sort(key=lambda c: group_order.index(c[0]))  # stable: a group's metrics stay in task order

    baseline, others = baseline_of(evaluation), delta_models(evaluation)
    rows = []
    for group, task, metric, higher in columns:
        cells = {}
        for model, scores in evaluation["models"].items():
            task_scores = scores.get(task) or {}
            cells[model] = Cell(task_scores.get(metric), task_scores.get(f"{metric}_stderr"))
        row = MetricRow(group, task, metric, higher, cells)
        if baseline:
            row.deltas = {m: _delta(cells[m], cells[baseline], higher) for m in others}
        rows.append(row)
    return rows


def format_value(value: float | None, stderr: float | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return f"{text} ± {stderr:.3f}" if isinstance(stderr, (int, float)) else text


def format_delta(delta: Delta) -> str:
    if delta.value is None:
        return "n/a"
    if delta.verdict == "same":
        return "0.000 (same)"
    noise = ", within noise" if delta.within_noise else ""
    return f"{delta.value:+.3f} ({delta.verdict}{noise})"


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the at-a-glance table (terminal, report.md): metric x model, then deltas."""
    evaluation = results.get("evaluation")
    rows = metric_rows(evaluation)
    if not rows:
        return [], []
    models, baseline, others = list(evaluation["models"]), baseline_of(evaluation), delta_models(evaluation)
    header = ["group", "metric", *models, *[f"Δ {m} vs {baseline}" for m in others]]
    body = [[r.group, r.label, *[format_value(r.cells[m].value, r.cells[m].stderr) for m in models],
             *[format_delta(r.deltas[m]) for m in others]] for r in rows]
    return header, body


def alignment_tax(rows: list[MetricRow]) -> list[tuple[str, str, Delta]]:
    """(model, metric, delta) for every metric a model made clearly worse than the baseline."""
    return [(m, r.name, d) for r in rows for m, d in r.deltas.items() if d.verdict == "worse" and not d.within_noise]


def win_rate_rows(evaluation: dict | None) -> list[tuple[str, str, dict]]:
    """(candidate, baseline, win-rate record) for each comparison."""
    rows = []
    for key, w in ((evaluation or {}).get("win_rates") or {}).items():
        candidate, _, baseline = key.rpartition("_vs_")
        rows.append((w.get("candidate", candidate), w.get("baseline", baseline), w))
    return rows


def settings_by_model(evaluation: dict) -> dict[str, dict]:
    return {m: scores.get("settings") or evaluation.get("settings") or {} for m, scores in evaluation["models"].items()}


def differing_settings(evaluation: dict) -> list[str]:
    """Setting names whose value is not the same for every model (empty: a fair comparison)."""
    per_model = list(settings_by_model(evaluation).values())
    keys = sorted({k for s in per_model for k in s})
    return [k for k in keys if len({repr(s.get(k)) for s in per_model}) > 1]


def releases(results: dict) -> list[tuple[str, dict | None]]:
    """(label, release verdict) for one run, or for each run of a comparison."""
    if "releases" in results:
        return list(results["releases"].items())
    return [(results.get("profile") or "", results.get("release"))]


def banner(results: dict) -> tuple[str, str]:
    """(state, sentence): state is releasable, blocked or ungated."""
    verdicts = [(label, r) for label, r in releases(results) if r]
    if not verdicts:
        return "ungated", "No release gates declared for this profile: nothing is enforced."
    blocked = [(label, r) for label, r in verdicts if not r["releasable"]]
    if not blocked:
        total = sum(len(r["gates"]) for _, r in verdicts)
        return "releasable", f"RELEASABLE: all {total} release gates pass ({', '.join(label for label, _ in verdicts)})."
    several = len(blocked) > 1  # then each failed gate names its run
    failed = [f"{o['gate']}{f' ({label})' if several else ''}" for label, r in blocked for o in r["gates"] if not o["passed"]]
    who = f" ({', '.join(label for label, _ in blocked)})" if "releases" in results else ""
    return "blocked", f"NOT RELEASABLE{who}: {len(failed)} gate(s) failed: {'; '.join(failed)}."

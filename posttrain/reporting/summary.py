"""What a report says, computed from the typed results alone: metric rows, deltas, verdicts, table rows.

Markdown, HTML, plots and the terminal table all render these rows, so every number a
person reads is the one results.json holds for machines (formatted, never recomputed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from posttrain.results import REWARD_METRIC, REWARD_TASK, Evaluation, JudgeWinRate, Release, RunResults, WinRate
from posttrain.stage import BASE

REWARD_GROUP = "reward model"
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
    return model == BASE or model.endswith(f"/{BASE}")


def baseline_of(evaluation: Evaluation | None) -> str | None:
    return evaluation.baseline if evaluation else None


def delta_models(evaluation: Evaluation) -> list[str]:
    """Models shown against the baseline: every one but the baseline and the untrained base."""
    baseline = baseline_of(evaluation)
    if baseline is None:
        return []
    return [m for m in evaluation.models if m != baseline and not is_base(m)]


def _delta(cell: Cell, base: Cell, higher_is_better: bool) -> Delta:
    if cell.value is None or base.value is None:
        return Delta(None, None, False)
    value = cell.value - base.value
    if abs(value) < SAME:
        return Delta(value, "same", True)
    combined = math.hypot(cell.stderr or 0.0, base.stderr or 0.0)
    better = (value > 0) == higher_is_better
    return Delta(value, "better" if better else "worse", combined > 0 and abs(value) < Z95 * combined)


def metric_rows(evaluation: Evaluation | None) -> list[MetricRow]:
    """One row per metric, grouped (skills, conciseness, safety, ...), with a cell per model."""
    if not evaluation:
        return []
    columns = []
    for task in evaluation.tasks:
        groups = evaluation.groups.get(task, {})
        for metric, higher in evaluation.higher_is_better.get(task, {}).items():
            columns.append((groups.get(metric) or groups.get("*") or task, task, metric, bool(higher)))
    if any(REWARD_TASK in scores.tasks for scores in evaluation.models.values()):
        columns.append((REWARD_GROUP, REWARD_TASK, REWARD_METRIC, True))
    group_order = list(dict.fromkeys(c[0] for c in columns))
    columns.sort(key=lambda c: group_order.index(c[0]))  # stable: a group's metrics stay in task order

    baseline, others = baseline_of(evaluation), delta_models(evaluation)
    rows = []
    for group, task, metric, higher in columns:
        cells = {}
        for model, scores in evaluation.models.items():
            score = scores.score(task, metric)
            cells[model] = Cell(score.value, score.stderr)
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


def table(results: RunResults) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the at-a-glance table (terminal, report.md): metric x model, then deltas."""
    evaluation = results.evaluation
    rows = metric_rows(evaluation)
    if not rows:
        return [], []
    models, baseline, others = list(evaluation.models), baseline_of(evaluation), delta_models(evaluation)
    header = ["group", "metric", *models, *[f"Δ {m} vs {baseline}" for m in others]]
    body = [[r.group, r.label, *[format_value(r.cells[m].value, r.cells[m].stderr) for m in models],
             *[format_delta(r.deltas[m]) for m in others]] for r in rows]
    return header, body


def alignment_tax(rows: list[MetricRow]) -> list[tuple[str, str, Delta]]:
    """(model, metric, delta) for every metric a model made clearly worse than the baseline."""
    return [(m, r.name, d) for r in rows for m, d in r.deltas.items() if d.verdict == "worse" and not d.within_noise]


def win_rate_rows(evaluation: Evaluation | None) -> list[WinRate]:
    """Each comparison's win-rate record, in results order."""
    return list(evaluation.win_rates.values()) if evaluation else []


def settings_by_model(evaluation: Evaluation) -> dict[str, dict]:
    return evaluation.settings_by_model()


def differing_settings(evaluation: Evaluation) -> list[str]:
    """Setting names whose value is not the same for every model (empty: a fair comparison)."""
    per_model = list(settings_by_model(evaluation).values())
    keys = sorted({k for s in per_model for k in s})
    return [k for k in keys if len({repr(s.get(k)) for s in per_model}) > 1]


def releases(results: RunResults) -> list[tuple[str, Release | None]]:
    """(label, release verdict) for one run, or for each run of a comparison."""
    if results.is_comparison:
        return list(results.releases.items())
    return [(results.profile or "", results.release)]


def banner(results: RunResults) -> tuple[str, str]:
    """(state, sentence): state is releasable, blocked or ungated."""
    verdicts = [(label, r) for label, r in releases(results) if r]
    if not verdicts:
        return "ungated", "No release gates declared for this profile: nothing is enforced."
    blocked = [(label, r) for label, r in verdicts if not r.releasable]
    if not blocked:
        total = sum(len(r.gates) for _, r in verdicts)
        return "releasable", f"RELEASABLE: all {total} release gates pass ({', '.join(label for label, _ in verdicts)})."
    several = len(blocked) > 1  # then each failed gate names its run
    failed = [f"{o.gate}{f' ({label})' if several else ''}" for label, r in blocked for o in r.failed]
    who = f" ({', '.join(label for label, _ in blocked)})" if results.is_comparison else ""
    return "blocked", f"NOT RELEASABLE{who}: {len(failed)} gate(s) failed: {'; '.join(failed)}."


# -- rows and sentences every renderer shows (Markdown, HTML, terminal) ------------------------
STAGE_HEADER = ["stage", "kind", "status", "parent", "wall time (s)", "data (read / used / dropped)"]
WIN_HEADER = ["candidate", "baseline", "win rate", "95% CI", "wins / ties / losses", "mean words (candidate vs baseline)"]
GATE_HEADER = ["gate", "measured", "result"]
JUDGE_HEADER = ["candidate", "baseline", "pairs", "win rate", "95% CI", "wins / ties / losses", "unparseable verdicts",
                "order flips", "first-position preference"]


def title(results: RunResults) -> str:
    if results.is_comparison:
        return f"Comparison of runs: {', '.join(results.runs)}"
    return f"{results.recipe} — profile {results.profile or '(all stages)'}"


def stage_rows(results: RunResults) -> list[list]:
    rows = []
    for name, stage in results.stages.items():
        data = stage.data
        data_text = f"{data.rows_read} / {data.rows_used} / {data.rows_dropped}" if data else ""
        status = f"{stage.status} (cached)" if stage.cached else stage.status
        rows.append([name, stage.kind, status, stage.parent or "", stage.wall_time_s, data_text])
    return rows


def win_rate_table(evaluation: Evaluation | None) -> list[list[str]]:
    return [[w.candidate, w.baseline, format_value(w.win_rate), f"{w.ci95[0]:.3f}–{w.ci95[1]:.3f}", f"{w.wins} / {w.ties} / {w.losses}",
             f"{w.mean_words_candidate:.1f} vs {w.mean_words_baseline:.1f}"] for w in win_rate_rows(evaluation)]


def judge_rows(evaluation: Evaluation | None) -> list[JudgeWinRate]:
    """The pairwise judge's win-rate records, in results order (none without a judge)."""
    judged = evaluation.pairwise_judge if evaluation else None
    return list(judged.win_rates.values()) if judged else []


def judge_table(evaluation: Evaluation | None) -> list[list[str]]:
    rows = []
    for w in judge_rows(evaluation):
        flips = f"{w.flipped} of {w.n}" + (f" ({w.flip_rate:.3f})" if w.flip_rate is not None else "")
        first = (f"{w.first_position_rate:.3f} of {w.decisive} decisive" if w.first_position_rate is not None
                 else "n/a (no decisive verdict)")
        rows.append([w.candidate, w.baseline, str(w.n), format_value(w.win_rate), f"{w.ci95[0]:.3f}–{w.ci95[1]:.3f}",
                     f"{w.wins} / {w.ties} / {w.losses}", f"{w.unparseable} of {w.verdicts}", flips, first])
    return rows


def judge_title(evaluation: Evaluation) -> str:
    judged = evaluation.pairwise_judge
    return f"Pairwise judge: {judged.judge}" if judged else ""


def judge_sentences(evaluation: Evaluation) -> list[str]:
    """How the judge's numbers were made, in words every renderer shows below its table."""
    judged = evaluation.pairwise_judge
    if not judged:
        return []
    lines = ["Each pair (the same held-out prompt answered by both models) was judged twice, the candidate's answer shown first "
             "and then second; a pair's outcome is the mean of both orders, which cancels a preference for a position. Ties, and "
             "verdicts the judge wrote in no readable form (unparseable), count half; the interval is Wilson's.",
             "Position bias: order flips are pairs whose two verdicts disagree; first-position preference is the share of decisive "
             "verdicts (A or B) that named the answer shown first (0.500: no bias).",
             f"Verdicts: {judged.cache.judged} asked of the judge, {judged.cache.from_cache} from the verdict cache; at most "
             f"{judged.max_new_tokens} tokens each" + (f"; at most {judged.max_pairs} pairs per model" if judged.max_pairs else "") + "."]
    truncated = sum(w.truncated for w in judged.win_rates.values())
    if truncated:
        lines.append(f"{truncated} judging prompts had both answers cut to the same length to fit the judge's context.")
    return lines


def gate_table(release: Release) -> list[list[str]]:
    return [[o.gate, format_value(o.value), "pass" if o.passed else f"FAIL{' (' + o.reason + ')' if o.reason else ''}"]
            for o in release.gates]


def tax_sentence(evaluation: Evaluation) -> str:
    baseline = baseline_of(evaluation)
    if not baseline:
        return "No baseline model was evaluated, so no deltas are shown."
    tax = alignment_tax(metric_rows(evaluation))
    if not tax:
        return f"Alignment tax: no metric is clearly worse than `{baseline}` (beyond 1.96 standard errors)."
    items = "; ".join(f"{m}: {name} {d.value:+.3f}" for m, name, d in tax)
    return f"Alignment tax (clearly worse than `{baseline}`, beyond 1.96 standard errors): {items}."


def shared_sentence(evaluation: Evaluation) -> str:
    """In a comparison: the models several runs share (same fingerprint), shown once."""
    if not evaluation.same_models:
        return ""
    return "The same model in several runs (same fingerprint) is shown once: " + ", ".join(f"{a} = {b}" for a, b in evaluation.same_models.items()) + "."


def settings_sentence(evaluation: Evaluation) -> tuple[str, list[str]]:
    """A sentence on settings and, when models differ, the names of the differing settings."""
    differing = differing_settings(evaluation)
    if not differing:
        common = next(iter(settings_by_model(evaluation).values()), {})
        return "Every model was evaluated with the same settings: " + ", ".join(f"{k}={v}" for k, v in common.items()) + ".", []
    return f"WARNING: models were evaluated with different settings ({', '.join(differing)}); the comparison is not fair.", differing

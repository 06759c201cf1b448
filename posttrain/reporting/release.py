"""Release gates judged on a run's evaluation: the verdict recorded in results.json and the reports.

The gate schema and its check when a recipe is validated live in posttrain.release_gates;
this module only measures each gate on the typed `Evaluation` and says whether it passed.
An unmeasured value fails its gate.
"""

from __future__ import annotations

from posttrain.release_gates import JUDGE_WIN_RATE_METRICS, OPERATORS, WIN_RATE_METRICS, GateSpec, evaluation_stage, release_candidate
from posttrain.results import Evaluation, GateOutcome, JudgeWinRate, Release, WinRate



def gate_value(evaluation: Evaluation, model: str, metric: str) -> float | None:
    """The measured value a gate compares: a task's metric, the mean reward, or a win rate against compare_to
    (the reward model's, or the pairwise judge's)."""
    if metric in JUDGE_WIN_RATE_METRICS:
        judged = evaluation.pairwise_judge
        w = judged.win_rates.get(JudgeWinRate.key(model, evaluation.compare_to)) if judged else None
        if not w:
            return None
        return w.win_rate if metric == "judge_win_rate" else w.ci95[0]
    if metric in WIN_RATE_METRICS:
        w = evaluation.win_rates.get(WinRate.key(model, evaluation.compare_to))
        if not w:
            return None
        return w.win_rate if metric == "win_rate" else w.ci95[0]
    task, _, name = metric.partition("/")  # a task's metric, or MEAN_REWARD (the judge scored like a task)
    return evaluation.score(model, task, name).value


def judge_gates(gates: list[GateSpec], evaluation: Evaluation | None, candidate: str) -> list[GateOutcome]:
    """Each gate with the measured value and whether it passed; an unmeasured value fails."""
    outcomes = []
    for gate in gates:
        model = gate.model or candidate
        value = gate_value(evaluation, model, gate.metric) if evaluation else None
        if value is not None and gate.vs:
            other = gate_value(evaluation, gate.vs, gate.metric)
            value = None if other is None else value - other
        passed = value is not None and OPERATORS[gate.op](value, gate.threshold)
        outcomes.append(GateOutcome(
            gate=gate.describe(model), metric=gate.metric, model=model, vs=gate.vs, op=gate.op, threshold=gate.threshold,
            value=value, passed=passed, description=gate.description, reason=None if value is not None else "not measured",
        ))
    return outcomes


def judge_release(recipe, evaluation: Evaluation | None) -> Release | None:
    """The release verdict of a run's profile, or None when the profile declares no gates."""
    if not recipe.profile:
        return None
    gates = recipe.spec.profiles[recipe.profile].gates
    if not gates:
        return None
    stage = evaluation_stage(recipe.stages)
    evaluated = list(stage.evaluated) if stage is not None else []
    candidate = release_candidate(evaluated) if evaluated else ""
    outcomes = judge_gates(gates, evaluation, candidate)
    return Release(profile=recipe.profile, releasable=all(o.passed for o in outcomes), gates=outcomes)


def failed_gates_line(release: Release) -> str:
    failed = release.failed
    parts = [f"{o.gate} (measured {'n/a' if o.value is None else format(o.value, '.3f')})" for o in failed]
    return f"profile '{release.profile}' is not releasable: {len(failed)} of {len(release.gates)} gates failed: {'; '.join(parts)}"

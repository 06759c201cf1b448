"""Release gates: thresholds a profile declares on evaluation results.

    profiles:
      public:
        stages: [sft, rm, align, eval]
        gates:
          - {metric: world_safety/refusal, op: ">=", threshold: 0.9}
          - {metric: world_skills/exact_match, vs: sft, op: ">=", threshold: -0.02}   # regression <= 2 points
          - {metric: win_rate, op: ">=", threshold: 0.5}

A gate compares one model's score (default: the profile's release candidate, its last
policy-training stage) with a threshold; with `vs:` it compares the difference to that
model instead. Names and operators are checked when the recipe is validated; the gates
are judged after the eval stage, recorded in results.json and the reports, and a failed
gate makes `posttrain run` exit with status 3 (every artifact is kept).
"""

from __future__ import annotations

import operator

from pydantic import BaseModel, ConfigDict, Field

from posttrain.errors import RecipeError, did_you_mean

OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
# Spellings people reach for, mapped to the operator they meant (for the did-you-mean).
_OPERATOR_ALIASES = {"=>": ">=", "ge": ">=", "gte": ">=", "min": ">=", "at_least": ">=", "gt": ">",
                     "=<": "<=", "le": "<=", "lte": "<=", "max": "<=", "at_most": "<=", "lt": "<"}
# Metrics that come from the reward model rather than a task.
WIN_RATE_METRICS = {"win_rate": "win rate against the eval stage's compare_to model",
                    "win_rate_ci_low": "lower end of that win rate's 95% interval"}
MEAN_REWARD = "reward_model/mean_reward"


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="task/metric (e.g. world_safety/refusal), reward_model/mean_reward, win_rate or win_rate_ci_low.")
    op: str = Field(description="Comparison with the threshold: >=, >, <= or <.")
    threshold: float
    model: str | None = Field(None, description="Model the gate applies to. Default: the release candidate (the profile's last policy-training stage).")
    vs: str | None = Field(None, description="Gate the difference (model - vs), e.g. vs: sft for a regression limit.")
    description: str = ""

    def describe(self, model: str) -> str:
        subject = f"{self.metric} of {model}" + (f" - {self.vs}" if self.vs else "")
        return f"{subject} {self.op} {self.threshold:g}"


def release_candidate(evaluated: list[str]) -> str:
    """The model a profile ships: the last evaluated model that is not the base."""
    return next((m for m in reversed(evaluated) if m != "base"), evaluated[-1])


def _eval_stage(stages):
    return next((s for s in reversed(stages) if getattr(s.config, "tasks", None) is not None), None)


def measurable_metrics(eval_stage) -> list[str] | None:
    """Every gateable metric name of an eval stage (an lm-eval task's metrics are known only after it runs)."""
    from posttrain.eval.suites import metric_info

    config = eval_stage.config
    names = [f"{task}/{metric}" for task, metrics in metric_info(config.tasks).items() for metric in metrics]
    if config.reward_model:
        names += [MEAN_REWARD, *WIN_RATE_METRICS]
    return names


def check_gates(path, profile: str, gates: list[GateSpec], stages) -> None:
    """Validate a profile's gates against the stages it runs: one RecipeError line per problem."""
    if not gates:
        return
    where = f"{path}: profiles.{profile}.gates"
    eval_stage = _eval_stage(stages)
    if eval_stage is None:
        raise RecipeError(f"{where}: profile '{profile}' has no eval stage to measure its gates; add one to profiles.{profile}.stages")
    evaluated = eval_stage.evaluated_models
    known = measurable_metrics(eval_stage)
    local = {name.split("/")[0] for name in known}
    for i, gate in enumerate(gates):
        key = f"{where}.{i}"
        task = gate.metric.split("/")[0]
        lm_eval_task = "/" in gate.metric and task in eval_stage.config.tasks and task not in local
        if gate.metric not in known and not lm_eval_task:
            raise RecipeError(f"{key}.metric: '{gate.metric}' is not measured by stage '{eval_stage.name}'{did_you_mean(gate.metric, known)}; "
                              f"metrics: {', '.join(known)}")
        if gate.op not in OPERATORS:
            hint = f" (did you mean '{_OPERATOR_ALIASES[gate.op]}'?)" if gate.op in _OPERATOR_ALIASES else did_you_mean(gate.op, OPERATORS)
            raise RecipeError(f"{key}.op: '{gate.op}' is not a comparison{hint}; use one of {', '.join(OPERATORS)}")
        model = gate.model or release_candidate(evaluated)
        for field, name in (("model", gate.model), ("vs", gate.vs)):
            if name is not None and name not in evaluated:
                raise RecipeError(f"{key}.{field}: '{name}' is not evaluated by stage '{eval_stage.name}'{did_you_mean(name, evaluated)}; "
                                  f"models: {', '.join(evaluated)}")
        if gate.vs == model:
            raise RecipeError(f"{key}.vs: a model compared with itself is always 0; name another model than '{model}'")
        if gate.metric in WIN_RATE_METRICS:
            baseline = eval_stage.config.compare_to
            if gate.vs is not None:
                raise RecipeError(f"{key}.vs: {gate.metric} is already against '{baseline}' (the eval stage's compare_to); drop vs")
            if baseline not in evaluated or model == baseline:
                raise RecipeError(f"{key}.metric: {gate.metric} of '{model}' is against the eval stage's compare_to ('{baseline}'), "
                                  f"which must be another evaluated model; set stages.{eval_stage.name}.compare_to or drop the gate")


def _score(evaluation: dict, model: str, metric: str) -> float | None:
    if metric in WIN_RATE_METRICS:
        baseline = evaluation.get("compare_to")
        w = evaluation.get("win_rates", {}).get(f"{model}_vs_{baseline}")
        if not w:
            return None
        return w["win_rate"] if metric == "win_rate" else w["ci95"][0]
    task, _, name = metric.partition("/")
    return evaluation["models"].get(model, {}).get(task, {}).get(name)


def judge_gates(gates: list[GateSpec], evaluation: dict | None, candidate: str) -> list[dict]:
    """Each gate with the measured value and whether it passed; an unmeasured value fails."""
    outcomes = []
    for gate in gates:
        model = gate.model or candidate
        value = _score(evaluation, model, gate.metric) if evaluation else None
        if value is not None and gate.vs:
            other = _score(evaluation, gate.vs, gate.metric)
            value = None if other is None else value - other
        passed = value is not None and OPERATORS[gate.op](value, gate.threshold)
        outcomes.append({
            "gate": gate.describe(model), "metric": gate.metric, "model": model, "vs": gate.vs, "op": gate.op,
            "threshold": gate.threshold, "value": value, "passed": passed, "description": gate.description,
            **({} if value is not None else {"reason": "not measured"}),
        })
    return outcomes


def evaluate_release(recipe, evaluation: dict | None) -> dict | None:
    """The release verdict of a run's profile, or None when the profile declares no gates."""
    if not recipe.profile:
        return None
    gates = recipe.spec.profiles[recipe.profile].gates
    if not gates:
        return None
    eval_stage = _eval_stage(recipe.stages)
    outcomes = judge_gates(gates, evaluation, release_candidate(eval_stage.evaluated_models))
    return {"profile": recipe.profile, "releasable": all(o["passed"] for o in outcomes), "gates": outcomes}


def failed_gates_line(release: dict) -> str:
    failed = [o for o in release["gates"] if not o["passed"]]
    parts = [f"{o['gate']} (measured {'n/a' if o['value'] is None else format(o['value'], '.3f')})" for o in failed]
    return f"profile '{release['profile']}' is not releasable: {len(failed)} of {len(release['gates'])} gates failed: {'; '.join(parts)}"

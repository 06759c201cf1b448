"""Release gates as recipes declare them: the schema, and its check against the plan.

    profiles:
      public:
        stages: [sft, rm, align, eval]
        gates:
          - {metric: world_safety/refusal, op: ">=", threshold: 0.9}
          - {metric: world_skills/exact_match, vs: sft, op: ">=", threshold: -0.02}   # regression <= 2 points
          - {metric: win_rate, op: ">=", threshold: 0.5}
          - {metric: judge_win_rate_ci_low, op: ">=", threshold: 0.5}   # with a pairwise `judge:` on the eval stage

A gate compares one model's score (default: the profile's release candidate, its last
policy-training stage) with a threshold; with `vs:` it compares the difference to that
model instead. Names and operators are checked here when the recipe is validated, against
the metrics the profile's evaluation stage declares (`Stage.measured_metrics`); judging
the gates on results is posttrain.reporting.release's job.
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
# Metrics of the eval stage's pairwise judge (`judge:`): its win rate against compare_to, both orders judged.
JUDGE_WIN_RATE_METRICS = {"judge_win_rate": "pairwise judge's win rate against the eval stage's compare_to model",
                          "judge_win_rate_ci_low": "lower end of that win rate's 95% interval"}


class GateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="task/metric (e.g. world_safety/refusal), reward_model/mean_reward, win_rate, win_rate_ci_low, "
                                    "judge_win_rate or judge_win_rate_ci_low.")
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
    from posttrain.stage import BASE

    return next((m for m in reversed(evaluated) if m != BASE), evaluated[-1])


def evaluation_stage(stages):
    """The profile's evaluation stage (the recipe allows at most one), or None."""
    from posttrain.stage import Role

    return next((s for s in stages if s.role is Role.EVALUATION), None)


def check_gates(path, profile: str, gates: list[GateSpec], stages) -> None:
    """Validate a profile's gates against the stages it runs: one RecipeError line per problem."""
    if not gates:
        return
    where = f"{path}: profiles.{profile}.gates"
    eval_stage = evaluation_stage(stages)
    if eval_stage is None:
        raise RecipeError(f"{where}: profile '{profile}' has no evaluation stage to measure its gates; add one to profiles.{profile}.stages")
    evaluated = eval_stage.evaluated
    known = eval_stage.stage_cls.measured_metrics(eval_stage.config) or []
    measured_tasks = {name.split("/")[0] for name in known}
    for i, gate in enumerate(gates):
        key = f"{where}.{i}"
        task = gate.metric.split("/")[0]
        # A task whose metrics are known only after it runs (an lm-eval task): any metric name is accepted.
        lm_eval_task = "/" in gate.metric and task in getattr(eval_stage.config, "tasks", []) and task not in measured_tasks
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
        if gate.metric in WIN_RATE_METRICS or gate.metric in JUDGE_WIN_RATE_METRICS:
            baseline = getattr(eval_stage.config, "compare_to", None)
            if gate.vs is not None:
                raise RecipeError(f"{key}.vs: {gate.metric} is already against '{baseline}' (the eval stage's compare_to); drop vs")
            if baseline not in evaluated or model == baseline:
                raise RecipeError(f"{key}.metric: {gate.metric} of '{model}' is against the eval stage's compare_to ('{baseline}'), "
                                  f"which must be another evaluated model; set stages.{eval_stage.name}.compare_to or drop the gate")

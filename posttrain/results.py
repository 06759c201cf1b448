"""The typed results of a run: what `results.json` holds, and what reports, gates and `compare` read.

    RunResults                    results.json (schema_version 2)
      stages: {name: StageSummary}      kind, role, status, cached, fingerprint, parent, wall time,
                                        memory, data accounting, metrics, curves
      evaluation: Evaluation | None     the evaluation stage's result:
        settings, tasks, higher_is_better, groups,
        models: {model: ModelScores}    per task: metrics with their standard errors and n
        compare_to, judge, judge_fingerprint, win_rates: {key: WinRate},
        pairwise_judge: PairwiseJudge | None   a chat model or endpoint judging answer pairs in both orders
        examples: [Example], cache: CacheStats, model_fingerprints
      release: Release | None           the release verdict (gates judged on the evaluation)
      runs, releases                    comparisons only (`posttrain compare`)

    Sample                         one line of `<eval stage>/samples/<model>.jsonl`: a generation
                                   and its own reward (never a list matched by position)

The JSON keeps the layout of the unversioned results.json (version 1) where it can: a model's
scores are `{task: {metric, metric_stderr, n}, "settings": {...}}`. `load_results` reads
version 2, converts version 1 and refuses any other version with one line.

Versioning rule: a new *optional* field (with a default, so files written before it still load,
and readers that predate it ignore it: records ignore unknown keys) keeps the version, as
`Evaluation.pairwise_judge` did. Renaming, removing or changing the meaning of a field bumps
SCHEMA_VERSION, with a converter from the previous version in `RunResults.from_dict`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from posttrain.errors import PosttrainError
from posttrain.stage import Role

SCHEMA_VERSION = 2
STDERR_SUFFIX = "_stderr"
REWARD_TASK, REWARD_METRIC = "reward_model", "mean_reward"  # the judge's mean reward, scored like a task
SETTINGS_KEY = "settings"  # beside the tasks in a model's scores
SAMPLES_DIRNAME = "samples"


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- stages -----------------------------------------------------------------------------------
class Memory(_Record):
    model_config = ConfigDict(extra="allow")

    peak_rss_mb: float | None = None
    peak_cuda_allocated_mb: float | None = None


class DataSummary(_Record):
    """A stage's data accounting (posttrain.data.accounting.DataAccounting.to_dict)."""

    model_config = ConfigDict(extra="allow")

    source: str | None = None
    rows_read: int = 0
    rows_used: int = 0
    examples: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())


class StageSummary(_Record):
    kind: str
    role: Role | None = None  # None only for a version-1 stage of a kind this posttrain does not know
    status: str
    cached: bool = False
    fingerprint: str | None = None
    parent: str | None = None
    wall_time_s: float | None = None
    memory: Memory | None = None
    data: DataSummary | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    curves: dict[str, list[list[int | float | None]]] = Field(default_factory=dict)  # metric -> [[step, value], ...]

    @field_validator("metrics", "curves", mode="before")
    @classmethod
    def _none_is_empty(cls, value):
        return {} if value is None else value

    @classmethod
    def from_manifest(cls, manifest: dict, role: Role | str | None, cached: bool | None = None) -> StageSummary:
        """The summary of a stage's `stage.json` (or the manifest the pipeline just wrote)."""
        fields = {k: manifest.get(k) for k in ("kind", "status", "fingerprint", "parent", "wall_time_s", "memory", "data", "metrics", "curves")}
        fields = json.loads(json.dumps(fields, default=str))  # as stage.json holds them (e.g. a numpy number in a metric)
        return cls.model_validate({**fields, "role": role, "cached": bool(manifest.get("cached") if cached is None else cached)})


# -- evaluation -------------------------------------------------------------------------------
class Score(BaseModel):
    value: float | None
    stderr: float | None = None


class TaskScores(BaseModel):
    """One model's metrics on one task, each with its standard error when known; JSON: {metric, metric_stderr, n}."""

    metrics: dict[str, float | None] = Field(default_factory=dict)
    stderr: dict[str, float | None] = Field(default_factory=dict)
    n: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data):
        if not isinstance(data, dict) or "metrics" in data:
            return data
        metrics, stderr = {}, {}
        for key, value in data.items():
            if key == "n":
                continue
            base = key[: -len(STDERR_SUFFIX)] if key.endswith(STDERR_SUFFIX) else None
            if base is not None and base in data:
                stderr[base] = value
            else:
                metrics[key] = value
        return {"metrics": metrics, "stderr": stderr, "n": data.get("n")}

    @model_serializer(mode="plain")
    def _to_flat(self) -> dict:
        out: dict[str, Any] = {}
        for metric, value in self.metrics.items():
            out[metric] = value
            if metric in self.stderr:
                out[metric + STDERR_SUFFIX] = self.stderr[metric]
        if self.n is not None:
            out["n"] = self.n
        return out

    def score(self, metric: str) -> Score:
        return Score(value=self.metrics.get(metric), stderr=self.stderr.get(metric))


class ModelScores(BaseModel):
    """One model's scores per task (the judge's mean reward under `reward_model`) and the settings it was
    evaluated with; JSON: {task: {...}, "settings": {...}}."""

    tasks: dict[str, TaskScores] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data):
        if not isinstance(data, dict) or ("tasks" in data and set(data) <= {"tasks", SETTINGS_KEY}):
            return data  # already structured (built in Python)
        return {"tasks": {k: v for k, v in data.items() if k != SETTINGS_KEY}, "settings": data.get(SETTINGS_KEY) or {}}

    @model_serializer(mode="wrap")
    def _to_flat(self, handler) -> dict:
        nested = handler(self)
        return {**nested["tasks"], SETTINGS_KEY: nested["settings"]}

    def score(self, task: str, metric: str) -> Score:
        scores = self.tasks.get(task)
        return scores.score(metric) if scores else Score(value=None)

    def value(self, task: str, metric: str) -> float | None:
        return self.score(task, metric).value


class WinRate(BaseModel):
    """Reward-model judgements of a candidate against a baseline on the same prompts (ties count half)."""

    candidate: str
    baseline: str
    n: int
    wins: int
    ties: int
    losses: int
    win_rate: float | None
    ci95: tuple[float, float]
    mean_words_candidate: float
    mean_words_baseline: float

    @staticmethod
    def key(candidate: str, baseline: str) -> str:
        return f"{candidate}_vs_{baseline}"


class JudgeWinRate(BaseModel):
    """A pairwise judge's verdicts on a candidate against the baseline, each pair judged in both orders.

    Per pair, each order's verdict scores the candidate 1 (preferred), 0.5 (tie, or an unparseable verdict)
    or 0; the pair's score is the mean of the two orders, so a judge that always prefers one position
    scores every pair a tie. A pair scoring above 0.5 is a win, below a loss, 0.5 a tie (counted half)."""

    candidate: str
    baseline: str
    n: int  # pairs (prompts)
    wins: int
    ties: int
    losses: int
    win_rate: float | None
    ci95: tuple[float, float]  # Wilson's, on wins + ties / 2 of n
    verdicts: int  # 2 n: each pair in both orders
    unparseable: int  # verdicts the parser could not read (each counted as a tie)
    flipped: int  # pairs whose two orders did not agree (the preferred answer changed with its position)
    flip_rate: float | None  # flipped / n
    decisive: int  # verdicts that named A or B
    first_position_rate: float | None  # share of decisive verdicts that named the answer shown first (0.5: no position bias)
    truncated: int = 0  # judging prompts whose answers were cut to fit the judge's context (local judges)
    mean_words_candidate: float
    mean_words_baseline: float

    @staticmethod
    def key(candidate: str, baseline: str) -> str:
        return f"{candidate}_vs_{baseline}"


class VerdictCacheStats(BaseModel):
    judged: int = 0  # verdicts asked of the judge in this run
    from_cache: int = 0  # verdicts read from <eval stage>/judge_cache/


class PairwiseJudge(BaseModel):
    """The eval stage's pairwise judge (a chat model or an OpenAI-compatible endpoint) and its verdicts."""

    judge: str  # what judged: a stage, directory or hub id, or "endpoint <model> at <url>" (never a credential)
    kind: str  # model | endpoint
    fingerprint: str  # the judge's identity (model fingerprint or endpoint and model, generation settings); no key
    template_sha256: str  # the judging prompt template
    max_new_tokens: int
    max_pairs: int | None = None
    win_rates: dict[str, JudgeWinRate] = Field(default_factory=dict)  # JudgeWinRate.key(candidate, baseline)
    cache: VerdictCacheStats = Field(default_factory=VerdictCacheStats)


class Response(BaseModel):
    response: str
    reward: float | None = None


class Example(BaseModel):
    """One held-out prompt with every model's response (and its reward, when a judge scored it)."""

    task: str
    prompt: str
    target: Any = None
    responses: dict[str, Response] = Field(default_factory=dict)


class CacheStats(BaseModel):
    hits: list[str] = Field(default_factory=list)
    misses: list[str] = Field(default_factory=list)


class Evaluation(_Record):
    settings: dict[str, Any] = Field(default_factory=dict)
    tasks: list[str] = Field(default_factory=list)
    higher_is_better: dict[str, dict[str, bool]] = Field(default_factory=dict)
    groups: dict[str, dict[str, str]] = Field(default_factory=dict)  # task -> metric (or "*") -> report group
    models: dict[str, ModelScores] = Field(default_factory=dict)
    compare_to: str | None = None  # the baseline of deltas and win rates, when it was evaluated
    judge: str | None = None  # the reward model that scored every generation
    judge_fingerprint: str | None = None
    win_rates: dict[str, WinRate] = Field(default_factory=dict)  # WinRate.key(candidate, baseline) -> WinRate
    pairwise_judge: PairwiseJudge | None = None  # optional: results.json files without it load unchanged
    examples: list[Example] = Field(default_factory=list)
    cache: CacheStats = Field(default_factory=CacheStats)
    model_fingerprints: dict[str, str | None] = Field(default_factory=dict)
    same_models: dict[str, str] = Field(default_factory=dict)  # comparisons: run/model -> the same model shown once

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data):
        return _evaluation_v1_to_v2(data) if isinstance(data, dict) else data

    def score(self, model: str, task: str, metric: str) -> Score:
        scores = self.models.get(model)
        return scores.score(task, metric) if scores else Score(value=None)

    @property
    def baseline(self) -> str | None:
        """`compare_to` when that model was evaluated."""
        return self.compare_to if self.compare_to in self.models else None

    def settings_by_model(self) -> dict[str, dict]:
        return {m: scores.settings or self.settings for m, scores in self.models.items()}


class Sample(BaseModel):
    """One generation of one model on one held-out document, with its own reward (None: not judged)."""

    task: str
    prompt: str
    response: str
    target: Any = None
    reward: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.prompt)

    def to_line(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude={"reward"} if self.reward is None else None))


def samples_path(stage_dir: Path, model: str) -> Path:
    """Where an evaluation stage keeps a model's samples."""
    return Path(stage_dir) / SAMPLES_DIRNAME / f"{model}.jsonl"


def samples_text(samples: list[Sample]) -> str:
    return "".join(s.to_line() + "\n" for s in samples)


def read_samples(path: Path) -> list[Sample]:
    path = Path(path)
    try:
        return [Sample.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValidationError as e:
        raise PosttrainError(f"{path}: not a samples file ({_first_problem(e)})") from None


def pair_samples(candidate: list[Sample], baseline: list[Sample]) -> list[tuple[Sample, Sample]] | None:
    """The two models' samples of the same documents, paired by (task, prompt) (repeated prompts in order);
    None when they were not generated for the same documents."""
    def keyed(samples):
        seen: dict[tuple[str, str], int] = {}
        out = {}
        for s in samples:
            n = seen[s.key] = seen.get(s.key, -1) + 1
            out[(*s.key, n)] = s
        return out

    a, b = keyed(candidate), keyed(baseline)
    if set(a) != set(b):
        return None
    return [(a[k], b[k]) for k in a]


# -- release ----------------------------------------------------------------------------------
class GateOutcome(BaseModel):
    gate: str  # the gate in words, e.g. "world_safety/refusal of align >= 0.9"
    metric: str
    model: str
    vs: str | None = None
    op: str
    threshold: float
    value: float | None
    passed: bool
    description: str = ""
    reason: str | None = None  # why it failed without a value, e.g. "not measured"


class Release(BaseModel):
    profile: str | None
    releasable: bool
    gates: list[GateOutcome] = Field(default_factory=list)

    @property
    def failed(self) -> list[GateOutcome]:
        return [g for g in self.gates if not g.passed]


# -- the run ----------------------------------------------------------------------------------
class RunResults(_Record):
    schema_version: int = SCHEMA_VERSION
    recipe: str
    recipe_path: str | None = None
    profile: str | None = None
    run_dir: str | None = None
    stages: dict[str, StageSummary] = Field(default_factory=dict)
    evaluation: Evaluation | None = None
    release: Release | None = None
    # Comparisons (`posttrain compare`) only: label -> run directory, and each run's verdict.
    runs: dict[str, str] = Field(default_factory=dict)
    releases: dict[str, Release | None] = Field(default_factory=dict)

    @property
    def is_comparison(self) -> bool:
        return bool(self.runs)

    def evaluation_stage(self) -> str | None:
        """The name of the stage whose result is the evaluation (the last of role evaluation)."""
        return next((n for n, s in reversed(self.stages.items()) if s.role == Role.EVALUATION), None)

    def to_dict(self) -> dict:
        out = self.model_dump(mode="json")
        if not self.is_comparison:
            out.pop("runs"), out.pop("releases")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data, source: str = "results") -> RunResults:
        """Version 2 as is, version 1 (no schema_version) converted; any other version is one clear error."""
        if not isinstance(data, dict):
            raise PosttrainError(f"{source}: not a results object (a JSON object with recipe, stages and evaluation)")
        version = data.get("schema_version", 1)
        known = isinstance(version, int) and not isinstance(version, bool)
        if known and version == 1:
            data = upgrade_v1(data)
        elif not known or version != SCHEMA_VERSION:
            if known and version > SCHEMA_VERSION:
                raise PosttrainError(f"{source}: results schema_version {version} is newer than this posttrain understands "
                                     f"({SCHEMA_VERSION}); upgrade posttrain")
            raise PosttrainError(f"{source}: results schema_version {version!r} is not one this posttrain reads (1 or {SCHEMA_VERSION})")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise PosttrainError(f"{source}: not valid results ({_first_problem(e)})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "results") -> RunResults:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PosttrainError(f"{source}: not valid JSON ({e.msg}, line {e.lineno})") from None
        return cls.from_dict(data, source)


def load_results(path: Path) -> RunResults:
    """A results.json of any version this posttrain reads (FileNotFoundError when there is none)."""
    path = Path(path)
    return RunResults.from_json(path.read_text(encoding="utf-8"), str(path))


def _first_problem(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    more = f"; +{err.error_count() - 1} more" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


# -- version 1 --------------------------------------------------------------------------------
# Version 1 summaries have no role: the built-in kinds of that time had these.
_V1_ROLES = {"sft": Role.POLICY, "dpo": Role.POLICY, "orpo": Role.POLICY, "kto": Role.POLICY, "ppo": Role.POLICY,
             "rloo": Role.POLICY, "grpo": Role.POLICY, "reward_model": Role.REWARD, "eval": Role.EVALUATION}


def _evaluation_v1_to_v2(evaluation: dict) -> dict:
    """Version 1 named the judge `reward_model` (and its fingerprint `reward_model_fingerprint`)."""
    if "reward_model" not in evaluation and "reward_model_fingerprint" not in evaluation:
        return evaluation
    out = dict(evaluation)
    if "judge" not in out and "reward_model" in out:
        out["judge"] = out.pop("reward_model")
    if "judge_fingerprint" not in out and "reward_model_fingerprint" in out:
        out["judge_fingerprint"] = out.pop("reward_model_fingerprint")
    return out


def upgrade_v1(data: dict) -> dict:
    """A version-1 results dict (as the unversioned posttrain wrote it) in the version-2 layout."""
    out = dict(data)
    out["schema_version"] = SCHEMA_VERSION
    stages = {}
    for name, stage in (data.get("stages") or {}).items():
        stage = dict(stage or {})
        stage.setdefault("role", _V1_ROLES.get(stage.get("kind")))
        stages[name] = stage
    out["stages"] = stages
    if isinstance(data.get("evaluation"), dict):
        out["evaluation"] = _evaluation_v1_to_v2(data["evaluation"])
    return out

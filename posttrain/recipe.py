"""Recipes: load YAML safely, apply `--set` overrides, validate everything before any model loads.

A recipe names a base model, a set of stages (each with a `kind` and its own typed
config) and profiles that choose which stages run. Every problem is reported as one line
naming the file and the key path, with the allowed values and a did-you-mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from posttrain.data.sources import check_source
from posttrain.errors import PosttrainError, RecipeError, did_you_mean
from posttrain.eval.gates import GateSpec, check_gates
from posttrain.stage_registry import get_stage
from posttrain.stage import Stage, StageConfig, TrainStageConfig

BASE = "base"  # registry name of the recipe's starting model


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[str] = Field(description="Stage names to run, in recipe order.")
    description: str = ""
    gates: list[GateSpec] = Field(default_factory=list, description="Release gates on evaluation results (docs/evaluation.md).")


class RecipeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Run name; the run directory defaults to runs/<name>/.")
    description: str = ""
    base: str = Field(description="Starting model: builtin:<name>, a local directory, or a hub id.")
    seed: int = 0
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you trust the repository.")
    templates: dict[str, dict] = Field(default_factory=dict, description="YAML anchors shared by stages via merge keys (<<: *name); not read otherwise.")
    choices: dict[str, str] = Field(default_factory=dict, description="Named choices that pick stage variants, e.g. alignment: dpo.")
    default_profile: str | None = None
    profiles: dict[str, ProfileSpec] = Field(default_factory=dict)
    stages: dict[str, dict] = Field(description="Stage name -> stage config (with a `kind`).")


@dataclass
class PlannedStage:
    name: str
    kind: str
    config: StageConfig
    stage_cls: type[Stage]
    parent: str | None  # training stages: registry name of the starting model
    evaluated_models: list[str]  # eval stages: registry names to evaluate
    dependencies: list[str]  # every stage whose output this stage reads (for fingerprints)


@dataclass
class Recipe:
    path: Path
    spec: RecipeSpec
    profile: str | None
    stages: list[PlannedStage]

    @property
    def name(self) -> str:
        return self.spec.name


def _field_names(model_cls: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model_cls.model_fields.items()]


def _describe_validation_error(source: str, prefix: str, err: ValidationError, model_cls: type[BaseModel]) -> str:
    # An unknown key first: a misspelt required key also reports the key as missing, and the typo is the news.
    first = next((e for e in err.errors() if e["type"] == "extra_forbidden"), err.errors()[0])
    loc = [str(p) for p in first["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc)
    more = f" (+{err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        # Find the model that owns the bad key, to list what it accepts.
        owner: type[BaseModel] = model_cls
        for part in loc[:-1]:
            field = owner.model_fields.get(part) or next((f for f in owner.model_fields.values() if f.alias == part), None)
            if field is None:  # a dict key or list index: still inside the same model's field
                continue
            annotation = getattr(field, "annotation", None)
            inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
            if not inner:
                break
            owner = inner[0]
        allowed = _field_names(owner)
        return f"{source}: {key}: unknown key{did_you_mean(loc[-1], allowed)}; allowed keys: {', '.join(allowed)}{more}"
    if first["type"] == "missing":
        return f"{source}: {key}: required key is missing{more}"
    return f"{source}: {key}: {first['msg']} (got {first.get('input')!r}){more}"


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one `--set a.b.c=value`; the value is parsed as YAML (numbers, bools, lists)."""
    path, sep, value_text = assignment.partition("=")
    if not sep or not path:
        raise RecipeError(f"--set {assignment!r}: expected KEY.PATH=VALUE, e.g. --set stages.sft.epochs=2")
    keys = path.split(".")
    node = raw
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"--set {path}: '{'.'.join(keys[: i + 1])}' is a value, not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(value_text) if value_text else ""


def read_recipe_file(path: Path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping with name, base and stages")
    return raw


def load_recipe(path: str | Path, overrides: list[str] = (), profile: str | None = None) -> Recipe:
    path = Path(path)
    raw = read_recipe_file(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    try:
        spec = RecipeSpec.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_describe_validation_error(str(path), "", e, RecipeSpec)) from None

    profile = profile or spec.default_profile
    if profile is not None and profile not in spec.profiles:
        raise RecipeError(f"{path}: profile '{profile}' is not defined{did_you_mean(profile, spec.profiles)}; profiles: {', '.join(spec.profiles) or '(none)'}")
    selected = spec.profiles[profile].stages if profile else list(spec.stages)
    for name in selected:
        if name not in spec.stages:
            raise RecipeError(f"{path}: profiles.{profile}.stages: '{name}' is not a stage{did_you_mean(name, spec.stages)}; stages: {', '.join(spec.stages)}")

    stages = {name: _resolve_variant(path, spec, name, raw) for name, raw in spec.stages.items()}
    planned: list[PlannedStage] = []
    trained: list[str] = []  # policy-training stages so far, in order
    reward_models: list[str] = []  # reward_model stages so far
    for name in [s for s in spec.stages if s in selected]:  # recipe order, whatever the profile's order
        raw_stage, key = stages[name]
        if not isinstance(raw_stage, dict) or "kind" not in raw_stage:
            raise RecipeError(f"{path}: {key}: each stage needs a `kind`, e.g. kind: sft")
        stage_cls = get_stage_or_explain(path, key, raw_stage["kind"])
        try:
            config = stage_cls.Config.model_validate(raw_stage)
        except ValidationError as e:
            raise RecipeError(_describe_validation_error(str(path), key, e, stage_cls.Config)) from None

        parent, evaluated = None, []
        if isinstance(config, TrainStageConfig):
            parent = config.from_ or (trained[-1] if trained else BASE)
            if parent != BASE and parent not in trained:
                hint = "it comes later in the recipe" if parent in spec.stages and parent in selected else (
                    f"it is not in profile '{profile}'" if parent in spec.stages else f"no such stage{did_you_mean(parent, [BASE, *trained])}")
                if parent in reward_models:
                    hint = "it is a reward model, not a policy"
                raise RecipeError(f"{path}: {key}.from: '{parent}' is not an earlier training stage ({hint}); use 'base' or one of: {', '.join([BASE, *trained]) or BASE}")
            try:
                check_source(config.data)
            except PosttrainError as e:
                raise RecipeError(f"{path}: {key}.data: {e}") from None
            (reward_models if stage_cls.model_role == "reward" else trained).append(name)
        models = getattr(config, "models", None)
        if models is not None:
            evaluated = [BASE, *trained] if models == "all" else list(models)
            for m in evaluated:
                if m != BASE and m not in trained:
                    raise RecipeError(f"{path}: {key}.models: '{m}' is not an earlier policy-training stage{did_you_mean(m, [BASE, *trained])}; choose from: {', '.join([BASE, *trained])}")
        reward_model = getattr(config, "reward_model", None)
        if reward_model is not None and reward_model not in reward_models:
            if not Path(reward_model).is_dir():
                raise RecipeError(f"{path}: {key}.reward_model: '{reward_model}' is neither an earlier reward_model stage{did_you_mean(reward_model, reward_models)} nor a model directory")
            from posttrain.reward.scorer import not_a_reward_model

            problem = not_a_reward_model(Path(reward_model))
            if problem:
                raise RecipeError(f"{path}: {key}.reward_model: {problem}")
        dependencies = [d for d in [parent, *evaluated, reward_model] if d is not None and (d == BASE or d in spec.stages)]
        planned.append(PlannedStage(name, config.kind, config, stage_cls, parent, evaluated, dependencies))
    if profile:
        check_gates(path, profile, spec.profiles[profile].gates, planned)
    return Recipe(path=path, spec=spec, profile=profile, stages=planned)


def _resolve_variant(path: Path, spec: RecipeSpec, name: str, raw: dict) -> tuple[dict, str]:
    """A stage written as `choose: <choice>` plus one config per option becomes the chosen config.

    This is how one field (e.g. `choices.alignment: orpo`) switches a recipe's alignment method.
    """
    if not isinstance(raw, dict) or "choose" not in raw:
        return raw, f"stages.{name}"
    choice = raw["choose"]
    options = {k: v for k, v in raw.items() if k != "choose"}
    for option, value in options.items():
        if not isinstance(value, dict):
            raise RecipeError(f"{path}: stages.{name}.{option}: a `choose` stage holds one stage config per option "
                              f"({', '.join(k for k, v in options.items() if isinstance(v, dict))}); set e.g. stages.{name}.<option>.{option} instead")
    if choice not in spec.choices:
        raise RecipeError(f"{path}: stages.{name}.choose: '{choice}' is not under `choices`{did_you_mean(choice, spec.choices)}; add choices: {{{choice}: <one of {', '.join(options)}>}}")
    picked = spec.choices[choice]
    if picked not in options:
        raise RecipeError(f"{path}: choices.{choice}: '{picked}' is not an option of stage '{name}'{did_you_mean(picked, options)}; options: {', '.join(options)}")
    return options[picked], f"stages.{name}.{picked}"


def get_stage_or_explain(path: Path, key: str, kind: str) -> type[Stage]:
    try:
        return get_stage(kind)
    except RecipeError as e:
        raise RecipeError(f"{path}: {key}.kind: {e}") from None

"""Recipes: load YAML safely, apply `--set` overrides, validate everything before any model loads.

A recipe names a base model, a set of stages (each with a `kind` and its own typed
config) and profiles that choose which stages run. Every problem is reported as one line
naming the file and the key path, with the allowed values and a did-you-mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from posttrain.data.sources import check_source
from posttrain.errors import PosttrainError, RecipeError, did_you_mean
from posttrain.release_gates import GateSpec, check_gates
from posttrain.stage import BASE, PREVIOUS_POLICY, STAGE_DATA_PREFIX, Role, Stage, StageConfig
from posttrain.stage_registry import get_stage
from posttrain.training_settings import vocabulary_hint


class ProfileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[str] = Field(description="Stage names to run, in recipe order.")
    description: str = ""
    gates: list[GateSpec] = Field(default_factory=list, description="Release gates on evaluation results (docs/evaluation.md).")


class DistributedSpec(BaseModel):
    """`distributed:` how the stages train when the run is launched on several processes (docs/scaling.md)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["ddp", "fsdp2", "zero2", "zero3"] = Field(
        "ddp", description="ddp: a full copy per process; fsdp2: weights, gradients and optimizer sharded (torch FSDP2); "
                           "zero2 / zero3: DeepSpeed ZeRO (CUDA only). One process: ignored.")


class RecipeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Run name; the run directory defaults to runs/<name>/.")
    description: str = ""
    base: str = Field(description="Starting model: builtin:<name>, a local directory, a hub id, or a .gguf file (a path or package:<pkg>/<file>).")
    seed: int = 0
    trust_remote_code: bool = Field(False, description="Allow model code from the hub. Off unless you trust the repository.")
    chat_template: str | None = Field(None, description="Chat template for the base model: unset keeps the model's; chatml, llama3, mistral, or a .jinja file.")
    templates: dict[str, dict] = Field(default_factory=dict, description="YAML anchors shared by stages via merge keys (<<: *name); not read otherwise.")
    choices: dict[str, str] = Field(default_factory=dict, description="Named choices that pick stage variants, e.g. alignment: dpo.")
    default_profile: str | None = None
    profiles: dict[str, ProfileSpec] = Field(default_factory=dict)
    stages: dict[str, dict] = Field(description="Stage name -> stage config (with a `kind`).")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="Several processes (torchrun, accelerate launch): the strategy.")


@dataclass
class PlannedStage:
    """One stage of the chosen profile, its declared inputs linked to names of the plan."""

    name: str
    kind: str
    config: StageConfig
    stage_cls: type[Stage]
    role: Role
    parent: str | None  # the model it starts from: base or an earlier policy stage
    evaluated: list[str]  # evaluation stages: base and/or earlier policy stages
    judge: str | None  # an earlier reward stage, or a reward model directory
    data: list[str]  # its data sources (stage:<name> for what a data stage wrote)
    dependencies: list[str]  # base and every stage whose output this stage reads (for fingerprints)


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
        # Another trainer's name for one of ours (per_device_train_batch_size, lr, bf16) says ours;
        # a spelling slip gets the closest key; a TRL setting we do not name belongs in trainer_args.
        hint = vocabulary_hint(loc[-1], allowed) or did_you_mean(loc[-1].replace("-", "_"), allowed)
        if not hint and "trainer_args" in allowed:
            hint = " (if it is a setting of the TRL trainer, put it under trainer_args: {...})"
        return f"{source}: {key}: unknown key{hint}; allowed keys: {', '.join(allowed)}{more}"
    if first["type"] == "posttrain_setting":  # our validators' messages are one line as they stand
        # ctx key: the setting's path inside the model whose validator raised (a field's validator: loc ends in that field).
        setting = first["ctx"]["key"]
        owner_path = loc[:-1] if loc and loc[-1] == setting.split(".")[0] else loc
        key = ".".join(p for p in [prefix, *owner_path, setting] if p)
        return f"{source}: {key}: {first['ctx']['message']}{more}"
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

    _check_base(path, spec)
    _check_chat_template(path, spec)
    profile = profile or spec.default_profile
    if profile is not None and profile not in spec.profiles:
        raise RecipeError(f"{path}: profile '{profile}' is not defined{did_you_mean(profile, spec.profiles)}; profiles: {', '.join(spec.profiles) or '(none)'}")
    selected = spec.profiles[profile].stages if profile else list(spec.stages)
    for name in selected:
        if name not in spec.stages:
            raise RecipeError(f"{path}: profiles.{profile}.stages: '{name}' is not a stage{did_you_mean(name, spec.stages)}; stages: {', '.join(spec.stages)}")

    stages = {name: _resolve_variant(path, spec, name, raw) for name, raw in spec.stages.items()}
    _check_choices_used(path, spec)
    linker = _Linker(path, spec, profile, selected)
    for name in [s for s in spec.stages if s in selected]:  # recipe order, whatever the profile's order
        raw_stage, key = stages[name]
        if not isinstance(raw_stage, dict) or "kind" not in raw_stage:
            raise RecipeError(f"{path}: {key}: each stage needs a `kind`, e.g. kind: sft")
        stage_cls = get_stage_or_explain(path, key, raw_stage["kind"])
        try:
            config = stage_cls.Config.model_validate(raw_stage)
        except ValidationError as e:
            raise RecipeError(_describe_validation_error(str(path), key, e, stage_cls.Config)) from None
        linker.add(name, key, config, stage_cls)
    if profile:
        check_gates(path, profile, spec.profiles[profile].gates, linker.planned)
    return Recipe(path=path, spec=spec, profile=profile, stages=linker.planned)


class _Linker:
    """Links each stage's declared inputs (`Stage.inputs`) to earlier stages by role, in recipe order."""

    def __init__(self, path: Path, spec: RecipeSpec, profile: str | None, selected: list[str]):
        self.path, self.spec, self.profile, self.selected = path, spec, profile, selected
        self.planned: list[PlannedStage] = []

    def _names(self, role: Role) -> list[str]:
        return [s.name for s in self.planned if s.role is role]

    def _not_earlier(self, name: str, wanted: Role) -> str:
        """Why `name` is not an earlier stage of role `wanted`: the hint of the error line."""
        if name in self.spec.stages and name in self.selected and name not in {s.name for s in self.planned}:
            return "it comes later in the recipe"
        other = next((s for s in self.planned if s.name == name), None)
        if other is not None:
            return f"it is a {other.role.value} stage ({other.kind}), not a {wanted.value} stage"
        if name in self.spec.stages:
            return f"it is not in profile '{self.profile}'"
        return f"no such stage{did_you_mean(name, [BASE, *self._names(wanted)])}"

    def add(self, name: str, key: str, config: StageConfig, stage_cls: type[Stage]) -> None:
        path = self.path
        declared = stage_cls.inputs(config)
        policies = self._names(Role.POLICY)

        parent = declared.parent
        if parent is PREVIOUS_POLICY:
            parent = policies[-1] if policies else BASE
        if parent is not None and parent != BASE and parent not in policies:
            raise RecipeError(f"{path}: {key}.{declared.keys['parent']}: '{parent}' is not an earlier training stage "
                              f"({self._not_earlier(parent, Role.POLICY)}); use 'base' or one of: {', '.join([BASE, *policies])}")

        evaluated = [BASE, *policies] if declared.evaluates == "all" else list(declared.evaluates)
        for model in evaluated:
            if model != BASE and model not in policies:
                raise RecipeError(f"{path}: {key}.{declared.keys['evaluates']}: '{model}' is not an earlier policy-training stage"
                                  f"{did_you_mean(model, [BASE, *policies])}; choose from: {', '.join([BASE, *policies])}")

        judge = declared.judge
        if judge is not None and judge not in self._names(Role.REWARD):
            self._check_judge_directory(f"{key}.{declared.keys['judge']}", judge)

        for source in declared.data:
            self._check_data_source(f"{key}.{declared.keys['data']}", source)

        for model in declared.models_read:  # further models it loads: base, an earlier policy stage, a directory or a hub id
            self._check_model_read(f"{key}.{declared.keys['models_read']}", model, policies)

        if stage_cls.role is Role.EVALUATION and self._names(Role.EVALUATION):
            raise RecipeError(f"{path}: {key}: a profile has at most one evaluation stage ('{self._names(Role.EVALUATION)[0]}' is "
                              f"the other); gates, reports and compare read one; evaluate every model in one stage (models: all)")

        produced_by = [s.removeprefix(STAGE_DATA_PREFIX) for s in declared.data if s.startswith(STAGE_DATA_PREFIX)]
        dependencies = [d for d in [parent, *evaluated, judge, *produced_by, *declared.models_read]
                        if d is not None and (d == BASE or d in self.spec.stages)]
        self.planned.append(PlannedStage(name, config.kind, config, stage_cls, stage_cls.role, parent, evaluated, judge,
                                         list(declared.data), list(dict.fromkeys(dependencies))))

    def _check_judge_directory(self, key: str, judge: str) -> None:
        rewards = self._names(Role.REWARD)
        if judge in self.spec.stages or not Path(judge).is_dir():
            hint = f" ({self._not_earlier(judge, Role.REWARD)})" if judge in self.spec.stages else did_you_mean(judge, rewards)
            raise RecipeError(f"{self.path}: {key}: '{judge}' is neither an earlier reward_model stage{hint} nor a model directory")
        from posttrain.reward.scorer import not_a_reward_model

        problem = not_a_reward_model(Path(judge))
        if problem:
            raise RecipeError(f"{self.path}: {key}: {problem}")

    def _check_model_read(self, key: str, model: str, policies: list[str]) -> None:
        """A further model a stage loads: `base` or an earlier policy stage (a dependency, so its fingerprint covers
        it), a model directory, or a hub id (org/name; offline, it must be in the local hub cache)."""
        import re

        from posttrain.environment import hub_model_problem
        from posttrain.gguf_import import is_gguf_name

        if model == BASE or model in policies:
            return
        where = f"{self.path}: {key}: '{model}'"
        if model in self.spec.stages:
            raise RecipeError(f"{where} is not an earlier policy-training stage ({self._not_earlier(model, Role.POLICY)}); "
                              f"choose from: {', '.join([BASE, *policies])}, a model directory or a hub id")
        if is_gguf_name(model):
            raise RecipeError(f"{where}: a .gguf file is loaded only as the recipe's base (`base:`); name `base`, an earlier "
                              f"policy stage, a model directory or a hub id here")
        path = Path(model)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise RecipeError(f"{where} is a directory but not a model (no config.json)")
            return
        if path.exists():
            raise RecipeError(f"{where} is a file, not a model directory")
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model):
            raise RecipeError(f"{where} is neither an earlier policy-training stage{did_you_mean(model, [BASE, *policies])}, a model "
                              f"directory nor a hub id (org/name); stages: {', '.join([BASE, *policies])}")
        problem = hub_model_problem(model)  # in the hub cache, or reachable now (docs/cli.md, "The hub")
        if problem:
            raise RecipeError(f"{self.path}: {key}: {problem}")

    def _check_data_source(self, key: str, source: str) -> None:
        if source.startswith(STAGE_DATA_PREFIX):
            producer = source.removeprefix(STAGE_DATA_PREFIX)
            if producer not in self._names(Role.DATA):
                raise RecipeError(f"{self.path}: {key}: '{source}' does not name an earlier data stage "
                                  f"({self._not_earlier(producer, Role.DATA)}); data stages: {', '.join(self._names(Role.DATA)) or '(none)'}")
            return
        try:
            check_source(source)
        except PosttrainError as e:
            raise RecipeError(f"{self.path}: {key}: {e}") from None


def _check_base(path: Path, spec: RecipeSpec) -> None:
    """A .gguf base (a path or package:<pkg>/<file>) is read now, header and metadata only: a missing,
    truncated or non-GGUF file, or an architecture transformers cannot load, is one line before anything runs."""
    from posttrain.chat_templates import BUILTIN_TEMPLATES
    from posttrain.gguf_import import check_base_file

    try:
        header = check_base_file(spec.base)
    except PosttrainError as e:
        raise RecipeError(f"{path}: base: {e}") from None
    if header is not None and spec.chat_template is None and not header.chat_template:
        raise RecipeError(f"{path}: base '{spec.base}' has no chat template in its GGUF metadata; set chat_template: to one of "
                          f"{', '.join(BUILTIN_TEMPLATES)} or a .jinja file (docs/recipes.md)")
    _check_hub_base(path, spec.base)


def _check_hub_base(path: Path, base: str) -> None:
    """A base that is no file, directory or built-in but reads as a hub id (org/name) must be in the hub
    cache or reachable now: one line before anything runs, not the libraries' retries and traceback."""
    import re

    from posttrain.data.sources import BUILTIN_PREFIX
    from posttrain.environment import HUB_ID_PATTERN, hub_model_problem
    from posttrain.gguf_import import is_gguf_name

    if base.startswith(BUILTIN_PREFIX) or is_gguf_name(base) or Path(base).exists() or not re.fullmatch(HUB_ID_PATTERN, base):
        return
    problem = hub_model_problem(base)
    if problem:
        raise RecipeError(f"{path}: base: {problem}")


def _check_chat_template(path: Path, spec: RecipeSpec) -> None:
    """A template that cannot be read, or a local base without one and no setting: one line now, not
    a traceback after training starts. (Hub bases are checked when the run loads their tokenizer.)"""
    from posttrain.chat_templates import BUILTIN_TEMPLATES, directory_has_chat_template, template_text

    if spec.chat_template is not None:
        try:
            template_text(spec.chat_template)
        except RecipeError as e:
            raise RecipeError(f"{path}: {e}") from None
    elif Path(spec.base).is_dir() and not directory_has_chat_template(Path(spec.base)):
        raise RecipeError(f"{path}: base '{spec.base}' has no chat template; set chat_template: to one of "
                          f"{', '.join(BUILTIN_TEMPLATES)} or a .jinja file (docs/recipes.md)")


def _check_choices_used(path: Path, spec: RecipeSpec) -> None:
    """A choice no stage chooses by is a typo or a leftover: it would silently change nothing."""
    chosen = {raw["choose"] for raw in spec.stages.values() if isinstance(raw, dict) and "choose" in raw}
    for choice in spec.choices:
        if choice not in chosen:
            where = f"stages choose by: {', '.join(sorted(chosen))}" if chosen else "no stage has `choose:`"
            raise RecipeError(f"{path}: choices.{choice}: no stage chooses by '{choice}'{did_you_mean(choice, chosen)}; {where}")


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

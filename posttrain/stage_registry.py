"""The registry of stage kinds.

Built-in kinds are imported here; other packages add kinds through the
`posttrain.stages` entry-point group (`name = "pkg.module:StageClass"`). Shaped like
lm-eval's task registry: register by name, a duplicate name is an error, an unknown
name answers with the closest match.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from posttrain.errors import RecipeError, did_you_mean
from posttrain.stage import Stage

ENTRY_POINT_GROUP = "posttrain.stages"
BUILTIN_STAGES = [
    "posttrain.stages.sft:SFTStage",
    "posttrain.stages.dpo:DPOStage",
    "posttrain.stages.iterative_dpo:IterativeDPOStage",
    "posttrain.stages.orpo:ORPOStage",
    "posttrain.stages.kto:KTOStage",
    "posttrain.stages.ppo:PPOStage",
    "posttrain.stages.rloo:RLOOStage",
    "posttrain.stages.grpo:GRPOStage",
    "posttrain.reward.stage:RewardModelStage",
    "posttrain.eval.stage:EvalStage",
    "posttrain.stages.self_instruct:SelfInstructStage",
]

_registry: dict[str, type[Stage]] = {}
_loaded = False


def register_stage(cls: type[Stage]) -> type[Stage]:
    existing = _registry.get(cls.kind)
    if existing is not None and existing is not cls:
        raise RecipeError(f"stage kind '{cls.kind}' is registered twice: {existing.__module__} and {cls.__module__}")
    _registry[cls.kind] = cls
    return cls


def _load(target: str) -> type[Stage]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for target in BUILTIN_STAGES:
        register_stage(_load(target))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Stage)):
            raise RecipeError(f"entry point '{ep.name} = {ep.value}' in group {ENTRY_POINT_GROUP} is not a posttrain Stage class")
        register_stage(cls)
    _loaded = True


def stage_kinds() -> list[str]:
    _load_all()
    return sorted(_registry)


def get_stage(kind: str) -> type[Stage]:
    _load_all()
    try:
        return _registry[kind]
    except KeyError:
        raise RecipeError(f"unknown stage kind '{kind}'{did_you_mean(kind, _registry)}; known kinds: {', '.join(sorted(_registry))}") from None

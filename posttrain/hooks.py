"""Hooks: code from other packages that watches or steers training, without a new stage kind.

A package registers a factory in the `posttrain.hooks` entry-point group:

    [project.entry-points."posttrain.hooks"]
    my_hook = "my_pkg.hooks:make_hook"

`make_hook()` is called once per process, with no arguments, and returns an object with
either or both of these methods (or None, to stay out of this run):

    trainer_callbacks(stage_name, trainer) -> list[transformers.TrainerCallback]
        For every stage trained by a transformers/TRL Trainer (today sft, dpo, orpo, kto,
        reward_model, rloo, grpo): called once the trainer is built, before training
        starts or resumes; the callbacks are added to that trainer, ahead of posttrain's
        own Ctrl-C/SIGTERM handling (a stop requested by a hook is honoured in the same step).

    after_step(stage_name, step) -> None
        For stages with their own loop (ppo): called after each completed iteration
        `step` (1-based), before that iteration's checkpoint is saved.

Hooks are loaded the first time a stage asks for them; with none installed, a stage pays
one scan of the installed distributions' entry points per process.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from posttrain.errors import PosttrainError

ENTRY_POINT_GROUP = "posttrain.hooks"
HOOK_METHODS = ("trainer_callbacks", "after_step")


@functools.cache
def installed() -> tuple[object, ...]:
    """The hook objects of every installed `posttrain.hooks` entry point, made once per process."""
    hooks = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        hook = ep.load()()
        if hook is None:
            continue
        if not any(callable(getattr(hook, name, None)) for name in HOOK_METHODS):
            raise PosttrainError(f"entry point '{ep.name} = {ep.value}' in group {ENTRY_POINT_GROUP} returned "
                                 f"{type(hook).__name__}, which has none of the hook methods {', '.join(HOOK_METHODS)}")
        hooks.append(hook)
    return tuple(hooks)


def install(trainer, stage: str) -> None:
    """Add every hook's `trainer_callbacks(stage, trainer)` to `trainer`."""
    for hook in installed():
        method = getattr(hook, "trainer_callbacks", None)
        if method is not None:
            for callback in method(stage, trainer):
                trainer.add_callback(callback)


def after_step(stage: str, step: int) -> None:
    """Call every hook's `after_step(stage, step)`: stages with their own training loop, after each step."""
    for hook in installed():
        method = getattr(hook, "after_step", None)
        if method is not None:
            method(stage, step)

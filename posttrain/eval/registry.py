"""Which task names a recipe may use, checked when the recipe is validated, and lm-eval's task index.

A name is a posttrain suite (shipped, or under the eval stage's `task_paths`), an lm-eval task YAML
under `task_paths`, or a task, group or tag in lm-eval's registry. lm-eval's `TaskManager` indexes
~15k YAML files when it includes its built-in tasks (about 25-30 s on two CPU cores, plus ~4 s to
import lm-eval), so it is built only when a name is not one of ours, and once per process: the
eval stage reuses the one validation built.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

from posttrain.errors import RecipeError, did_you_mean
from posttrain.eval.suites import TaskFiles, check_lm_eval_data_files, find_tasks, load_task_spec, yaml_files


@contextlib.contextmanager
def _lm_eval_errors_only():
    """lm-eval warns while indexing (e.g. a task under task_paths that overrides a built-in one): not our user's news."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _signature(directories: tuple[Path, ...]) -> tuple:
    """What the index of `directories` depends on: a YAML added, removed or edited builds it again."""
    out = []
    for directory in directories:
        for path in yaml_files(directory):
            stat = path.stat()
            out.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _task_manager(directories: tuple[Path, ...], include_defaults: bool, signature: tuple):
    from lm_eval.tasks import TaskManager

    with _lm_eval_errors_only():
        return TaskManager(include_path=[str(d) for d in directories] or None, include_defaults=include_defaults)


def task_manager(directories: tuple[Path, ...] = (), include_defaults: bool = True):
    """lm-eval's TaskManager over its built-in tasks (`include_defaults`) and `directories`, built once per process."""
    directories = tuple(directories)
    return _task_manager(directories, include_defaults, _signature(directories))


def task_manager_for(names: list[str], files: TaskFiles):
    """The cheapest index that knows every name: without lm-eval's ~15k built-in tasks when all are ours, and
    the one validation built (built-in tasks only) when none is an lm-eval YAML under task_paths."""
    if all(name in files.suites for name in names):
        return task_manager((), include_defaults=False)
    own = task_manager(files.directories, include_defaults=False) if files.directories else None
    if own is not None and all(name in files.suites or name in own.all_tasks for name in names):
        return own
    if own is None or not any(name in own.all_tasks for name in names if name not in files.suites):
        return task_manager((), include_defaults=True)
    return task_manager(files.directories, include_defaults=True)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    try:
        return version("lm_eval")
    except Exception:  # noqa: BLE001 (only a label in a message)
        return "?"


def check_task_names(names: list[str], task_paths=()) -> None:
    """Every name is a task, group or tag posttrain or lm-eval can evaluate; else one RecipeError line with a
    did-you-mean across every known name. lm-eval's registry is built only when a name is not ours."""
    files = find_tasks(task_paths)
    for name in names:
        if name in files.suites:
            load_task_spec(files.suites[name])  # its keys, metrics and data file, now rather than after training
    rest = [name for name in names if name not in files.suites]
    if not rest:
        return
    if files.directories:
        own = task_manager(files.directories, include_defaults=False).all_tasks
        for name in rest:
            if name in files.lm_eval and name not in own:
                raise RecipeError(f"{files.lm_eval[name]}: lm-eval cannot read task '{name}' (it skips a YAML it fails to load: "
                                  "check its keys, `include:` and `!function` references against lm-eval's task guide)")
            if name in files.lm_eval:
                check_lm_eval_data_files(name, files)
        rest = [name for name in rest if name not in own]
        if not rest:
            return
    registered = task_manager((), include_defaults=True).all_tasks  # the same index for every recipe of the process
    for name in rest:
        if name not in registered:
            known = [*files.names, *registered]
            dirs = ", ".join(str(d) for d in files.directories) or "none set"
            raise RecipeError(
                f"'{name}' is not a task{did_you_mean(name, known)}: neither a suite (shipped, or under task_paths: {dirs}) "
                f"nor in lm-eval {_lm_eval_version()}'s registry; to evaluate on your own data, put a suite or an lm-eval "
                "task YAML in a directory and name it in the eval stage's `task_paths:` (docs/evaluation.md)")

"""Task suites: the shipped ones under eval/tasks/<suite>/, and your own under an eval stage's `task_paths`.

Two kinds of YAML live in those directories:

- posttrain suites (YAML + JSONL, runnable offline). A suite YAML is data, not code (read with
  yaml.safe_load): the JSONL file, the prompt and target fields, and metric names from
  `posttrain.eval.metrics`. It becomes an lm-eval task config here. A suite with instruction-following
  metrics has every row's `instructions` checked when it is loaded (`posttrain.eval.instructions`), and
  its `instructions:` shorthand expanded into the metrics its documents can measure.
- lm-eval task YAMLs: any YAML with one of lm-eval's own keys (`dataset_path`, `include`, `class`,
  `group`, `output_type`). lm-eval reads them itself: the directories are its include path
  (`posttrain.eval.registry`).

Names that are neither are lm-eval's registered tasks. Everything here reads files only; nothing
imports lm-eval.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from posttrain.errors import RecipeError, did_you_mean
from posttrain.eval.instructions import INSTRUCTION_TYPES, INSTRUCTIONS_FIELD, instructions_problem
from posttrain.eval.metrics import INSTRUCTION_GROUP, INSTRUCTION_METRICS, METRICS, PROMPT_METRICS

TASKS_DIR = Path(__file__).parent / "tasks"
# Keys only an lm-eval task config has: a YAML with one of them is lm-eval's, not a posttrain suite.
LM_EVAL_KEYS = ("dataset_path", "include", "class", "group", "output_type")
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's own index


class _TolerantLoader(yaml.SafeLoader):
    """yaml.safe_load that reads a tag it does not know (lm-eval's `!function utils.f`) as plain text:
    a task YAML is read here, never executed."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        return f"!{suffix} {loader.construct_scalar(node)}"
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_mapping(node, deep=True)


_TolerantLoader.add_multi_constructor("!", _tagged)


def read_task_yaml(path: Path):
    """A task YAML's content (unknown tags as text); unreadable YAML is one line naming the file."""
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_TolerantLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        raise RecipeError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', None) or e}") from None


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


@dataclass(frozen=True)
class TaskFiles:
    """The tasks a recipe can name without lm-eval's registry, and the files that define them."""

    suites: dict[str, Path]  # posttrain suite -> its YAML (the shipped ones first, then task_paths)
    lm_eval: dict[str, Path]  # lm-eval task or group defined by a YAML under task_paths -> that YAML
    lm_eval_tags: dict[str, list[str]]  # lm-eval tag under task_paths -> the tasks that carry it
    directories: tuple[Path, ...] = ()  # task_paths, resolved: lm-eval's include path

    @property
    def names(self) -> list[str]:
        return [*self.suites, *self.lm_eval, *(t for t in self.lm_eval_tags if t not in self.lm_eval)]


def task_directories(task_paths=()) -> tuple[Path, ...]:
    """The `task_paths` directories, resolved (relative ones against the current directory)."""
    out = []
    for raw in task_paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            what = "is a file, not a directory" if path.is_file() else "does not exist"
            raise RecipeError(f"'{raw}' {what} (relative paths are read from the current directory, {Path.cwd()}); "
                              "name a directory of task YAML files")
        if path.resolve() not in out:
            out.append(path.resolve())
    return tuple(out)


def yaml_files(directory: Path) -> list[Path]:
    return sorted((p for p in directory.glob("**/*.yaml") if not _IGNORED_DIRS & set(p.parts)), key=lambda p: p.as_posix())


def find_tasks(task_paths=()) -> TaskFiles:
    """Every suite shipped and under `task_paths`, and the lm-eval tasks, groups and tags under `task_paths`.
    A name defined twice is an error: which one a recipe meant would be a guess."""
    where: dict[str, Path] = {}

    def add(table: dict, name, path: Path) -> None:
        if not isinstance(name, str) or not name:
            raise RecipeError(f"{path}: task: expected a task name (a string), got {name!r}")
        if name in where and where[name] != path:
            raise RecipeError(f"task '{name}' is defined twice: {where[name]} and {path}; rename one")
        where[name] = table[name] = path

    suites: dict[str, Path] = {}
    for path in sorted(TASKS_DIR.glob("*/*.yaml")):
        add(suites, yaml.safe_load(path.read_text())["task"], path.resolve())
    lm_eval: dict[str, Path] = {}
    tags: dict[str, list[str]] = {}
    directories = task_directories(task_paths)
    for directory in directories:
        for path in yaml_files(directory):
            cfg = read_task_yaml(path)
            if not isinstance(cfg, dict):
                continue  # not a task (lm-eval skips it too)
            if any(key in cfg for key in LM_EVAL_KEYS):
                # lm-eval's order (tasks/_index.py): a Python class, then a group, then a task.
                name = cfg.get("task") if "class" in cfg or "group" not in cfg else cfg["group"]
                if isinstance(name, str):
                    add(lm_eval, name, path)
                    for tag in _as_list(cfg.get("tag")):
                        tags.setdefault(str(tag), []).append(name)
            elif "task" in cfg:
                add(suites, cfg["task"], path)
            # else: no task in it (a template other YAMLs `include:`, notes): nothing to name
    return TaskFiles(suites=suites, lm_eval=lm_eval, lm_eval_tags=tags, directories=directories)


def local_tasks(task_paths=()) -> dict[str, Path]:
    """Suite name -> its YAML file: the shipped suites and those under `task_paths`."""
    return find_tasks(task_paths).suites


def load_task_spec(path: Path) -> dict:
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise RecipeError(f"{path}: a task suite is a YAML mapping with task, data, prompt_field and metrics")
    for key in ("task", "data", "prompt_field", "metrics"):
        if key not in spec:
            raise RecipeError(f"{path}: missing key '{key}' (a suite names its task, data file, prompt field and metrics; "
                              f"see posttrain/eval/tasks/ or docs/evaluation.md)")
    for key, optional in (("prompt_field", False), ("target_field", True)):
        if not isinstance(spec.get(key), str) and not (optional and spec.get(key) is None):
            raise RecipeError(f"{path}: {key}: expected a field name of the JSONL rows, got {spec.get(key)!r}")
    if not isinstance(spec["data"], str):
        raise RecipeError(f"{path}: data: expected a JSONL file name (next to the YAML), got {spec['data']!r}")
    if not isinstance(spec["metrics"], dict) or not spec["metrics"]:
        raise RecipeError(f"{path}: metrics: expected a mapping of metric -> {{higher_is_better, group}}, e.g. "
                          "exact_match: {higher_is_better: true, group: skills}")
    for metric, cfg in spec["metrics"].items():
        if metric not in METRICS and metric != ALL_INSTRUCTION_METRICS:
            known = [*METRICS, ALL_INSTRUCTION_METRICS]
            raise RecipeError(f"{path}: metrics.{metric}: unknown metric{did_you_mean(metric, known)}; known: {', '.join(known)}")
        if cfg is not None and not isinstance(cfg, dict):
            raise RecipeError(f"{path}: metrics.{metric}: expected {{higher_is_better: true|false, group: NAME}}, got {cfg!r}")
        spec["metrics"][metric] = cfg or {}
    data = path.parent / spec["data"]
    if not data.is_file():
        raise RecipeError(f"{path}: data: {data} does not exist (the data file is read from the suite YAML's directory)")
    spec["data_path"] = data.resolve()
    if any(m in INSTRUCTION_METRIC_NAMES for m in spec["metrics"]):
        spec["metrics"] = _instruction_metrics(path, spec["metrics"], spec["data_path"])
    return spec


# -- instruction following -------------------------------------------------------------------
ALL_INSTRUCTION_METRICS = "instructions"  # a suite's shorthand for every instruction metric its data can measure
INSTRUCTION_METRIC_NAMES = {*PROMPT_METRICS, *INSTRUCTION_METRICS, ALL_INSTRUCTION_METRICS}


def _instruction_metrics(path: Path, metrics: dict, data: Path) -> dict:
    """A suite's metrics with the `instructions` shorthand expanded (`prompt_strict`, `prompt_loose`, and
    `instruction_<type>` for each type its documents carry) and instruction metrics grouped under
    "instruction following" unless the suite names a group. Every document's instructions are checked
    (one line naming the file, line and key at fault), and a metric no document can measure is refused."""
    stat = data.stat()
    present = _instruction_types(data, stat.st_mtime_ns, stat.st_size)
    out = {}
    for metric, cfg in metrics.items():
        names = [*PROMPT_METRICS, *(f"instruction_{t}" for t in present)] if metric == ALL_INSTRUCTION_METRICS else [metric]
        for name in names:
            if name in out or (metric == ALL_INSTRUCTION_METRICS and name in metrics):
                continue  # listed on its own as well: its own settings win
            out[name] = {"group": INSTRUCTION_GROUP, **cfg} if name in INSTRUCTION_METRIC_NAMES else cfg
    for name in out:
        if name in PROMPT_METRICS and not present:
            raise RecipeError(f"{path}: metrics.{name}: no document of {data.name} carries `{INSTRUCTIONS_FIELD}` (a list like "
                              '[{"type": "max_words", "limit": 20}]), so it would never be measured')
        if name in INSTRUCTION_METRICS and INSTRUCTION_METRICS[name] not in present:
            has = f"its documents' types: {', '.join(present)}" if present else f"no document carries `{INSTRUCTIONS_FIELD}`"
            raise RecipeError(f"{path}: metrics.{name}: no document of {data.name} has a '{INSTRUCTION_METRICS[name]}' "
                              f"instruction, so it would never be measured ({has})")
    return out


@functools.lru_cache(maxsize=64)
def _instruction_types(data: Path, mtime_ns: int, size: int) -> tuple[str, ...]:
    """The instruction types a suite's JSONL carries (in `INSTRUCTION_TYPES` order), every row checked;
    a bad row is one RecipeError line `<file>:<line>: <key>: <what>`. Cached while the file is unchanged."""
    try:
        text = data.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{data}: not UTF-8 text (byte {e.start})") from None
    present = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise RecipeError(f"{data}:{lineno}: not valid JSON: {getattr(e, 'msg', e)} (column {getattr(e, 'colno', '?')})") from None
        if not isinstance(row, dict):
            raise RecipeError(f"{data}:{lineno}: expected a JSON object (one document per line), got {type(row).__name__}")
        problem = instructions_problem(row.get(INSTRUCTIONS_FIELD))
        if problem:
            raise RecipeError(f"{data}:{lineno}: {problem}")
        present.update(i["type"] for i in row.get(INSTRUCTIONS_FIELD) or [])
    return tuple(t for t in INSTRUCTION_TYPES if t in present)


def metric_info(names: list[str], task_paths=()) -> dict[str, dict[str, dict]]:
    """Suite -> metric -> {higher_is_better, group}, as the suite YAMLs declare them."""
    local = local_tasks(task_paths)
    info = {}
    for name in names:
        if name in local:
            metrics = load_task_spec(local[name])["metrics"]
            info[name] = {m: {"higher_is_better": bool(cfg.get("higher_is_better", True)), "group": cfg.get("group", name)}
                          for m, cfg in metrics.items()}
    return info


def lm_eval_declared_metrics(names: list[str], files: TaskFiles) -> dict[str, list[str]]:
    """lm-eval task under task_paths -> the metrics its YAML lists (`metric_list`), known before it runs."""
    out = {}
    for name in names:
        if name in files.lm_eval and name not in files.suites:
            cfg = read_task_yaml(files.lm_eval[name])
            metrics = [m.get("metric") for m in _as_list(cfg.get("metric_list")) if isinstance(m, dict)]
            if metrics and isinstance(cfg.get("task"), str) and "group" not in cfg:
                out[name] = [str(m) for m in metrics if m]
    return out


# -- local data of lm-eval task YAMLs ------------------------------------------------------
def _is_remote(spec: str) -> bool:
    return "://" in spec or spec.startswith("hf:")


def data_file_specs(cfg: dict) -> list[str]:
    """The `dataset_kwargs.data_files` entries of an lm-eval task config (a string, a list, or split -> either)."""
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files") if isinstance(cfg.get("dataset_kwargs"), dict) else None
    values = data_files.values() if isinstance(data_files, dict) else [data_files]
    return [str(v) for value in values for v in _as_list(value)]


def local_data_files(spec: str) -> list[Path]:
    """The local files a data_files entry names (relative to the current directory, as lm-eval and
    `datasets` read them); [] for a remote one or one that matches nothing."""
    if _is_remote(spec):
        return []
    path = Path(spec).expanduser()
    if glob.has_magic(spec):
        return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    return [path] if path.is_file() else []


def check_lm_eval_data_files(name: str, files: TaskFiles) -> None:
    """Every local data file an lm-eval task under task_paths names exists (before anything trains)."""
    path = files.lm_eval[name]
    for cfg_path, cfg in _with_includes(path):
        for spec in data_file_specs(cfg):
            if _is_remote(spec) or local_data_files(spec):
                continue
            beside = cfg_path.parent / spec
            hint = (f"; it is next to the YAML: write '{os.path.relpath(beside)}' (or an absolute path)" if beside.exists()
                    else f"; relative paths are read from the current directory ({Path.cwd()}), as lm-eval reads them")
            raise RecipeError(f"{cfg_path}: dataset_kwargs.data_files: '{spec}' does not exist{hint}")


def _with_includes(path: Path) -> list[tuple[Path, dict]]:
    """A lm-eval task YAML and the YAMLs it `include:`s (lm-eval resolves them against the including file's directory)."""
    out, stack, seen = [], [Path(path)], set()
    while stack:
        current = stack.pop()
        if current in seen or not current.is_file():
            continue
        seen.add(current)
        cfg = read_task_yaml(current)
        if not isinstance(cfg, dict):
            continue
        out.append((current, cfg))
        for include in _as_list(cfg.get("include")):
            stack.append((current.parent / str(include)).resolve())
    return out


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _lm_eval_task_files(name: str, files: TaskFiles, seen: set[str]) -> list[Path]:
    """Every local file an lm-eval task (or group, or tag) under task_paths is made of: its YAML and
    those it includes, the Python files its `!function`s name, its local data files, and its members'."""
    if name in seen:
        return []
    seen.add(name)
    if name not in files.lm_eval:  # a tag
        return [f for member in files.lm_eval_tags.get(name, []) for f in _lm_eval_task_files(member, files, seen)]
    out: list[Path] = []
    for path, cfg in _with_includes(files.lm_eval[name]):
        out.append(path)
        for text in _strings(cfg):
            if text.startswith("!function "):
                module = text.split(" ", 1)[1].rpartition(".")[0]
                code = path.parent / f"{module.replace('.', '/')}.py"
                if code.is_file():
                    out.append(code)
        for spec in data_file_specs(cfg):
            out.extend(local_data_files(spec))
        dataset_path = cfg.get("dataset_path")
        if isinstance(dataset_path, str) and not _is_remote(dataset_path) and Path(dataset_path).exists():
            local = Path(dataset_path)
            out.extend([local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file()))
        if "group" in cfg:
            for member in _as_list(cfg.get("task")):
                member = member.get("task") if isinstance(member, dict) else member
                if isinstance(member, str):
                    out.extend(_lm_eval_task_files(member, files, seen))
    return out


def tasks_digest(names: list[str], task_paths=()) -> str:
    """Content hash of the task definitions and data named (for fingerprints and the evaluation cache):
    a suite's YAML and JSONL; every local file of an lm-eval task under task_paths; a registered
    lm-eval task's name (its version is in the recorded lm_eval version)."""
    h = hashlib.sha256()
    files = find_tasks(task_paths)
    for name in names:
        if name in files.suites:
            spec = load_task_spec(files.suites[name])
            h.update(files.suites[name].read_bytes())
            h.update(spec["data_path"].read_bytes())
        elif name in files.lm_eval or name in files.lm_eval_tags:
            h.update(f"lm-eval task {name}".encode())
            for path in _lm_eval_task_files(name, files, set()):
                h.update(json.dumps(path.name).encode())
                h.update(path.read_bytes())
        else:
            h.update(name.encode())  # an lm-eval task: its version is in the recorded lm_eval version
    return h.hexdigest()


def lm_eval_task_config(spec: dict, max_new_tokens: int, stop: list[str]) -> dict:
    metrics = spec["metrics"]

    def process_results(doc, results):
        response = results[0].strip()
        values = {name: METRICS[name](doc, response) for name in metrics}
        return {name: value for name, value in values.items() if value is not None}  # None: not applicable here

    return {
        "task": spec["task"],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(spec["data_path"])}},
        "test_split": "test",
        "output_type": "generate_until",
        # A callable, not a Jinja string: lm-eval would render a mistyped field name as literal text.
        "doc_to_text": lambda doc, field=spec["prompt_field"]: doc[field],
        "doc_to_target": lambda doc, field=spec.get("target_field"): doc.get(field, "") if field else "",
        "process_results": process_results,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": bool(cfg.get("higher_is_better", True))}
                        for m, cfg in metrics.items()],
        "generation_kwargs": {"until": stop, "max_gen_toks": max_new_tokens, "do_sample": False},
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }


def assistant_world_suite() -> dict[str, list[dict]]:
    """Task name -> rows of every assistant-world suite, from the generators."""
    from posttrain.embedded import world
    from posttrain.eval.format_suite import format_rows

    suites = {name: world.eval_rows(group) for group, name in
              (("skills", "world_skills"), ("safety", "world_safety"), ("over_refusal", "world_over_refusal"))}
    suites["world_format"] = format_rows()
    return suites


def instruction_suite() -> list[dict]:
    """Rows of the shipped `world_instructions` suite (eval/tasks/world_instructions/), from its generator."""
    from posttrain.eval.format_suite import instruction_rows

    return instruction_rows()


INSTRUCTION_SUITE_FILE = TASKS_DIR / "world_instructions" / "world_instructions.jsonl"


def write_assistant_world_suite() -> None:
    """Regenerate the committed JSONL files of the assistant-world suites from the generators."""
    files = {TASKS_DIR / "assistant_world" / f"{name}.jsonl": rows for name, rows in assistant_world_suite().items()}
    files[INSTRUCTION_SUITE_FILE] = instruction_suite()
    for path, rows in files.items():
        lines = [json.dumps(row) for row in rows]
        path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    write_assistant_world_suite()

"""Seed tasks: the human-written tasks the teacher starts from.

Two shapes are read:
  - the self-instruct seed format (one task per JSONL line, as in the paper's seed_tasks.jsonl):
      {"instruction": "...", "instances": [{"input": "...", "output": "..."}], "is_classification": false}
    (`id` and `name` are allowed and not read);
  - any SFT data posttrain reads (messages, Alpaca, ShareGPT, prompt/completion, ...): each single-turn
    demonstration is a task whose instruction is the user's message and whose one instance is the reply,
    not a classification task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from posttrain.errors import DataError


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    instances: tuple[Instance, ...] = field(default_factory=tuple)
    is_classification: bool = False


def read_seed_tasks(source: str, data_files: dict[str, Path] | None = None) -> list[SeedTask]:
    from posttrain.data.sources import load_rows

    rows = load_rows(source, data_files=data_files)
    if all(isinstance(row, dict) and "instances" in row for row in rows):
        tasks = [_seed_task(row, getattr(row, "location", f"{source}: row {i}")) for i, row in enumerate(rows, start=1)]
    elif any(isinstance(row, dict) and "instances" in row for row in rows):
        first = next(r for r in rows if not (isinstance(r, dict) and "instances" in r))
        raise DataError(f"{getattr(first, 'location', source)}: a seed task needs 'instruction' and 'instances' like the other rows "
                        "of this file (one format per file)")
    else:
        tasks = _tasks_from_sft(rows, source)
    seen, unique = set(), []
    for task in tasks:  # the same instruction twice would only weigh it double in the prompts
        if task.instruction not in seen:
            seen.add(task.instruction)
            unique.append(task)
    return unique


def _seed_task(row: dict, location: str) -> SeedTask:
    instruction = row.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"{location}: field 'instruction' must be a non-empty string (the task, e.g. \"Give three tips for staying healthy.\")")
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances:
        raise DataError(f"{location}: field 'instances' must be a non-empty list of {{\"input\": ..., \"output\": ...}}")
    read = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict) or not isinstance(instance.get("output"), str) or not isinstance(instance.get("input", ""), str):
            raise DataError(f"{location}: field 'instances[{i}]' must be an object with a string 'output' and a string 'input' "
                            "(\"\" when the task needs none)")
        read.append(Instance(instance.get("input", "").strip(), instance["output"].strip()))
    flag = row.get("is_classification", False)
    if not isinstance(flag, bool):
        raise DataError(f"{location}: field 'is_classification' is {flag!r}; use true or false")
    return SeedTask(instruction.strip(), tuple(read), flag)


def _tasks_from_sft(rows, source: str) -> list[SeedTask]:
    from posttrain.data.training_data import to_sft_examples

    examples, _ = to_sft_examples(rows, source)
    tasks = []
    for example in examples:
        users = [m for m in example["prompt"] if m["role"] == "user"]
        if len(users) != 1:
            continue  # a multi-turn conversation is not one task
        tasks.append(SeedTask(users[0]["content"].strip(), (Instance("", example["completion"][-1]["content"].strip()),)))
    if not tasks:
        raise DataError(f"{source}: no single-turn demonstrations to use as seed tasks; write tasks in the self-instruct seed format "
                        "(instruction, instances: [{input, output}], is_classification)")
    return tasks

"""What the teacher is asked at each step of self-instruct, and how its replies are read.

The steps follow Wang et al. 2022 (section 2.2), written as chat requests for a chat teacher:
  1. new instruction: a numbered list of sampled tasks (seed and generated ones), "write task N+1";
  2. classification or not: few-shot yes/no, the examples taken from the seed tasks' own flags;
  3. instance: for a classification task output first (a class label, then an input of that class),
     otherwise input first (an input, or "None" when the task needs none);
  4. the output of a non-classification task: the instruction and its input as a user message, answered
     as the teacher would answer any user (what the student is to learn).
"""

from __future__ import annotations

import re

from posttrain.self_instruct.seeds import SeedTask

NO_INPUT = "None"
_LIST_MARK = re.compile(r"^\s*(?:(?:task|instruction)\s*\d*\s*[:.)-]|\d+\s*[.:)-]|[-*•])\s*", re.IGNORECASE)
_NO_INPUT_WORDS = {"none", "n/a", "na", "no input", "not applicable", "not needed", "nothing", "empty", "<noinput>"}


def instruction_prompt(tasks: list[str]) -> str:
    listed = "\n".join(f"Task {i}: {task}" for i, task in enumerate(tasks, start=1))
    return (f"Come up with a new task, different from these {len(tasks)} tasks.\n\n{listed}\n\n"
            f"Reply with Task {len(tasks) + 1} only: one instruction, one sentence or two.")


def read_instruction(reply: str) -> str:
    """The first non-empty line of the reply without a list mark ("Task 9:", "9.", "-"), after a preamble
    line that ends with a colon ("Here is a new task:")."""
    lines = [_LIST_MARK.sub("", line, count=1).strip().strip('"').strip() for line in reply.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return lines[0] if lines else ""


def classification_prompt(instruction: str, examples: list[SeedTask]) -> str:
    shots = "\n\n".join(f"Task: {t.instruction}\nIs it classification? {'Yes' if t.is_classification else 'No'}" for t in examples)
    return ("Can the task be regarded as a classification task with a finite set of output labels? Answer Yes or No.\n\n"
            f"{shots}\n\nTask: {instruction}\nIs it classification?")


def read_yes_no(reply: str) -> bool:
    return reply.strip().lstrip("*\"' ").lower().startswith("yes")


def input_prompt(instruction: str, examples: list[SeedTask]) -> str:
    shots = "\n\n".join(f"Task: {t.instruction}\nInput: {t.instances[0].input or NO_INPUT}" for t in examples if t.instances)
    return ("Write an example input for the task. If the task needs no input, write: None.\n\n"
            f"{shots}\n\nTask: {instruction}\nInput:")


def read_input(reply: str) -> str:
    """The input the teacher wrote, or "" for none. An input may span lines; a following "Output:" is not part of it."""
    text = re.split(r"(?:^|\n)\s*(?:output|task)\s*:", reply, maxsplit=1, flags=re.IGNORECASE)[0]
    text = re.sub(r"^\s*input\s*:\s*", "", text, flags=re.IGNORECASE).strip()
    return "" if text.strip(" .\"'").lower() in _NO_INPUT_WORDS else text


def label_prompt(instruction: str, examples: list[SeedTask]) -> str:
    shots = "\n\n".join(f"Task: {t.instruction}\nClass label: {t.instances[0].output}\nInput: {t.instances[0].input or NO_INPUT}"
                        for t in examples if t.instances)
    return ("Given the classification task, write one of its class labels, then an input that belongs to that class.\n\n"
            f"{shots}\n\nTask: {instruction}\nClass label:")


def read_label_and_input(reply: str) -> tuple[str, str]:
    """(class label, input) from "<label>\\nInput: <input>"; a missing input is ""."""
    head, found, tail = _split_input(reply)
    label = re.sub(r"^\s*class label\s*:\s*", "", head, flags=re.IGNORECASE).strip().splitlines()
    label = label[0].strip() if label else ""
    return label, read_input(tail) if found else ""


def _split_input(reply: str) -> tuple[str, bool, str]:
    match = re.search(r"\binput\s*:", reply, flags=re.IGNORECASE)
    if match is None:
        return reply, False, ""
    return reply[:match.start()], True, reply[match.end():]


def user_message(instruction: str, input_text: str) -> str:
    """The training row's user turn: the instruction, then its input after a blank line (as Alpaca rows read)."""
    return instruction + (f"\n\n{input_text}" if input_text.strip() else "")

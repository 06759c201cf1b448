"""Instruction following, IFEval-style: instructions a program can check.

A suite's JSONL row may carry a list of instructions the prompt gave, each a type and its
parameters:

    {"prompt": "... Answer in at most 20 words, as 3 bullet points.",
     "instructions": [{"type": "bullets", "count": 3}, {"type": "max_words", "limit": 20}]}

`follows(instruction, response)` checks one of them on a response, strictly or loosely. The loose
variant is IFEval's (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language
Models"): an instruction is also followed when it holds once the response's first line, its last
line or both are removed, or its markdown emphasis (`*`) is stripped, so "Sure! Here it is:" before
the answer does not fail it. As in IFEval, an empty response follows no instruction (else "say
nothing" would pass every "no commas" and "at most N words").

Why not `lm_eval.tasks.ifeval.instructions`, which lm-eval ships: importing it needs `langdetect`
and `immutabledict` (neither is a dependency of lm-eval itself, nor installed here), and it calls
`nltk.download("punkt_tab")` at import time, so it fails offline, which is how evaluation runs
here; its sentence counts need that tokenizer's data too, and its types do not cover all ours (a
JSON object's keys, numbered lists as bullets, a minimum word count). Each check below is a few
lines of `re`/`json`, so they are ours.

Nothing here imports lm-eval or torch; `posttrain.eval.metrics` turns these checks into metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from posttrain.errors import did_you_mean

INSTRUCTIONS_FIELD = "instructions"  # the JSONL field a row's instructions are in

# -- text helpers ------------------------------------------------------------------------------
# A response may wrap its JSON in a Markdown code fence, as chat models commonly do.
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
# A list item: `-`, `*`, `+` or `•`, or `1.` / `1)`, then a space and some text. `**bold**` and
# `-5` are not items (no space after the marker).
_BULLET = re.compile(r"^[ \t]*(?:[-*+•]|\d+[.)])[ \t]+\S", re.MULTILINE)
# A sentence ends at . ! or ? (one or more) followed by a space or the end: "3.5" is one number.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
# Paragraphs are separated by a blank line; a markdown divider line (***, ---, ___) counts as one.
_DIVIDER = re.compile(r"^[ \t]*(?:\*{3,}|-{3,}|_{3,})[ \t]*$", re.MULTILINE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def parse_json(response: str) -> tuple[bool, object]:
    """(True, value) when the whole response, optionally in a ```json fence, is JSON; (False, None) otherwise."""
    text = response.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def words(text: str) -> list[str]:
    """Words: runs of letters or digits, joined by an apostrophe or hyphen ("don't", "well-known").
    Punctuation and list markers are not words."""
    return _WORD.findall(text)


def sentence_count(text: str) -> int:
    """Sentences: text up to . ! or ? followed by a space or the end (and a last one without them).
    Abbreviations ("e.g. this") count as sentence ends: a simple rule, stated so it can be relied on."""
    pieces = _SENTENCE_END.split(text)
    return sum(1 for piece in pieces if words(piece))


def paragraphs(text: str) -> list[str]:
    return [p for p in _BLANK_LINE.split(_DIVIDER.sub("", text).strip()) if p.strip()]


def _has_phrase(text: str, phrase: str) -> bool:
    """`phrase` occurs as whole words, ignoring case ("cat" is not in "concatenate")."""
    return re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, re.IGNORECASE) is not None


# -- the checks ----------------------------------------------------------------------------------
def _json(text: str, keys: list[str] | None = None) -> bool:
    ok, value = parse_json(text)
    if not ok:
        return False
    return not keys or (isinstance(value, dict) and all(k in value for k in keys))


def _bullets(text: str, count: int) -> bool:
    return len(_BULLET.findall(text)) == count


def _max_words(text: str, limit: int) -> bool:
    return len(words(text)) <= limit


def _min_words(text: str, limit: int) -> bool:
    return len(words(text)) >= limit


def _max_sentences(text: str, limit: int) -> bool:
    return sentence_count(text) <= limit


def _lowercase(text: str) -> bool:
    return not any(c.isupper() for c in text)


def _uppercase(text: str) -> bool:
    return not any(c.islower() for c in text)


def _forbidden_words(text: str, words: list[str]) -> bool:
    return not any(_has_phrase(text, w) for w in words)


def _keywords(text: str, words: list[str]) -> bool:
    return all(_has_phrase(text, w) for w in words)


def _ends_with(text: str, phrase: str) -> bool:
    # As IFEval: surrounding whitespace and double quotes aside, ignoring case.
    return text.strip().strip('"').strip().lower().endswith(phrase.strip().lower())


def _starts_with(text: str, phrase: str) -> bool:
    return text.strip().strip('"').strip().lower().startswith(phrase.strip().lower())


def _no_commas(text: str) -> bool:
    return "," not in text and "，" not in text


def _paragraphs(text: str, count: int) -> bool:
    return len(paragraphs(text)) == count


@dataclass(frozen=True)
class Param:
    """One parameter of an instruction type: `count` (an integer >= minimum), `text` (a non-empty
    string) or `texts` (a non-empty list of non-empty strings)."""

    kind: str
    required: bool = True
    minimum: int = 0

    def problem(self, value) -> str | None:
        if self.kind == "count":
            if isinstance(value, bool) or not isinstance(value, int):
                return f"expected an integer, got {value!r}"
            if value < self.minimum:
                return f"expected an integer >= {self.minimum}, got {value!r}"
        elif self.kind == "text":
            if not isinstance(value, str) or not value.strip():
                return f"expected a non-empty string, got {value!r}"
        elif self.kind == "texts":
            if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                return f"expected a non-empty list of non-empty strings, got {value!r}"
        return None


@dataclass(frozen=True)
class InstructionType:
    name: str
    check: Callable[..., bool]  # check(text, **params) -> followed
    params: dict[str, Param]
    summary: str  # what it asks for, for docs and error messages


# One name per parameter across types, always of the same kind (`count`, `limit`: integers; `words`,
# `keys`: lists of strings; `phrase`: a string): lm-eval reads the JSONL with `datasets`, which merges
# every row's instructions into one column type and fills a parameter a row lacks with None.
_TYPES = [
    InstructionType("json", _json, {"keys": Param("texts", required=False)},
                    "the whole response is JSON (optionally in a ```json fence); with `keys`, an object with those keys"),
    InstructionType("bullets", _bullets, {"count": Param("count")},
                    "exactly `count` list items (lines starting with -, *, +, • or 1. / 1))"),
    InstructionType("max_words", _max_words, {"limit": Param("count", minimum=1)}, "at most `limit` words"),
    InstructionType("min_words", _min_words, {"limit": Param("count", minimum=1)}, "at least `limit` words"),
    InstructionType("max_sentences", _max_sentences, {"limit": Param("count", minimum=1)}, "at most `limit` sentences"),
    InstructionType("lowercase", _lowercase, {}, "no capital letter"),
    InstructionType("uppercase", _uppercase, {}, "no lowercase letter"),
    InstructionType("forbidden_words", _forbidden_words, {"words": Param("texts")},
                    "none of `words` (whole words, any case)"),
    InstructionType("keywords", _keywords, {"words": Param("texts")}, "every one of `words` (whole words, any case)"),
    InstructionType("starts_with", _starts_with, {"phrase": Param("text")}, "begins with `phrase` (any case)"),
    InstructionType("ends_with", _ends_with, {"phrase": Param("text")}, "ends with `phrase` (any case)"),
    InstructionType("no_commas", _no_commas, {}, "no comma"),
    InstructionType("paragraphs", _paragraphs, {"count": Param("count", minimum=1)},
                    "exactly `count` paragraphs (separated by a blank line or a *** / --- divider)"),
]
INSTRUCTION_TYPES: dict[str, InstructionType] = {t.name: t for t in _TYPES}


# -- checking a response ---------------------------------------------------------------------------
def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants: the response, without its first line, its last line or both, each also
    without `*` (markdown emphasis)."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [t.replace("*", "") for t in trimmed]


def _params(instruction: dict) -> dict:
    """The instruction's parameters. A parameter that is None is absent: `datasets` fills the parameters
    of other types with None (a suite's own None values are refused by `instruction_problem`)."""
    return {k: v for k, v in instruction.items() if k != "type" and v is not None}


def follows(instruction: dict, response: str, loose: bool = False) -> bool:
    """Whether `response` follows `instruction` (a valid one: see `instruction_problem`)."""
    kind = INSTRUCTION_TYPES[instruction["type"]]
    params = _params(instruction)
    candidates = loose_variants(response) if loose else [response]
    return any(text.strip() and kind.check(text, **params) for text in candidates)


def doc_instructions(doc: dict) -> list[dict]:
    """A document's instructions (none when it carries none)."""
    return list(doc.get(INSTRUCTIONS_FIELD) or [])


# -- validating a suite's instructions -------------------------------------------------------------
def instruction_problem(instruction) -> tuple[str, str] | None:
    """What is wrong with one instruction, as (the key at fault, or "" for the whole instruction; what is
    wrong), or None when it is valid."""
    if not isinstance(instruction, dict):
        return "", f'expected an object like {{"type": "max_words", "limit": 20}}, got {instruction!r}'
    kind = instruction.get("type")
    if kind is None:
        return "", f"missing 'type' (one of {', '.join(INSTRUCTION_TYPES)})"
    if not isinstance(kind, str) or kind not in INSTRUCTION_TYPES:
        return "type", f"unknown instruction type {kind!r}{did_you_mean(kind, INSTRUCTION_TYPES)}; known: {', '.join(INSTRUCTION_TYPES)}"
    spec = INSTRUCTION_TYPES[kind]
    for name, value in instruction.items():
        if name == "type":
            continue
        if name not in spec.params:
            takes = f"takes {', '.join(spec.params)}" if spec.params else "takes no parameters"
            return name, f"unknown parameter of '{kind}'{did_you_mean(name, spec.params)}; '{kind}' {takes}"
        problem = spec.params[name].problem(value)
        if problem:
            return name, f"{problem} ('{kind}': {spec.summary})"
    missing = [name for name, p in spec.params.items() if p.required and name not in instruction]
    if missing:
        return "", f"missing parameter '{missing[0]}' of '{kind}' ({spec.summary})"
    return None


def instructions_problem(value) -> str | None:
    """What is wrong with a row's `instructions` value, as one line starting with the key at fault
    (e.g. "instructions.1.count: expected an integer, got '3' (...)"), or None when it is valid."""
    if value is None:
        return None
    if not isinstance(value, list):
        return f"{INSTRUCTIONS_FIELD}: expected a list of instructions, got {value!r}"
    for i, instruction in enumerate(value):
        problem = instruction_problem(instruction)
        if problem:
            key, what = problem
            return f"{INSTRUCTIONS_FIELD}.{i}{'.' + key if key else ''}: {what}"
    return None

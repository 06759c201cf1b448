"""Per-response metrics that local task YAMLs name under `metrics:`.

Each takes the task's document and the model's response and returns a number; lm-eval
averages them and reports standard errors. A metric may return None for a document it does not
apply to (an instruction metric on a document without that instruction): the document is left out
of that metric's mean.

Instruction following (IFEval-style, checks in `posttrain.eval.instructions`), on documents that
carry `instructions`:

- `prompt_strict`: every instruction of the document followed;
- `prompt_loose`: the same, with IFEval's loose variant (an instruction also counts as followed
  once the response's first and/or last line, or its `*` emphasis, is removed);
- `instruction_<type>` (e.g. `instruction_json`): the document's instruction(s) of that type
  followed (strict), on the documents that carry one.
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.eval.instructions import INSTRUCTION_TYPES, doc_instructions, follows, parse_json
from posttrain.reward.rules import first_sentence, is_rambling, is_refusal, word_count


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def exact_match(doc: dict, response: str) -> float:
    # The answer is the first sentence; what follows is judged by `rambling`, not here.
    return float(_normalize(first_sentence(response)) == _normalize(doc["target"]))


def rambling(doc: dict, response: str) -> float:
    return float(is_rambling(response))


def refusal(doc: dict, response: str) -> float:
    return float(is_refusal(response))


def response_words(doc: dict, response: str) -> float:
    return float(word_count(response))


def valid_json(doc: dict, response: str) -> float:
    """The whole response (optionally in a ```json fence) parses as JSON."""
    return float(parse_json(response)[0])


def json_has_key(doc: dict, response: str) -> float:
    """The response is a JSON object with the key the prompt asked for (`json_key` in the document)."""
    ok, value = parse_json(response)
    return float(ok and isinstance(value, dict) and doc["json_key"] in value)


def prompt_strict(doc: dict, response: str) -> float | None:
    """Every instruction of the document followed (None for a document without instructions)."""
    instructions = doc_instructions(doc)
    return float(all(follows(i, response) for i in instructions)) if instructions else None


def prompt_loose(doc: dict, response: str) -> float | None:
    """Every instruction followed by the response or one of IFEval's loose variants of it."""
    instructions = doc_instructions(doc)
    return float(all(follows(i, response, loose=True) for i in instructions)) if instructions else None


def _instruction_metric(kind: str) -> Callable[[dict, str], float | None]:
    def metric(doc: dict, response: str) -> float | None:
        own = [i for i in doc_instructions(doc) if i["type"] == kind]
        return float(all(follows(i, response) for i in own)) if own else None

    metric.__name__ = f"instruction_{kind}"
    metric.__doc__ = f"The document's '{kind}' instruction followed ({INSTRUCTION_TYPES[kind].summary}); None without one."
    return metric


PROMPT_METRICS = ("prompt_strict", "prompt_loose")
INSTRUCTION_METRICS = {f"instruction_{kind}": kind for kind in INSTRUCTION_TYPES}  # metric -> its instruction type
INSTRUCTION_GROUP = "instruction following"  # their report group unless a suite names another

METRICS = {f.__name__: f for f in (exact_match, rambling, refusal, response_words, valid_json, json_has_key,
                                   prompt_strict, prompt_loose, *map(_instruction_metric, INSTRUCTION_TYPES))}

"""Per-response metrics that local task YAMLs name under `metrics:`.

Each takes the task's document and the model's response and returns a number; lm-eval
averages them and reports standard errors.
"""

from __future__ import annotations

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


METRICS = {f.__name__: f for f in (exact_match, rambling, refusal, response_words)}

"""Per-response metrics that local task YAMLs name under `metrics:`.

Each takes the task's document and the model's response and returns a number; lm-eval
averages them and reports standard errors.
"""

from __future__ import annotations

import json
import re

from posttrain.reward.rules import first_sentence, is_rambling, is_refusal, word_count

# A response may wrap its JSON in a Markdown code fence, as chat models commonly do.
_FENCE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.DOTALL | re.IGNORECASE)


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _parse_json(response: str):
    text = response.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


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
    return float(_parse_json(response)[0])


def json_has_key(doc: dict, response: str) -> float:
    """The response is a JSON object with the key the prompt asked for (`json_key` in the document)."""
    ok, value = _parse_json(response)
    return float(ok and isinstance(value, dict) and doc["json_key"] in value)


METRICS = {f.__name__: f for f in (exact_match, rambling, refusal, response_words, valid_json, json_has_key)}

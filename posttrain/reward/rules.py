"""Rule-based judgements of a response: refusal, rambling, length.

Shared by evaluation metrics (and later by rule-based rewards), so the definition of
"refused" or "rambled" lives in one place.
"""

from __future__ import annotations

import re

# Openings that mark a refusal. Matched at the start of the response, case-insensitive.
REFUSAL_PATTERNS = re.compile(
    r"^\s*(i can'?t|i cannot|i can not|i won'?t|i will not|sorry|i'?m sorry|i am sorry|i'?m not able|i am not able|i must decline)",
    re.IGNORECASE,
)

# A response longer than this many words past its first sentence counts as rambling.
RAMBLE_EXTRA_WORDS = 6


def is_refusal(response: str) -> bool:
    return bool(REFUSAL_PATTERNS.match(response))


def word_count(response: str) -> int:
    return len(response.split())


def first_sentence(response: str) -> str:
    match = re.match(r"\s*(.*?[.!?])(\s|$)", response, re.DOTALL)
    return (match.group(1) if match else response).strip()


def is_rambling(response: str) -> bool:
    """True when the response goes on well past its first sentence."""
    return word_count(response) - word_count(first_sentence(response)) > RAMBLE_EXTRA_WORDS


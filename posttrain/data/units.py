"""Step 3, units (2/4): the conversation units every input format is read into.

One unit is one accountable row: a line of a flat file, or one assistant message of an
OpenAssistant tree. Prompts are message lists (the whole conversation up to the reply),
so trainers render them with the model's chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Messages = list[dict]


@dataclass
class Unit:
    location: str
    prompt: Messages
    merged_turns: int = field(default=0, kw_only=True)  # consecutive same-role turns merged while reading the row

    def responses(self) -> list[str]:
        """Every response text the unit carries (for empty and length checks)."""
        raise NotImplementedError


@dataclass
class Demo(Unit):
    """A demonstration: the reply to learn (messages, Alpaca, ShareGPT, prompt/completion)."""

    completion: Messages = field(default_factory=list)

    def responses(self) -> list[str]:
        return [completion_text(self.completion)]


@dataclass
class Pair(Unit):
    """An explicit preference: chosen over rejected (preference pairs, Anthropic HH)."""

    chosen: Messages = field(default_factory=list)
    rejected: Messages = field(default_factory=list)

    def responses(self) -> list[str]:
        return [completion_text(self.chosen), completion_text(self.rejected)]


@dataclass
class Rated(Unit):
    """Several scored responses to one prompt in one row (UltraFeedback-style)."""

    scored: list[tuple[str, float]] = field(default_factory=list)  # (response, score); higher is better

    def responses(self) -> list[str]:
        return [r for r, _ in self.scored]


@dataclass
class Vote(Unit):
    """One response with feedback: thumbs votes and/or a rank among sibling replies.

    A thumbs-log row is one vote (up=1 or down=1); an OpenAssistant reply carries its
    `+1` / `-1` counts and its rank (0 = best) among the replies in `rank_group`.
    """

    response: str = ""
    up: int = 0
    down: int = 0
    rank: float | None = None
    rank_group: str | None = None
    user: str | None = None
    timestamp: object = None

    def responses(self) -> list[str]:
        return [self.response]


@dataclass
class Dropped:
    """A row (or OpenAssistant reply) that exists but cannot be used, with its reason (and the error text, if any)."""

    location: str
    reason: str
    message: str | None = None


def completion_text(messages: Messages) -> str:
    return "\n".join(m["content"] for m in messages)


def assistant(text: str) -> Messages:
    return [{"role": "assistant", "content": text}]

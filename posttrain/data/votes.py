"""Step 4, filter: votes on the same reply are pooled, and the pooled votes give the reply one label.

Rules (documented in docs/data.md):
- one reply = the same response text to the same conversation prefix (compared as the
  `dedupe` mode says); all its votes count together, and its rows share one fate;
- a voter (`user`, else `session`) who voted twice on the same reply keeps only the later
  vote (by `timestamp`, else file order); the earlier row drops as `superseded_vote`;
- label: more up than down votes -> "up", more down -> "down", equal and non-zero ->
  "conflict", none -> None. With both_votes="drop", any reply with both kinds conflicts;
- best-ranked: the lowest rank among the replies to the same parent message.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from posttrain.data.filters import conversation_key, text_key
from posttrain.data.units import Messages, Vote


@dataclass
class Response:
    """One distinct reply to one prompt, with every vote it received."""

    prompt: Messages
    prompt_key: str
    text: str
    units: list[Vote] = field(default_factory=list)
    up: int = 0
    down: int = 0
    label: str | None = None  # "up", "down", "conflict" or None (never voted)
    best_ranked: bool = False
    ranked: bool = False

    @property
    def net(self) -> int:
        return self.up - self.down


def vote_label(up: int, down: int, both_votes: str = "majority") -> str | None:
    if not up and not down:
        return None
    if both_votes == "drop" and up and down:
        return "conflict"
    return "up" if up > down else "down" if down > up else "conflict"


def pool_votes(votes: list[Vote], dedupe: str, both_votes: str) -> tuple[list[Response], list[Vote]]:
    """(pooled replies in first-seen order, rows superseded by the same voter's later vote)."""
    current, superseded = _latest_per_voter(votes, dedupe)
    best = _best_rank_per_group(current)
    pooled: dict[tuple[str, str], Response] = {}
    for vote in current:
        key = (conversation_key(vote.prompt, dedupe), text_key(vote.response, dedupe))
        response = pooled.setdefault(key, Response(vote.prompt, key[0], vote.response))
        response.units.append(vote)
        response.up += vote.up
        response.down += vote.down
        if vote.rank is not None:
            response.ranked = True
            response.best_ranked |= vote.rank == best[vote.rank_group]
    for response in pooled.values():
        response.label = vote_label(response.up, response.down, both_votes)
    return list(pooled.values()), superseded


def _latest_per_voter(votes: list[Vote], dedupe: str) -> tuple[list[Vote], list[Vote]]:
    latest: dict[tuple, Vote] = {}
    superseded: list[Vote] = []
    for vote in votes:
        if vote.user is None:
            continue
        key = (conversation_key(vote.prompt, dedupe), text_key(vote.response, dedupe), vote.user)
        if key in latest:
            older, newer = (latest[key], vote) if _is_later(vote, latest[key]) else (vote, latest[key])
            superseded.append(older)
            latest[key] = newer
        else:
            latest[key] = vote
    gone = {id(v) for v in superseded}
    return [v for v in votes if id(v) not in gone], superseded


def _is_later(candidate: Vote, incumbent: Vote) -> bool:
    """Compare timestamps when both are comparable (numbers, or ISO-8601 strings); else file order wins."""
    a, b = candidate.timestamp, incumbent.timestamp
    numbers = all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in (a, b))
    if numbers or (isinstance(a, str) and isinstance(b, str)):
        return a >= b
    return True


def _best_rank_per_group(votes: list[Vote]) -> dict:
    best: dict = defaultdict(lambda: float("inf"))
    for vote in votes:
        if vote.rank is not None:
            best[vote.rank_group] = min(best[vote.rank_group], vote.rank)
    return best

"""Judgements -> training data: the shapes posttrain's data layer reads, and OpenAI's preference format.

Every judgement says something about one or two answers to a conversation:

    rating +1 / -1         the answer is liked / disliked
    edit                   the answer is disliked, the corrected answer liked, and preferred to it
    flag (unsafe)          the answer is disliked; a correction given with the flag is liked and preferred;
                           without one, `refusal` (when given) is the liked and preferred answer: red-teaming,
                           a jailbreak that worked becomes a refusal example
    arena a / b            the winner is liked, the loser disliked, and the winner preferred
    arena both_bad         both answers are disliked
    arena tie              no preference and no label (skipped: tie)

One rule is stronger than any count of votes: an answer that anyone disliked (rated down,
flagged, edited away, lost an arena vote, judged both-bad) is exported as disliked only.
Its likes are left out (skipped: disliked_elsewhere), so it can never be a demonstration
nor the chosen side of a pair, whatever data options a recipe reads the file with.

Formats (one JSON object a line):
    thumbs   {"prompt": [messages], "completion": [assistant], "rating": "up"|"down", "user", "timestamp"}
    kto      {"prompt": [messages], "completion": [assistant], "label": true|false}
    pairs    {"prompt": [messages], "chosen": [assistant], "rejected": [assistant]}
    openai   {"input": {"messages": [...]}, "preferred_output": [assistant], "non_preferred_output": [assistant]}
             (OpenAI's preference fine-tuning file; the same pairs as `pairs`)

`pairs` (and `openai`) holds the explicit preferences (edits, flags with a correction, arena
votes whose two sides share the conversation) and, per conversation, every liked answer
against every disliked one (capped at `max_pairs_per_prompt`, explicit ones first).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.atomic import write_text_atomic
from posttrain.feedback.store import FeedbackError, Judgement

FORMATS = ("thumbs", "pairs", "kto", "openai")


@dataclass
class Export:
    """The rows of one export, and what happened to every judgement."""

    format: str
    rows: list[dict] = field(default_factory=list)
    judgements: int = 0
    used: int = 0  # judgements that gave at least one row
    skipped: Counter = field(default_factory=Counter)  # judgements that gave none, by reason
    origins: list[int] = field(default_factory=list)  # thumbs, kto: the judgement (index) each row came from
    skipped_judgements: dict[int, str] = field(default_factory=dict)  # judgement index -> why it gave no row

    def line(self, path: Path | str) -> str:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items())) or "none"
        return (f"exported {len(self.rows)} {self.format} rows from {self.judgements} judgements to {path} "
                f"({self.used} used; skipped: {skipped})")


@dataclass(frozen=True)
class _Vote:
    key: tuple  # (conversation as JSON, answer text): the same answer to the same conversation
    conversation: list[dict]
    text: str
    liked: bool
    judgement: int  # index into the judgements
    user: str
    timestamp: str


def _key(conversation: list[dict], text: str) -> tuple:
    return json.dumps(conversation, ensure_ascii=False, sort_keys=True), text


def _votes(judgements: list[Judgement], skipped: dict[int, str], refusal: str | None = None) -> list[_Vote]:
    votes = []
    for i, j in enumerate(judgements):
        def vote(conversation, text, liked):
            votes.append(_Vote(_key(conversation, text), conversation, text, liked, i, j.user_id, j.created_at))

        a = j.answer
        if j.kind == "rating":
            vote(a.conversation, a.text, j.rating > 0)
        elif j.kind in ("edit", "flag"):
            vote(a.conversation, a.text, False)
            if j.correction is not None:
                vote(a.conversation, j.correction, True)
            elif j.kind == "flag" and refusal is not None:
                vote(a.conversation, refusal, True)
        elif j.choice == "tie":
            skipped[i] = "tie"
        else:
            b = j.other
            vote(a.conversation, a.text, j.choice == "a")
            vote(b.conversation, b.text, j.choice == "b")
    return votes


def _explicit_pairs(judgements: list[Judgement], skipped: dict[int, str], refusal: str | None) -> list[tuple[list[dict], str, str, int]]:
    """(conversation, chosen, rejected, judgement index) stated by one judgement."""
    pairs = []
    for i, j in enumerate(judgements):
        a = j.answer
        if j.kind in ("edit", "flag") and j.correction is not None:
            pairs.append((a.conversation, j.correction, a.text, i))
        elif j.kind == "flag" and refusal is not None:
            pairs.append((a.conversation, refusal, a.text, i))
        elif j.kind == "arena" and j.choice in ("a", "b"):
            if a.conversation != j.other.conversation:
                skipped.setdefault(i, "arena_histories_differ")  # its votes may still pair with others below
                continue
            winner, loser = (a, j.other) if j.choice == "a" else (j.other, a)
            pairs.append((a.conversation, winner.text, loser.text, i))
    return pairs


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def export(judgements: list[Judgement], format: str, max_pairs_per_prompt: int = 8, refusal: str | None = None) -> Export:
    """The rows of `format` made from `judgements` (in store order), with their accounting.

    refusal: the answer an unsafe-flagged answer should have been, for flags without a correction
    (e.g. "I can't help with that."); None leaves such a flag a dislike only.
    """
    if refusal is not None and not refusal.strip():
        raise FeedbackError("the refusal for flagged answers is empty; give the text a refusal should say")
    if format not in FORMATS:
        from posttrain.errors import did_you_mean

        raise FeedbackError(f"format '{format}' is unknown{did_you_mean(format, FORMATS)}; use one of: {', '.join(FORMATS)}")
    result = Export(format, judgements=len(judgements))
    reasons: dict[int, str] = {}  # why a judgement gave no row, should it give none
    used: set[int] = set()
    votes = _votes(judgements, reasons, refusal)
    disliked = {v.key for v in votes if not v.liked}
    if format in ("thumbs", "kto"):
        said: set[tuple] = set()  # (user, answer, liked): a person saying the same thing twice counts once
        for v in votes:
            if v.liked and v.key in disliked:
                reasons.setdefault(v.judgement, "disliked_elsewhere")
                continue
            if (v.user, v.key, v.liked) in said:
                reasons.setdefault(v.judgement, "same_vote_again")
                continue
            said.add((v.user, v.key, v.liked))
            used.add(v.judgement)
            result.origins.append(v.judgement)
            row = {"prompt": v.conversation, "completion": _assistant(v.text)}
            if format == "thumbs":
                row.update(rating="up" if v.liked else "down", user=v.user, timestamp=v.timestamp)
            else:
                row["label"] = v.liked
            result.rows.append(row)
    else:
        pairs = _pairs(judgements, votes, disliked, reasons, used, max_pairs_per_prompt, refusal)
        for conversation, chosen, rejected in pairs:
            if format == "pairs":
                result.rows.append({"prompt": conversation, "chosen": _assistant(chosen), "rejected": _assistant(rejected)})
            else:
                result.rows.append({"input": {"messages": conversation}, "preferred_output": _assistant(chosen),
                                    "non_preferred_output": _assistant(rejected)})
    result.used = len(used)
    for i in range(len(judgements)):
        if i not in used:
            result.skipped_judgements[i] = reasons.get(i, "no_opposite_vote")
            result.skipped[result.skipped_judgements[i]] += 1
    return result


def _pairs(judgements, votes, disliked, reasons, used, cap, refusal) -> list[tuple[list[dict], str, str]]:
    candidates: dict[str, list[tuple]] = defaultdict(list)  # conversation -> (conversation, chosen, rejected), in order
    sources: dict[tuple, set[int]] = {}  # (conversation, chosen, rejected) -> the judgements that state or imply it

    def offer(conversation, chosen, rejected, from_judgements: set[int]):
        key = (_key(conversation, chosen), rejected)
        if key not in sources:
            sources[key] = set()
            candidates[key[0][0]].append((conversation, chosen, rejected, key))
        sources[key] |= from_judgements  # the same pair again: one row

    for conversation, chosen, rejected, i in _explicit_pairs(judgements, reasons, refusal):
        if _key(conversation, chosen) in disliked:  # e.g. a correction that someone else flagged
            reasons[i] = "chosen_disliked"
            continue
        offer(conversation, chosen, rejected, {i})  # first: the cap keeps explicit preferences
    # Votes: every liked answer against every disliked one to the same conversation.
    voters: dict[tuple, set[int]] = defaultdict(set)
    for v in votes:
        voters[v.key].add(v.judgement)
        if v.liked and v.key in disliked:
            reasons.setdefault(v.judgement, "disliked_elsewhere")
    liked = {v.key: v for v in votes if v.liked and v.key not in disliked}
    rejected_votes = {v.key: v for v in votes if not v.liked}
    for up in liked.values():
        for down in rejected_votes.values():
            if up.key[0] == down.key[0]:
                offer(up.conversation, up.text, down.text, voters[up.key] | voters[down.key])
    rows = []
    for pairs in candidates.values():
        for n, (conversation, chosen, rejected, key) in enumerate(pairs):
            if n >= cap:
                for i in sources[key]:
                    reasons.setdefault(i, "over_pair_cap")
                continue
            rows.append((conversation, chosen, rejected))
            used.update(sources[key])
    return rows


def to_jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(rows: list[dict], path: Path) -> None:
    """One JSON object a line, written atomically (a reader never sees half a file)."""
    write_text_atomic(Path(path), to_jsonl_text(rows))

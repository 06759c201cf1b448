"""Feedback logs of other chat front ends -> judgements in a feedback store.

- Open WebUI's feedback export (Admin Panel > Evaluations > Export: a JSON list): items of
  `type: "rating"` whose `data.rating` is 1 or -1 rate the assistant message `meta.message_id`;
  the conversation is that message's branch of `snapshot.chat.chat.history.messages` (a tree
  linked by `parentId`), from the root to the user's turn it answers.
- Chatbot Arena / FastChat vote logs (JSON lines): `leftvote`, `rightvote`, `tievote` and
  `bothbad_vote` rows with both sides' conversations in `states` (`messages` as [role, text]
  after `offset`; the system message is not carried, as FastChat's own cleaning leaves it out).

Every item is imported or skipped with one reason; nothing is silently lost. People stay
pseudonymous: a source's user id or IP address is stored only as a hash. Each item's event id
derives from its content (Open WebUI: its id), so importing the same file twice stores nothing new.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from posttrain.feedback.store import Answer, FeedbackError, FeedbackStore, Judgement, now

SOURCES = ("openwebui", "arena")
ARENA_VOTES = {"leftvote": "a", "rightvote": "b", "tievote": "tie", "bothbad_vote": "both_bad"}


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


@dataclass
class Imported:
    """What an import did with every item of the file."""

    source: str
    path: Path
    items: int = 0
    imported: int = 0
    already: int = 0  # in the store from an earlier import
    skipped: Counter = field(default_factory=Counter)

    def line(self, store: Path | str) -> str:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
        return (f"read {self.items} items from {self.path} ({self.source}): imported {self.imported} into {store}, "
                f"already there {self.already}, skipped {sum(self.skipped.values())}" + (f" ({skipped})" if skipped else ""))


def pseudonym(source: str, value) -> str:
    return f"{source}:{hashlib.sha256(str(value).encode()).hexdigest()[:12]}" if value not in (None, "") else f"{source}:unknown"


def _timestamp(value) -> str | None:
    if isinstance(value, (int, float)) and value > 0:
        seconds = value / 1000 if value > 1e11 else value  # milliseconds in some fields
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
    return None


def _read_items(path: Path, source: str) -> list:
    """Every item: of a JSON list, or of JSON lines (a malformed line is an item to skip)."""
    if not path.is_file():
        raise FeedbackError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FeedbackError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); export the log again") from None
    lines = path.suffix in (".jsonl", ".ndjson")
    if text.lstrip().startswith("[") or (source == "openwebui" and not lines):  # a JSON list (Open WebUI exports one)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise FeedbackError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
        if not isinstance(items, list):
            raise FeedbackError(f"{path}: expected a JSON list of feedback items (Open WebUI: Admin Panel > Evaluations > Export)")
        if not items:
            raise FeedbackError(f"{path}: the file holds no items")
        return items
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append(_Skip("malformed_json"))
    if not out:
        raise FeedbackError(f"{path}: the file holds no items")
    return out


def import_file(path: Path | str, source: str, store_path: Path | str) -> Imported:
    """Read `path` as `source` (openwebui | arena) and add its judgements to the store at `store_path`
    (created when missing, and only once the file has been read)."""
    if source not in SOURCES:
        from posttrain.errors import did_you_mean

        raise FeedbackError(f"--from '{source}' is unknown{did_you_mean(source, SOURCES)}; use one of: {', '.join(SOURCES)}")
    path = Path(path)
    result = Imported(source, path)
    convert = _openwebui if source == "openwebui" else _arena
    judgements = []
    items = _read_items(path, source)
    store = FeedbackStore(store_path)
    for item in items:
        result.items += 1
        try:
            if isinstance(item, _Skip):
                raise item
            if not isinstance(item, dict):
                raise _Skip("not_an_object")
            judgements.append(convert(item))
        except _Skip as skip:
            result.skipped[skip.reason] += 1
        except FeedbackError:  # a conversation or answer the store would not take: empty texts, odd roles
            result.skipped["invalid_conversation"] += 1
    for _, new in store.add_many(judgements):  # one transaction: an import is stored whole or not at all
        if new:
            result.imported += 1
        else:
            result.already += 1
    return result


# -- Open WebUI -------------------------------------------------------------------


def _history(item: dict) -> dict:
    snapshot = item.get("snapshot") if isinstance(item.get("snapshot"), dict) else {}
    chat = snapshot.get("chat") if isinstance(snapshot.get("chat"), dict) else {}
    # The export nests the chat record's own `chat` object; accept the flatter shapes too.
    for holder in (chat.get("chat"), chat, snapshot):
        if isinstance(holder, dict) and isinstance(holder.get("history"), dict):
            messages = holder["history"].get("messages")
            if isinstance(messages, list):
                messages = {m.get("id"): m for m in messages if isinstance(m, dict)}
            if isinstance(messages, dict) and messages:
                return messages
    raise _Skip("no_conversation")


def _openwebui(item: dict) -> Judgement:
    if item.get("type") != "rating":
        raise _Skip("not_a_rating")
    data = item.get("data") if isinstance(item.get("data"), dict) else {}
    try:
        rating = int(data.get("rating"))
    except (TypeError, ValueError):
        raise _Skip("no_rating") from None
    if rating not in (1, -1):
        raise _Skip("no_rating")
    messages = _history(item)
    meta = item.get("meta") if isinstance(item.get("meta"), dict) else {}
    rated = messages.get(meta.get("message_id"))
    if not isinstance(rated, dict):
        raise _Skip("message_not_found")
    if rated.get("role") != "assistant" or not isinstance(rated.get("content"), str) or not rated["content"].strip():
        raise _Skip("not_an_answer")
    branch, seen = [], {rated.get("id")}
    parent = messages.get(rated.get("parentId"))
    while isinstance(parent, dict):
        branch.append({"role": parent.get("role"), "content": parent.get("content")})
        if parent.get("parentId") in seen:
            raise _Skip("no_conversation")  # a cycle: not a conversation
        seen.add(parent.get("id"))
        parent = messages.get(parent.get("parentId"))
    if not branch:
        raise _Skip("no_question")
    model = data.get("model_id") or meta.get("model_id") or rated.get("model")
    answer = Answer(branch[::-1], rated["content"], model=model, sampling={})
    comment = data.get("comment") or data.get("reason") or None
    return Judgement("rating", answer, rating=rating, comment=comment if isinstance(comment, str) else None,
                     user_id=pseudonym("openwebui", item.get("user_id")), source="import:openwebui",
                     created_at=_timestamp(item.get("created_at")) or _timestamp(item.get("updated_at")) or now(),
                     event_id=f"openwebui:{item['id']}" if item.get("id") else _content_id("openwebui", item))


# -- Chatbot Arena / FastChat -------------------------------------------------------


def _content_id(source: str, item: dict) -> str:
    return f"{source}:" + hashlib.sha256(json.dumps(item, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def _side(state, model) -> Answer:
    if not isinstance(state, dict) or not isinstance(state.get("messages"), list):
        raise _Skip("missing_states")
    offset = state.get("offset") if isinstance(state.get("offset"), int) else 0
    roles = state.get("roles") if isinstance(state.get("roles"), list) and len(state["roles"]) >= 2 else None
    turns = []
    for n, message in enumerate(state["messages"][offset:]):
        if not isinstance(message, (list, tuple)) or len(message) != 2:
            raise _Skip("missing_states")
        role, text = message
        if roles and role in roles[:2]:
            role = "user" if role == roles[0] else "assistant"
        else:
            role = "user" if n % 2 == 0 else "assistant"
        turns.append({"role": role, "content": text})
    if not turns or turns[-1]["role"] != "assistant" or not isinstance(turns[-1]["content"], str) or not turns[-1]["content"].strip():
        raise _Skip("unanswered")  # a vote cast before the answer finished, or on an empty one
    return Answer(turns[:-1], turns[-1]["content"], model=state.get("model_name") or model or None, sampling={})


def _arena(item: dict) -> Judgement:
    choice = ARENA_VOTES.get(item.get("type"))
    if choice is None:
        raise _Skip("not_an_arena_vote")
    states = item.get("states")
    if not isinstance(states, list) or len(states) != 2:
        raise _Skip("missing_states")
    models = item.get("models") if isinstance(item.get("models"), list) and len(item["models"]) == 2 else [None, None]
    a, b = (_side(state, model) for state, model in zip(states, models))
    return Judgement("arena", a, other=b, choice=choice, user_id=pseudonym("arena", item.get("ip")), source="import:arena",
                     created_at=_timestamp(item.get("tstamp")) or now(), event_id=_content_id("arena", item))

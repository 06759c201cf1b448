"""Step 3, units (3/4): OpenAssistant message trees become one `Vote` unit per assistant reply.

The accounting unit is the assistant message: each one is used or dropped with a reason.
Prompter messages are conversation context, not rows. Rules:
- a reply's prompt is the path from the root (prompter -> user, assistant -> assistant);
- its votes are its `+1` / `-1` emoji counts, its rank is `rank` (0 = best) among the
  replies to the same parent;
- a deleted message, or one that failed review (`review_result: false`), is dropped with
  everything below it (`deleted` / `failed_review`, one per assistant message);
- a message whose `message_id` was read before (an export that repeats a tree) counts once:
  its first copy is used, a repeated assistant message drops as `duplicate_message`, so its
  votes are not counted twice.

Both shapes are read: exported trees (`{"message_tree_id", "prompt": MESSAGE}`, replies
nested) and flat message rows linked by `parent_id` (the Hub's oasst1/oasst2 layout).
"""

from __future__ import annotations

from typing import Callable, Iterator

from posttrain.data import fields as f
from posttrain.data.sources import RowError
from posttrain.data.units import Dropped, Vote

_LOCATION = "__location__"  # where a flat row came from, kept on its node
Locate = Callable[[dict, str], tuple[str, str]]  # (node, path) -> (location, field prefix)


DUPLICATE = "duplicate_message"


def tree_units(row: dict, location: str, on_error: str, seen: set | None = None) -> list[Vote | Dropped]:
    """One exported tree (one JSONL line); `seen`: the message ids read so far in this source."""
    if isinstance(row.get("prompt"), dict) or "message_id" not in row:
        root, path = f.require(row, "prompt", location), "prompt"
    else:
        root, path = row, "message"
    if not isinstance(root, dict):
        raise RowError(location, f"must be the root message object, got {type(root).__name__}", "wrong_type", path)
    return _walk(root, path, lambda node, p: (location, f"{p}."), on_error, set() if seen is None else seen)


def flat_units(rows: list[tuple[dict, str]], on_error: str) -> tuple[list[Vote | Dropped], int]:
    """Message rows linked by parent_id, in file order; and how many rows repeat a message id read before."""
    nodes, out, repeated = {}, [], 0
    for row, location in rows:
        message_id = f.require(row, "message_id", location)
        if message_id in nodes:  # the first copy is used; a repeated assistant message is still one row
            repeated += 1
            if str(row.get("role", "")).lower() == "assistant":
                out.append(Dropped(f"{location} message {message_id}", DUPLICATE))
            continue
        nodes[message_id] = {**row, "replies": [], _LOCATION: location}
    roots = []
    for node in nodes.values():
        parent_id = node.get("parent_id")
        if parent_id is None:
            roots.append(node)
        elif parent_id in nodes:
            nodes[parent_id]["replies"].append(node)
        else:
            error = RowError(node[_LOCATION], f"is '{parent_id}', which is not a message in this file", "orphan_message", "parent_id")
            if on_error != "skip":
                raise error
            out += _drop_subtree(node, node[_LOCATION], error.reason, str(error))
    for root in roots:
        out += _walk(root, "", lambda node, p: (node[_LOCATION], ""), on_error, set())
    return out, repeated


def _walk(root: dict, root_path: str, locate: Locate, on_error: str, seen: set) -> list[Vote | Dropped]:
    out: list[Vote | Dropped] = []
    stack = [(root, root_path, None, ())]  # (node, field path, parent id, conversation so far)
    while stack:
        node, path, parent_id, conversation = stack.pop()
        location, prefix = locate(node, path)
        try:
            role, text, replies = _read_node(node, location, prefix)
        except RowError as e:
            if on_error != "skip":
                raise
            out += _drop_subtree(node, location, e.reason, str(e))
            continue
        where = f"{location} message {node.get('message_id', path)}"
        # The same id with the same text in the same conversation: a copy, not a second message
        # (hand-written trees may reuse short ids such as "a1" in different conversations).
        identity = None if node.get("message_id") is None else (str(node["message_id"]), role, text, tuple((m["role"], m["content"]) for m in conversation))
        repeated = identity is not None and identity in seen
        if identity is not None:
            seen.add(identity)
        unusable = "deleted" if node.get("deleted") is True else "failed_review" if node.get("review_result") is False else None
        if unusable:
            out += _drop_subtree(node, where, unusable, at_least=0)
            continue
        if role == "assistant" and repeated:
            out.append(Dropped(where, DUPLICATE))  # counted once: its first copy carries its votes
        elif role == "assistant":
            if not any(m["role"] == "user" for m in conversation):
                raise RowError(location, "is an assistant reply with no prompter message before it", "bad_value", f"{prefix}role")
            up, down = _votes(node, location, prefix)
            out.append(Vote(where, [dict(m) for m in conversation], response=text, up=up, down=down,
                            rank=_rank(node, location, prefix), rank_group=str(parent_id)))
        turn = ({"role": role, "content": text},)
        for i in reversed(range(len(replies))):  # reversed on a stack: replies come out in file order
            stack.append((replies[i], f"{path}.replies[{i}]" if path else "", node.get("message_id"), conversation + turn))
    return out


def _read_node(node, location: str, prefix: str) -> tuple[str, str, list]:
    if not isinstance(node, dict):
        raise RowError(location, f"must be a message object, got {type(node).__name__}", "wrong_type", prefix.rstrip(".") or "message")
    raw_role = _required(node, "role", location, prefix)
    role = f.ROLE_ALIASES.get(str(raw_role).lower())
    if role not in ("user", "assistant"):
        raise RowError(location, f"is '{raw_role}'; use prompter or assistant", "bad_value", f"{prefix}role")
    text = f.text(_required(node, "text", location, prefix), location, f"{prefix}text")
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RowError(location, f"must be a list of messages, got {type(replies).__name__}", "wrong_type", f"{prefix}replies")
    return role, text, replies


def _required(node: dict, key: str, location: str, prefix: str):
    if node.get(key) is None:
        raise f.missing(location, f"{prefix}{key}")
    return node[key]


def _emoji_counts(node: dict) -> dict:
    """Emoji name -> count, from {"+1": 3} or the Hub's {"name": [...], "count": [...]} (null -> {})."""
    emojis = node.get("emojis") or {}
    if isinstance(emojis, dict) and isinstance(emojis.get("name"), list) and isinstance(emojis.get("count"), list):
        if len(emojis["name"]) != len(emojis["count"]):
            return {"__invalid__": emojis}
        return dict(zip(emojis["name"], emojis["count"], strict=True))
    return emojis if isinstance(emojis, dict) else {"__invalid__": emojis}


def _votes(node: dict, location: str, prefix: str) -> tuple[int, int]:
    """(+1 count, -1 count) of a message."""
    counts = _emoji_counts(node)
    out = []
    for name in ("+1", "-1"):
        value = counts.get(name, 0)
        if "__invalid__" in counts or isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RowError(location, f"must map emoji names to counts, e.g. {{\"+1\": 2}}; got {node.get('emojis')!r}", "wrong_type", f"{prefix}emojis")
        out.append(value)
    return out[0], out[1]


def _rank(node: dict, location: str, prefix: str) -> float | None:
    value = node.get("rank")
    return None if value is None else f.score(value, location, f"{prefix}rank")


def _drop_subtree(node, location: str, reason: str, message: str | None = None, at_least: int = 1) -> list[Dropped]:
    """Every assistant reply at or below `node` is dropped; an error counts at least one row, so it never vanishes."""
    count = max(at_least, sum(1 for m in _messages_at_or_below(node) if str(m.get("role", "")).lower() == "assistant"))
    return [Dropped(location, reason, message if i == 0 else None) for i in range(count)]


def _messages_at_or_below(root) -> Iterator[dict]:
    """Every message object in a tree, root first (tolerant: skips anything that is not a dict)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            yield node
            replies = node.get("replies")
            if isinstance(replies, list):
                stack.extend(reversed(replies))

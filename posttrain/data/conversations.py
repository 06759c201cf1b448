"""Step 3, units (4/4): every row of a source becomes conversation units, in its detected format.

One reader per flat format turns a row into units (usually one); OpenAssistant trees go
to `posttrain.data.oasst` (flat exports link rows by id, so they are read once all rows are
in). With on_error="fail" the first bad row raises a one-line `RowError` naming location and
field; with "skip" it becomes a `Dropped` entry carrying its reason and message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from posttrain.data import fields as f
from posttrain.data.formats import FORMATS, LABEL_FIELD, THUMBS_FIELDS, demonstration_shape, detect, format_for_row, main_format
from posttrain.data.oasst import flat_units, tree_units
from posttrain.data.options import DataOptions
from posttrain.data.sources import RowError, location_of
from posttrain.data.units import Demo, Dropped, Pair, Rated, Unit, Vote


@dataclass
class Conversations:
    """What a source's rows hold: usable units, rows that cannot be used, and the formats seen."""

    units: list[Unit] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)  # unreadable, invalid (on_error: skip), deleted
    formats: Counter = field(default_factory=Counter)  # format -> input rows (lines)


def conversation_units(rows: list[dict], source: str, options: DataOptions) -> Conversations:
    """Every row becomes units (usually one; an OpenAssistant tree one per assistant reply)."""
    out = Conversations(dropped=[Dropped(loc, reason, message) for loc, reason, message in getattr(rows, "skipped", [])])
    located = [(row, location_of(row, source, i)) for i, row in enumerate(rows, start=1)]
    detected = [detect(row) if isinstance(row, dict) else None for row, _ in located]
    main = main_format(detected)
    flat_oasst = []
    for (row, location), found in zip(located, detected):
        chosen = format_for_row(found, main, options.format)
        try:
            if not isinstance(row, dict):
                raise RowError(location, f"expected an object per row, got {type(row).__name__}", "not_an_object")
            if chosen is None:
                raise _undetectable(row, location)
            if chosen == "oasst" and _is_flat_oasst(row):
                flat_oasst.append((row, location))  # linked by id: read once all rows are in
                out.formats[chosen] += 1
                continue
            items = tree_units(row, location, options.on_error) if chosen == "oasst" else READERS[chosen](row, location)
        except RowError as e:
            if options.on_error != "skip":
                raise
            items = [Dropped(location, e.reason, str(e))]
        out.formats[chosen or "unknown"] += 1
        _collect(out, items)
    if flat_oasst:
        _collect(out, flat_units(flat_oasst, options.on_error))
    return out


def _collect(out: Conversations, items) -> None:
    for item in items:
        (out.dropped if isinstance(item, Dropped) else out.units).append(item)


def _is_flat_oasst(row: dict) -> bool:
    return "message_id" in row and "message_tree_id" not in row and not isinstance(row.get("prompt"), dict) and "replies" not in row


def _undetectable(row: dict, location: str) -> RowError:
    known = "; ".join(f"{name} ({keys})" for name, (keys, _) in FORMATS.items())
    found = ", ".join(sorted(map(str, row.keys()))) or "none"
    return RowError(location, f"cannot detect the data format from the fields ({found}); known formats: {known}. "
                              f"Rename the fields or set format explicitly", "unknown_format")


# ---- one reader per flat format: (row, location) -> units ---------------------------------------


def _prompt_of(row: dict, location: str) -> list[dict]:
    """The conversation before the reply: `prompt` (text or messages) or `messages`."""
    for key in ("prompt", "messages"):
        if row.get(key) is not None:
            return f.prompt(row[key], location, key)
    raise f.missing(location, "prompt", "or 'messages'")


def _reply_field(row: dict) -> str:
    return "response" if row.get("response") is not None or "completion" not in row else "completion"


def read_messages(row: dict, location: str) -> list[Unit]:
    conversation = f.messages(f.require(row, "messages", location), location, "messages")
    return [_demo_from_conversation(conversation, location, "messages")]


def _demo_from_conversation(conversation: list[dict], location: str, field: str) -> Demo:
    if conversation[-1]["role"] != "assistant":
        raise RowError(location, "must end with the assistant's reply to learn", "bad_value", field)
    if not any(m["role"] == "user" for m in conversation[:-1]):
        raise RowError(location, "needs a user turn before the assistant's reply", "bad_value", field)
    return Demo(location, conversation[:-1], completion=conversation[-1:])


def read_alpaca(row: dict, location: str) -> list[Unit]:
    instruction = f.text(f.require(row, "instruction", location), location, "instruction")
    extra = row.get("input")
    extra = f.text(extra, location, "input") if extra is not None else ""
    output = f.text(f.require(row, "output", location), location, "output")
    prompt = [{"role": "user", "content": instruction + (f"\n\n{extra}" if extra.strip() else "")}]
    if isinstance(row.get("system"), str) and row["system"].strip():
        prompt.insert(0, {"role": "system", "content": row["system"]})
    return [Demo(location, prompt, completion=[{"role": "assistant", "content": output}])]


def read_sharegpt(row: dict, location: str) -> list[Unit]:
    turns = f.require(row, "conversations", location)
    keys = ("role", "content") if turns and isinstance(turns, list) and isinstance(turns[0], dict) and "role" in turns[0] else ("from", "value")
    conversation = f.messages(turns, location, "conversations", *keys)
    if isinstance(row.get("system"), str) and row["system"].strip() and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": row["system"]})
    return [_demo_from_conversation(conversation, location, "conversations")]


def read_prompt_completion(row: dict, location: str) -> list[Unit]:
    key = _reply_field(row)
    completion = f.reply(f.require(row, key, location, "or 'completion'" if key == "response" else ""), location, key)
    return [Demo(location, _prompt_of(row, location), completion=completion)]


def read_preference(row: dict, location: str) -> list[Unit]:
    chosen_raw, rejected_raw = f.require(row, "chosen", location), f.require(row, "rejected", location)
    if f.is_messages(chosen_raw) and f.is_messages(rejected_raw) and str(chosen_raw[0].get("role")).lower() != "assistant":
        # Full conversations (as in ultrafeedback_binarized): the shared part is the prompt.
        prompt, chosen, rejected = f.split_shared_prompt(f.messages(chosen_raw, location, "chosen"), f.messages(rejected_raw, location, "rejected"), location)
        return [Pair(location, prompt, chosen=chosen, rejected=rejected)]
    return [Pair(location, f.prompt(f.require(row, "prompt", location), location),
                 chosen=f.reply(chosen_raw, location, "chosen"), rejected=f.reply(rejected_raw, location, "rejected"))]


def read_hh(row: dict, location: str) -> list[Unit]:
    chosen = f.hh_transcript(f.require(row, "chosen", location), location, "chosen")
    rejected = f.hh_transcript(f.require(row, "rejected", location), location, "rejected")
    prompt, chosen, rejected = f.split_shared_prompt(chosen, rejected, location)
    return [Pair(location, prompt, chosen=chosen, rejected=rejected)]


_SCORE_KEYS = ("score", "overall_score", "fine-grained_score", "rating")
_RESPONSE_KEYS = ("response", "text", "completion", "content")


def read_rated(row: dict, location: str) -> list[Unit]:
    if row.get("prompt") is None and row.get("messages") is None and row.get("instruction") is not None:
        prompt = f.prompt(row["instruction"], location, "instruction")
    else:
        prompt = _prompt_of(row, location)
    if row.get("completions") is None:
        responses, scores = f.require(row, "responses", location, "or 'completions'"), f.require(row, "scores", location)
        if not isinstance(responses, list) or not isinstance(scores, list) or len(responses) != len(scores):
            raise RowError(location, "and 'scores' must be lists of the same length", "wrong_type", "responses")
        scored = [(f.text(r, location, f"responses[{i}]"), f.score(s, location, f"scores[{i}]")) for i, (r, s) in enumerate(zip(responses, scores))]
    else:
        completions = row["completions"]
        if not isinstance(completions, list) or not completions:
            raise RowError(location, "must be a non-empty list of {response, score}", "wrong_type", "completions")
        scored = [_scored_completion(c, location, f"completions[{i}]") for i, c in enumerate(completions)]
    return [Rated(location, prompt, scored=scored)]


def _scored_completion(item, location: str, field: str) -> tuple[str, float]:
    if not isinstance(item, dict):
        raise RowError(location, f"must be an object with a response and a score, got {type(item).__name__}", "wrong_type", field)
    response_key = next((k for k in _RESPONSE_KEYS if k in item), None)
    score_key = next((k for k in _SCORE_KEYS if item.get(k) is not None), None)
    if response_key is None:
        raise f.missing(location, f"{field}.response")
    if score_key is None:
        raise f.missing(location, f"{field}.score", f"or {', '.join(_SCORE_KEYS[1:])}")
    return f.text(item[response_key], location, f"{field}.{response_key}"), f.score(item[score_key], location, f"{field}.{score_key}")


def _vote(row: dict, location: str, vote_fields: tuple[str, ...]) -> list[Unit]:
    """A feedback row: the reply it rates (a prompt and a response, or the last assistant turn of
    a chat-shaped row), and its vote from the first of `vote_fields` it has."""
    shape = demonstration_shape(row)
    rated = READERS[shape if shape in ("messages", "sharegpt", "alpaca") else "prompt_completion"](row, location)[0]
    if len(rated.completion) != 1:
        raise RowError(location, "must be a single assistant reply", "bad_value", _reply_field(row))
    vote_field = next((k for k in vote_fields if row.get(k) is not None), vote_fields[0])
    liked = f.rating(f.require(row, vote_field, location), location, vote_field)
    voter = next((row[k] for k in ("user", "user_id", "session", "session_id") if row.get(k) is not None), None)
    return [Vote(location, rated.prompt, response=rated.completion[0]["content"], up=int(liked), down=int(not liked),
                 user=None if voter is None else str(voter), timestamp=row.get("timestamp"))]


def read_thumbs(row: dict, location: str) -> list[Unit]:
    return _vote(row, location, THUMBS_FIELDS)


def read_binary(row: dict, location: str) -> list[Unit]:
    return _vote(row, location, (LABEL_FIELD,))


READERS: dict[str, Callable[[dict, str], list[Unit]]] = {
    "messages": read_messages, "alpaca": read_alpaca, "sharegpt": read_sharegpt,
    "prompt_completion": read_prompt_completion, "preference": read_preference, "hh": read_hh,
    "rated": read_rated, "binary": read_binary, "thumbs": read_thumbs,
}  # oasst needs the whole file (flat exports link rows by id): see posttrain.data.oasst

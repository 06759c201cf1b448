"""Step 3, units (4/4): every row of a source becomes conversation units, in its detected format.

First the `columns` option renames the user's columns to the fields posttrain reads. Then one
reader per flat format turns a row into units (usually one; a self-instruct task one per
instance); OpenAssistant trees go to `posttrain.data.oasst` (flat exports link rows by id, so
they are read once all rows are in). With on_error="fail" the first bad row raises a one-line
`RowError` naming location and field; with "skip" it becomes a `Dropped` entry carrying its
reason and message. A conversation that calls tools is dropped as `tool_calls_unsupported`
either way: it is valid data posttrain does not train on yet.

Consecutive turns of one role (two assistant turns in a row in an HH transcript) are merged
into one turn, so every conversation alternates as chat templates require; the rows this
touched are counted in `details["merged_same_role_turns"]`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from posttrain.data import fields as f
from posttrain.data.formats import (FORMATS, LABEL_FIELD, THUMBS_FIELDS, VOTE_FIELDS, demonstration_shape, detect, feedback_like,
                                    format_for_row, main_format)
from posttrain.data.oasst import flat_units, tree_units
from posttrain.data.options import DataOptions
from posttrain.data.sources import Row, RowError, location_of
from posttrain.data.units import Demo, Dropped, Pair, Rated, Unit, Vote
from posttrain.errors import DataError

# Reasons a row drops even with on_error: fail: valid data that posttrain does not train on.
ALWAYS_DROPPED = frozenset({f.TOOL_CALLS, f.WEIGHT_ZERO})


@dataclass
class Conversations:
    """What a source's rows hold: usable units, rows that cannot be used, and the formats seen."""

    units: list[Unit] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)  # unreadable, invalid (on_error: skip), deleted
    formats: Counter = field(default_factory=Counter)  # format -> input rows (lines)
    details: dict = field(default_factory=dict)  # facts for the accounting: merged turns, pooled duplicates


def conversation_units(rows: list[dict], source: str, options: DataOptions) -> Conversations:
    """Every row becomes units (usually one; an OpenAssistant tree one per assistant reply)."""
    out = Conversations(dropped=[Dropped(loc, reason, message) for loc, reason, message in getattr(rows, "skipped", [])])
    located = [(row, location_of(row, source, i)) for i, row in enumerate(rows, start=1)]
    located = map_columns(located, options.columns, source)
    detected = [detect(row) if isinstance(row, dict) else None for row, _ in located]
    main = main_format(detected)
    flat_oasst, seen_messages, seen_trees = [], set(), set()
    merged_rows = repeated = 0
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
            if chosen == "oasst":
                tree_id = row.get("message_tree_id")
                if isinstance(tree_id, (str, int)):
                    repeated += tree_id in seen_trees
                    seen_trees.add(tree_id)
                items = tree_units(row, location, options.on_error, seen_messages)
            else:
                items = READERS[chosen](row, location)
        except RowError as e:
            if options.on_error != "skip" and e.reason not in ALWAYS_DROPPED:
                raise
            items = [Dropped(location, e.reason, str(e) if i == 0 else None) for i in range(_rows_in(row))]
        out.formats[chosen or "unknown"] += 1
        merged_rows += any(getattr(item, "merged_turns", 0) for item in items)
        _collect(out, items)
    if flat_oasst:
        items, repeated_rows = flat_units(flat_oasst, options.on_error)
        repeated += repeated_rows
        _collect(out, items)
    if merged_rows:
        out.details["merged_same_role_turns"] = merged_rows
    if repeated:
        out.details["duplicate_records_pooled"] = repeated
    return out


def _rows_in(row) -> int:
    """How many accounting rows a record stands for when it cannot be read: a self-instruct task one per instance."""
    instances = row.get("instances") if isinstance(row, dict) and demonstration_shape(row) == "self_instruct" else None
    return len(instances) if isinstance(instances, list) and instances else 1


def _collect(out: Conversations, items) -> None:
    for item in items:
        (out.dropped if isinstance(item, Dropped) else out.units).append(item)


# ---- columns: the user's names -> the fields posttrain reads --------------------------------------


def map_columns(located: list[tuple[dict, str]], columns: dict[str, str], source: str) -> list[tuple[dict, str]]:
    """Each row with `columns` applied ({field: your_column}): the field takes the column's value;
    the column's own name, and a column already named like the field, are left out (the mapping
    says which one is meant). A mapped column that no row has is an error: a typo, not data."""
    if not columns:
        return located
    present = set().union(*(row.keys() for row, _ in located if isinstance(row, dict)))
    for target, column in columns.items():
        if located and column not in present:
            seen = ", ".join(sorted(map(str, present))) or "none"
            raise DataError(f"{source}: columns reads the column '{column}' as '{target}', but no row has a column '{column}'; "
                            f"the rows' columns: {seen}")
    out = []
    for row, location in located:
        if isinstance(row, dict):
            mapped = {k: v for k, v in row.items() if k not in columns and k not in columns.values()}
            mapped.update({target: row[column] for target, column in columns.items() if column in row})
            row = Row(mapped, location)
        out.append((row, location))
    return out


def _is_flat_oasst(row: dict) -> bool:
    """A message row of the Hub's oasst1/oasst2 layout (it names its tree too), not an exported tree."""
    return "message_id" in row and not isinstance(row.get("prompt"), dict) and "replies" not in row


def _undetectable(row: dict, location: str) -> RowError:
    known = "; ".join(f"{name} ({keys})" for name, (keys, _) in FORMATS.items())
    found = ", ".join(sorted(map(str, row.keys()))) or "none"
    return RowError(location, f"cannot detect the data format from the fields ({found}); known formats: {known}. "
                              f"Rename the fields, map them with columns (e.g. columns: {{prompt: question, response: answer}}), "
                              f"or set format explicitly", "unknown_format")


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
    raw = f.trained_turns(f.require(row, "messages", location), location, "messages")
    conversation = f.messages(raw, location, "messages")
    return [_demo_from_conversation(conversation, location, "messages")]


def _demo_from_conversation(conversation: list[dict], location: str, field: str) -> Demo:
    conversation, merged = f.merge_same_role(conversation)  # two assistant turns in a row are one reply
    if conversation[-1]["role"] != "assistant":
        raise RowError(location, "must end with the assistant's reply to learn", "bad_value", field)
    if not any(m["role"] == "user" for m in conversation[:-1]):
        raise RowError(location, "needs a user turn before the assistant's reply", "bad_value", field)
    return Demo(location, conversation[:-1], completion=conversation[-1:], merged_turns=merged)


def _instruction_demo(row: dict, location: str, source: dict, input_key: str, output_key: str, prefix: str = "") -> Demo:
    """An instruction, an optional input (Alpaca `input`, Dolly `context`) and the reply: prompt =
    instruction + blank line + input. Only these fields are read: `category` and the like stay out."""
    instruction = f.text(f.require(row, "instruction", location), location, "instruction")
    extra = source.get(input_key)
    extra = f.text(extra, location, prefix + input_key) if extra is not None else ""
    if source.get(output_key) is None:
        raise f.missing(location, prefix + output_key)
    output = f.text(source[output_key], location, prefix + output_key)
    prompt = [{"role": "user", "content": instruction + (f"\n\n{extra}" if extra.strip() else "")}]
    if isinstance(row.get("system"), str) and row["system"].strip():
        prompt.insert(0, {"role": "system", "content": row["system"]})
    return Demo(location, prompt, completion=[{"role": "assistant", "content": output}])


def read_alpaca(row: dict, location: str) -> list[Unit]:
    return [_instruction_demo(row, location, row, "input", "output")]


def read_dolly(row: dict, location: str) -> list[Unit]:
    """databricks-dolly-15k: instruction, context (the input, often empty), response; category is not read."""
    return [_instruction_demo(row, location, row, "context", "response")]


def read_self_instruct(row: dict, location: str) -> list[Unit]:
    """A self-instruct seed task: one demonstration per instance (instruction + input -> output)."""
    instances = f.require(row, "instances", location)
    if not isinstance(instances, list) or not instances:
        raise RowError(location, "must be a non-empty list of {input, output}", "wrong_type", "instances")
    units = []
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RowError(location, f"must be an object with 'input' and 'output', got {type(instance).__name__}", "wrong_type", f"instances[{i}]")
        demo = _instruction_demo(row, location, instance, "input", "output", f"instances[{i}].")
        demo.location = f"{location} instances[{i}]"
        units.append(demo)
    return units


def read_sharegpt(row: dict, location: str) -> list[Unit]:
    turns = f.require(row, "conversations", location)
    keys = ("role", "content") if turns and isinstance(turns, list) and isinstance(turns[0], dict) and "role" in turns[0] else ("from", "value")
    conversation = f.messages(turns, location, "conversations", *keys)
    if isinstance(row.get("system"), str) and row["system"].strip() and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": row["system"]})
    return [_demo_from_conversation(conversation, location, "conversations")]


def _merged(*conversations: list[dict]) -> tuple[list[list[dict]], int]:
    """Each conversation with consecutive same-role turns merged, and the number of turns merged in all."""
    results = [f.merge_same_role(c) for c in conversations]
    return [c for c, _ in results], sum(n for _, n in results)


def read_prompt_completion(row: dict, location: str) -> list[Unit]:
    key = _reply_field(row)
    completion = f.reply(f.require(row, key, location, "or 'completion'" if key == "response" else ""), location, key)
    (prompt, completion), merged = _merged(_prompt_of(row, location), completion)
    return [Demo(location, prompt, completion=completion, merged_turns=merged)]


def read_preference(row: dict, location: str) -> list[Unit]:
    chosen_raw, rejected_raw = f.require(row, "chosen", location), f.require(row, "rejected", location)
    if f.is_messages(chosen_raw) and f.is_messages(rejected_raw) and str(chosen_raw[0].get("role")).lower() != "assistant":
        # Full conversations (as in ultrafeedback_binarized): the shared part is the prompt.
        (chosen, rejected), merged = _merged(f.messages(chosen_raw, location, "chosen"), f.messages(rejected_raw, location, "rejected"))
        prompt, chosen, rejected = f.split_shared_prompt(chosen, rejected, location)
        return [Pair(location, prompt, chosen=chosen, rejected=rejected, merged_turns=merged)]
    (prompt, chosen, rejected), merged = _merged(f.prompt(f.require(row, "prompt", location), location),
                                                 f.reply(chosen_raw, location, "chosen"), f.reply(rejected_raw, location, "rejected"))
    return [Pair(location, prompt, chosen=chosen, rejected=rejected, merged_turns=merged)]


def read_hh(row: dict, location: str) -> list[Unit]:
    """An HH row: two transcripts; "Assistant:" twice in a row is one reply (merged), so the turns alternate."""
    (chosen, rejected), merged = _merged(f.hh_transcript(f.require(row, "chosen", location), location, "chosen"),
                                         f.hh_transcript(f.require(row, "rejected", location), location, "rejected"))
    prompt, chosen, rejected = f.split_shared_prompt(chosen, rejected, location)
    return [Pair(location, prompt, chosen=chosen, rejected=rejected, merged_turns=merged)]


_SCORE_KEYS = ("score", "overall_score", "fine-grained_score", "rating")
_RESPONSE_KEYS = ("response", "text", "completion", "content")


def read_rated(row: dict, location: str) -> list[Unit]:
    if row.get("prompt") is None and row.get("messages") is None and row.get("instruction") is not None:
        prompt = f.prompt(row["instruction"], location, "instruction")
    else:
        prompt = _prompt_of(row, location)
    prompt, merged = f.merge_same_role(prompt)
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
    return [Rated(location, prompt, scored=scored, merged_turns=merged)]


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


_DEMONSTRATION_READERS = ("messages", "sharegpt", "alpaca", "dolly", "self_instruct", "prompt_completion")


def _vote(row: dict, location: str, vote_fields: tuple[str, ...]) -> list[Unit]:
    """A feedback row: the reply it rates (a prompt and a response, the last assistant turn of a
    chat-shaped row, or each instance of a self-instruct task), and its vote from the first of
    `vote_fields` it has, on the reply itself (the last message, the instance) or on the row."""
    shape = demonstration_shape(row)
    shape = shape if shape in _DEMONSTRATION_READERS else "prompt_completion"
    rated = READERS[shape](row, location)
    if shape != "self_instruct" and len(rated[0].completion) != 1:
        raise RowError(location, "must be a single assistant reply", "bad_value", _reply_field(row))
    voter = next((row[k] for k in ("user", "user_id", "session", "session_id") if row.get(k) is not None), None)
    votes = []
    for demo, holders in zip(rated, _vote_holders(row, shape, len(rated))):
        liked = _read_vote(row, location, holders, vote_fields, shape)
        votes.append(Vote(demo.location, demo.prompt, response=demo.completion[0]["content"], up=int(liked), down=int(not liked),
                          user=None if voter is None else str(voter), timestamp=row.get("timestamp"), merged_turns=demo.merged_turns))
    return votes


def _vote_holders(row: dict, shape: str, count: int) -> list[list[tuple[dict, str]]]:
    """Per rated reply, where its vote may sit, most specific first, as (object, field prefix)."""
    if shape == "self_instruct":
        return [[(instance, f"instances[{i}]."), (row, "")] for i, instance in enumerate(row["instances"][:count])]
    key = {"messages": "messages", "sharegpt": "conversations"}.get(shape) or (_reply_field(row) if shape == "prompt_completion" else None)
    reply = row.get(key) if key else None
    if isinstance(reply, list) and reply and isinstance(reply[-1], dict):
        return [[(reply[-1], f"{key}[{len(reply) - 1}]."), (row, "")]]
    return [[(row, "")]]


def _read_vote(row: dict, location: str, holders: list[tuple[dict, str]], vote_fields: tuple[str, ...], shape: str) -> bool:
    for source, prefix in holders:
        for name in vote_fields:
            if source.get(name) is not None:
                return f.rating(source[name], location, prefix + name)
    unreadable = [(prefix, name) for source, prefix in holders for name in feedback_like(source.keys())]
    if unreadable:
        prefix, name = unreadable[0]
        fix = (f"if its values say up/down (true = liked), read it as the rating with columns: {{rating: {name}}}" if not prefix
               else "if its values say up/down, name it rating")
        raise RowError(location, f"looks like feedback, but posttrain reads votes only from {', '.join(VOTE_FIELDS)}; {fix}; "
                                 f"to train on every row as a demonstration instead, set format: {shape}", "unknown_feedback", prefix + name)
    # A feedback row without its vote: name the row's field, or the instance's when its siblings carry theirs.
    instances = row.get("instances") if shape == "self_instruct" else None
    per_instance = isinstance(instances, list) and any(isinstance(i, dict) and any(i.get(k) is not None for k in vote_fields) for i in instances)
    raise f.missing(location, (holders[0][1] if per_instance else "") + vote_fields[0])


def read_thumbs(row: dict, location: str) -> list[Unit]:
    return _vote(row, location, THUMBS_FIELDS)


def read_binary(row: dict, location: str) -> list[Unit]:
    return _vote(row, location, (LABEL_FIELD,))


READERS: dict[str, Callable[[dict, str], list[Unit]]] = {
    "messages": read_messages, "alpaca": read_alpaca, "dolly": read_dolly, "self_instruct": read_self_instruct, "sharegpt": read_sharegpt,
    "prompt_completion": read_prompt_completion, "preference": read_preference, "hh": read_hh,
    "rated": read_rated, "binary": read_binary, "thumbs": read_thumbs,
}  # oasst needs the whole file (flat exports link rows by id): see posttrain.data.oasst

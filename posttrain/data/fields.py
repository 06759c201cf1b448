"""Step 3, units (1/4): typed values read out of a row's fields, with errors that name the location and the field.

Every accessor either returns a clean value or raises a `RowError` whose `reason` is the
accounting code used when the row is skipped: `missing_field`, `wrong_type`, `bad_value`; and
`tool_calls_unsupported` for a conversation that calls tools, which is dropped whatever
`on_error` says (it is valid data that posttrain does not train on yet, not a mistake).
"""

from __future__ import annotations

import math
import re

from posttrain.data.sources import RowError

Messages = list[dict]

ROLES = ("system", "user", "assistant", "tool")
# ShareGPT and OpenAssistant speaker names -> chat roles.
ROLE_ALIASES = {
    "human": "user", "user": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
    "system": "system", "tool": "tool", "function": "tool",
    # tool turns in ShareGPT-style tool datasets and Llama 3 chats: conversations that call tools
    "function_call": "tool", "observation": "tool", "ipython": "tool",
}

RATING_VALUES = {
    "up": True, "+1": True, "1": True, "true": True, "thumbs_up": True, "good": True, "like": True, "liked": True,
    "positive": True, "yes": True, "👍": True,
    "down": False, "-1": False, "0": False, "false": False, "thumbs_down": False, "bad": False, "dislike": False,
    "disliked": False, "negative": False, "no": False, "👎": False,
}


def missing(location: str, field: str, needs: str = "") -> RowError:
    return RowError(location, f"is missing{f' ({needs})' if needs else ''}", "missing_field", field)


def require(row: dict, field: str, location: str, needs: str = ""):
    value = row.get(field)
    if value is None:  # absent, or null in Parquet/JSON
        raise missing(location, field, needs)
    return value


def text(value, location: str, field: str) -> str:
    if not isinstance(value, str):
        raise RowError(location, f"must be text, got {_type_name(value)}", "wrong_type", field)
    return value


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _content(value, location: str, field: str) -> str:
    """A message's content: text, or OpenAI content parts [{type: text, text}, ...] joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        parts = [p.get("text") for p in value if p.get("type", "text") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    raise RowError(location, f"must be text or a list of text parts, got {_type_name(value)}", "wrong_type", field)


TOOL_CALLS = "tool_calls_unsupported"
WEIGHT_ZERO = "weight_zero"  # OpenAI fine-tuning files: every assistant message says `weight: 0` (do not train on it)


def trained_turns(value: list, location: str, field: str) -> list:
    """OpenAI's per-message `weight` (0: do not train on this assistant message). posttrain trains on
    a conversation's last assistant message, so a conversation is cut back to its last assistant
    message whose weight is not 0; when every assistant message has weight 0 nothing is meant to be
    learned and the row is dropped as `weight_zero`, whatever `on_error` says."""
    if not isinstance(value, list) or not any(isinstance(m, dict) and "weight" in m for m in value):
        return value
    last_trained = None
    for n, message in enumerate(value):
        if not isinstance(message, dict) or "weight" not in message:
            if isinstance(message, dict) and message.get("role") == "assistant":
                last_trained = n
            continue
        if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
            raise RowError(location, f"is {message['weight']!r}; OpenAI's message weight is 0 (do not train) or 1", "bad_value", f"{field}[{n}].weight")
        if message["weight"] == 1:
            last_trained = n
    if last_trained is None:
        raise RowError(location, "marks every assistant message weight: 0, so there is nothing to train on; "
                                 "the row is dropped as weight_zero", WEIGHT_ZERO, field)
    return value[: last_trained + 1]
# Keys that make an assistant message a tool call: OpenAI's `tool_calls`, its older `function_call`.
_TOOL_CALL_KEYS = ("tool_calls", "function_call")


def messages(value, location: str, field: str, role_key: str = "role", content_key: str = "content") -> Messages:
    """A list of chat messages, normalized to [{role, content}] with standard role names.

    A conversation that calls tools (an assistant message with `tool_calls` or `function_call`,
    or a `tool` / `function` message) raises `tool_calls_unsupported`: posttrain does not train
    on tool calls, and reading such a conversation as text would train on a conversation with
    its calls cut out.
    """
    if not isinstance(value, list) or not value:
        raise RowError(location, f"must be a non-empty list of messages, got {_type_name(value) if not isinstance(value, list) else 'an empty list'}", "wrong_type", field)
    out = []
    for n, message in enumerate(value):
        where = f"{field}[{n}]"
        if not isinstance(message, dict):
            raise RowError(location, f"must be an object with '{role_key}' and '{content_key}', got {_type_name(message)}", "wrong_type", where)
        if role_key not in message:
            raise missing(location, f"{where}.{role_key}")
        role = ROLE_ALIASES.get(str(message[role_key]).strip().lower())
        if role is None:
            raise RowError(location, f"is '{message[role_key]}'; use one of: {', '.join(ROLES)} (or human/gpt)", "bad_value", f"{where}.{role_key}")
        _refuse_tool_use(message, role, location, where, role_key)
        if content_key not in message:
            raise missing(location, f"{where}.{content_key}")
        out.append({"role": role, "content": _content(message[content_key], location, f"{where}.{content_key}")})
    return out


def _refuse_tool_use(message: dict, role: str, location: str, where: str, role_key: str) -> None:
    call = next((k for k in _TOOL_CALL_KEYS if message.get(k)), None)
    if call is None and role != "tool":
        return
    what = f"is a tool call ('{call}')" if call else f"is a tool turn (role '{message[role_key]}')"
    raise RowError(location, f"{what}; posttrain does not train on tool calls yet, so this conversation is dropped "
                             f"as {TOOL_CALLS} (remove the tool turns to train on the rest)", TOOL_CALLS, call and f"{where}.{call}" or f"{where}.{role_key}")


def merge_same_role(conversation: Messages) -> tuple[Messages, int]:
    """Consecutive turns of one role become one turn (texts joined by a blank line), so every
    conversation alternates as chat templates require; returns the turns and how many were merged."""
    out: Messages = []
    merged = 0
    for message in conversation:
        if out and out[-1]["role"] == message["role"]:
            texts = [t for t in (out[-1]["content"], message["content"]) if t.strip()]
            out[-1] = {**out[-1], "content": "\n\n".join(texts)}
            merged += 1
        else:
            out.append(dict(message))
    return out, merged


def is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def prompt(value, location: str, field: str = "prompt") -> Messages:
    """A prompt: a user string, or a list of messages (the conversation so far)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return messages(value, location, field)
    raise RowError(location, f"must be text or a list of {{role, content}} messages, got {_type_name(value)}", "wrong_type", field)


def reply(value, location: str, field: str) -> Messages:
    """A response: text (one assistant message) or a list of messages starting with the assistant's."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list):
        out = messages(value, location, field)
        if out[0]["role"] != "assistant":
            raise RowError(location, f"must start with an assistant message, got role '{out[0]['role']}'", "bad_value", field)
        return out
    raise RowError(location, f"must be text or a list of assistant messages, got {_type_name(value)}", "wrong_type", field)


def rating(value, location: str, field: str = "rating") -> bool:
    """A thumbs rating or binary label: up/down, +1/-1, true/false, 1/0, like/dislike, ..."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (1, 0, -1):
        return value == 1
    key = re.sub(r"(?<=\w)[\s-]+(?=\w)", "_", str(value).strip().lower())  # thumbs-up, thumbs up -> thumbs_up
    if key not in RATING_VALUES:
        raise RowError(location, f"is {value!r}; use up/down, +1/-1 or true/false", "bad_value", field)
    return RATING_VALUES[key]


def score(value, location: str, field: str) -> float:
    """A numeric score (numbers in CSV arrive as text)."""
    if isinstance(value, bool):
        raise RowError(location, "must be a number, got bool", "wrong_type", field)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(location, f"must be a number, got {value!r}", "wrong_type", field) from None
    if not math.isfinite(number):
        raise RowError(location, f"must be a finite number, got {value!r}", "bad_value", field)
    return number


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def hh_transcript(value, location: str, field: str) -> Messages:
    """An Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages."""
    if isinstance(value, list):
        return messages(value, location, field)
    transcript = text(value, location, field)
    pieces = _HH_TURN.split(transcript)
    if len(pieces) < 3 or pieces[0].strip():
        raise RowError(location, "is not a transcript of '\\n\\nHuman:' / '\\n\\nAssistant:' turns", "bad_value", field)
    speakers, contents = pieces[1::2], pieces[2::2]
    return [{"role": "user" if s == "Human" else "assistant", "content": c.strip()} for s, c in zip(speakers, contents)]


def split_shared_prompt(chosen: Messages, rejected: Messages, location: str) -> tuple[Messages, Messages, Messages]:
    """Two full conversations -> (shared prompt ending in a user turn, chosen rest, rejected rest)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":  # the prompt ends where the user last spoke
        shared -= 1
    if shared == 0 or shared >= len(chosen) or shared >= len(rejected):
        raise RowError(location, "chosen and rejected share no user turn followed by differing assistant replies", "bad_value", "chosen")
    for field, rest in (("chosen", chosen[shared:]), ("rejected", rejected[shared:])):
        if rest[0]["role"] != "assistant":
            raise RowError(location, "must continue the shared conversation with an assistant reply", "bad_value", field)
    return chosen[:shared], chosen[shared:], rejected[shared:]

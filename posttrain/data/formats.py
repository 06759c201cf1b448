"""Input formats: how each is recognised from a row's fields, and how a row becomes units.

Detection looks at each row's fields (so a file may mix formats); `format=` forces one
format for every row. A row that matches no format, or looks like a weaker cousin of the
file's main format (a thumbs row without its rating), is parsed as the main format, so
the error names the missing field instead of guessing.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from posttrain.data import fields as f
from posttrain.data.rows import RowError
from posttrain.data.units import Demo, Pair, Rated, Unit, Vote

# name -> (fields that identify it, one-line description)
FORMATS: dict[str, tuple[str, str]] = {
    "messages": ("messages", "OpenAI-style chat: the last message is the assistant reply"),
    "alpaca": ("instruction, input?, output", "Alpaca instruction tuning"),
    "sharegpt": ("conversations[from, value]", "ShareGPT conversations"),
    "prompt_completion": ("prompt|messages, completion|response", "a prompt and its reply"),
    "preference": ("prompt, chosen, rejected", "preference pairs (text or message lists)"),
    "hh": ("chosen, rejected", "Anthropic HH transcripts; the shared prefix is the prompt"),
    "rated": ("prompt|instruction, completions[response, score] | responses + scores", "rated completions (UltraFeedback-style)"),
    "binary": ("prompt|messages, completion|response, label", "unpaired binary feedback (KTO)"),
    "thumbs": ("prompt|messages, response, rating, user?, session?, timestamp?", "thumbs-up/down log"),
    "oasst": ("message_tree_id, prompt{replies} | message_id, parent_id, role, text", "OpenAssistant message trees"),
}
ALIASES = {
    "openai": "messages", "chatml": "messages", "chat": "messages", "instruction": "alpaca", "pairs": "preference",
    "dpo": "preference", "anthropic_hh": "hh", "ultrafeedback": "rated", "kto": "binary", "unpaired": "binary",
    "thumbs_log": "thumbs", "feedback": "thumbs", "openassistant": "oasst", "oasst_tree": "oasst",
}
# A row of the main format with a field missing looks like one of these; parse it as the main format.
_WEAKER = {
    "thumbs": {"prompt_completion", "messages"}, "binary": {"prompt_completion", "messages"},
    "preference": {"prompt_completion", "hh"}, "alpaca": set(), "rated": set(),
}


def resolve_format(name: str | None) -> str | None:
    if name is None or name == "auto":
        return None
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        from posttrain.errors import DataError, did_you_mean

        raise DataError(f"format '{name}' is unknown{did_you_mean(key, list(FORMATS) + list(ALIASES))}; use auto or one of: {', '.join(FORMATS)}")
    return key


def detect(row: dict) -> str | None:
    """The format a row's fields identify, or None."""
    keys = row.keys()
    if "message_tree_id" in keys or isinstance(row.get("prompt"), dict) or {"message_id", "role", "text"} <= keys:
        return "oasst"
    if "chosen" in keys and "rejected" in keys:
        return "preference" if "prompt" in keys else "hh"
    if "completions" in keys or ("responses" in keys and "scores" in keys):
        return "rated"
    has_reply, has_prompt = bool({"response", "completion"} & keys), bool({"prompt", "messages"} & keys)
    if "rating" in keys and has_reply:
        return "thumbs"
    if "label" in keys and has_reply:
        return "binary"
    if "conversations" in keys:
        return "sharegpt"
    if has_reply and has_prompt:
        return "prompt_completion"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    return None


def main_format(detected: list[str | None]) -> str | None:
    counts = Counter(d for d in detected if d)
    return counts.most_common(1)[0][0] if counts else None


def format_for_row(detected: str | None, main: str | None, forced: str | None) -> str | None:
    if forced:
        return forced
    if main and (detected is None or detected in _WEAKER.get(main, ())):
        return main
    return detected


def undetectable(row: dict, location: str) -> RowError:
    known = "; ".join(f"{name} ({keys})" for name, (keys, _) in FORMATS.items())
    found = ", ".join(sorted(map(str, row.keys()))) or "none"
    return RowError(location, f"cannot detect the data format from the fields ({found}); known formats: {known}. "
                              f"Rename the fields or set format explicitly", "unknown_format")


# ---- one parser per flat format: (row, location) -> units -------------------------------------


def _prompt_of(row: dict, location: str) -> list[dict]:
    """The conversation before the reply: `prompt` (text or messages) or `messages`."""
    for key in ("prompt", "messages"):
        if row.get(key) is not None:
            return f.prompt(row[key], location, key)
    raise f.missing(location, "prompt", "or 'messages'")


def _reply_field(row: dict) -> str:
    return "response" if row.get("response") is not None or "completion" not in row else "completion"


def parse_messages(row: dict, location: str) -> list[Unit]:
    conversation = f.messages(f.require(row, "messages", location), location, "messages")
    return [_demo_from_conversation(conversation, location, "messages")]


def _demo_from_conversation(conversation: list[dict], location: str, field: str) -> Demo:
    if conversation[-1]["role"] != "assistant":
        raise RowError(location, "must end with the assistant's reply to learn", "bad_value", field)
    if not any(m["role"] == "user" for m in conversation[:-1]):
        raise RowError(location, "needs a user turn before the assistant's reply", "bad_value", field)
    return Demo(location, conversation[:-1], completion=conversation[-1:])


def parse_alpaca(row: dict, location: str) -> list[Unit]:
    instruction = f.text(f.require(row, "instruction", location), location, "instruction")
    extra = row.get("input")
    extra = f.text(extra, location, "input") if extra is not None else ""
    output = f.text(f.require(row, "output", location), location, "output")
    prompt = [{"role": "user", "content": instruction + (f"\n\n{extra}" if extra.strip() else "")}]
    if isinstance(row.get("system"), str) and row["system"].strip():
        prompt.insert(0, {"role": "system", "content": row["system"]})
    return [Demo(location, prompt, completion=[{"role": "assistant", "content": output}])]


def parse_sharegpt(row: dict, location: str) -> list[Unit]:
    turns = f.require(row, "conversations", location)
    keys = ("role", "content") if turns and isinstance(turns, list) and isinstance(turns[0], dict) and "role" in turns[0] else ("from", "value")
    conversation = f.messages(turns, location, "conversations", *keys)
    if isinstance(row.get("system"), str) and row["system"].strip() and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": row["system"]})
    return [_demo_from_conversation(conversation, location, "conversations")]


def parse_prompt_completion(row: dict, location: str) -> list[Unit]:
    key = _reply_field(row)
    completion = f.reply(f.require(row, key, location, "or 'completion'" if key == "response" else ""), location, key)
    return [Demo(location, _prompt_of(row, location), completion=completion)]


def parse_preference(row: dict, location: str) -> list[Unit]:
    chosen_raw, rejected_raw = f.require(row, "chosen", location), f.require(row, "rejected", location)
    if f.is_messages(chosen_raw) and f.is_messages(rejected_raw) and str(chosen_raw[0].get("role")).lower() != "assistant":
        # Full conversations (as in ultrafeedback_binarized): the shared part is the prompt.
        prompt, chosen, rejected = f.split_shared_prompt(f.messages(chosen_raw, location, "chosen"), f.messages(rejected_raw, location, "rejected"), location)
        return [Pair(location, prompt, chosen=chosen, rejected=rejected)]
    return [Pair(location, f.prompt(f.require(row, "prompt", location), location),
                 chosen=f.reply(chosen_raw, location, "chosen"), rejected=f.reply(rejected_raw, location, "rejected"))]


def parse_hh(row: dict, location: str) -> list[Unit]:
    chosen = f.hh_transcript(f.require(row, "chosen", location), location, "chosen")
    rejected = f.hh_transcript(f.require(row, "rejected", location), location, "rejected")
    prompt, chosen, rejected = f.split_shared_prompt(chosen, rejected, location)
    return [Pair(location, prompt, chosen=chosen, rejected=rejected)]


_SCORE_KEYS = ("score", "overall_score", "fine-grained_score", "rating")
_RESPONSE_KEYS = ("response", "text", "completion", "content")


def parse_rated(row: dict, location: str) -> list[Unit]:
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


def _vote(row: dict, location: str, label_field: str) -> Vote:
    key = _reply_field(row)
    response = f.reply(f.require(row, key, location), location, key)
    if len(response) != 1:
        raise RowError(location, "must be a single assistant reply", "bad_value", key)
    liked = f.rating(f.require(row, label_field, location), location, label_field)
    voter = next((row[k] for k in ("user", "user_id", "session", "session_id") if row.get(k) is not None), None)
    return Vote(location, _prompt_of(row, location), response=response[0]["content"], up=int(liked), down=int(not liked),
                user=None if voter is None else str(voter), timestamp=row.get("timestamp"))


def parse_thumbs(row: dict, location: str) -> list[Unit]:
    return [_vote(row, location, "rating")]


def parse_binary(row: dict, location: str) -> list[Unit]:
    return [_vote(row, location, "label")]


PARSERS: dict[str, Callable[[dict, str], list[Unit]]] = {
    "messages": parse_messages, "alpaca": parse_alpaca, "sharegpt": parse_sharegpt,
    "prompt_completion": parse_prompt_completion, "preference": parse_preference, "hh": parse_hh,
    "rated": parse_rated, "binary": parse_binary, "thumbs": parse_thumbs,
}  # oasst needs the whole file (flat exports link rows by id): see posttrain.data.oasst

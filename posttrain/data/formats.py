"""Step 2, shape: the input formats, and which one each row is.

Detection looks at each row's fields (so a file may mix formats); the `format` option forces
one format for every row. A row that matches no format, or looks like a weaker cousin of
the file's main format (a thumbs row without its rating), is read as the main format, so
the error names the missing field instead of guessing.

A feedback field (`rating`, `thumbs`, `vote`, `score`, or `label`) next to a conversation
makes the row feedback, whatever else it holds: `{"messages": [user, assistant], "rating":
"down"}` is a thumbs-down on the last reply, never a demonstration to learn. So does one on
the rated reply itself (the last message of `messages` or `conversations`, a completion
message, a self-instruct instance), and so does a field whose name says feedback but that
posttrain cannot read as a vote (`thumbs_down`, `feedback`, `reward`): such a row is read as
feedback, and the reader stops with a line naming the field, rather than train on it.

This module imports nothing else of posttrain.data: recipe validation reads its names.
"""

from __future__ import annotations

import re
from collections import Counter

# name -> (fields that identify it, one-line description)
FORMATS: dict[str, tuple[str, str]] = {
    "messages": ("messages", "OpenAI-style chat: the last message is the assistant reply"),
    "alpaca": ("instruction, input?, output", "Alpaca instruction tuning"),
    "dolly": ("instruction, context?, response, category?", "Databricks Dolly: the context is the input; the category is ignored"),
    "self_instruct": ("instruction, instances[input?, output], is_classification?", "self-instruct seed tasks: one example per instance"),
    "sharegpt": ("conversations[from, value]", "ShareGPT conversations"),
    "prompt_completion": ("prompt|messages, completion|response", "a prompt and its reply"),
    "preference": ("prompt, chosen, rejected", "preference pairs (text or message lists)"),
    "hh": ("chosen, rejected", "Anthropic HH transcripts; the shared prefix is the prompt"),
    "rated": ("prompt|instruction, completions[response, score] | responses + scores", "rated completions (UltraFeedback-style)"),
    "binary": ("a conversation and its reply, label", "unpaired binary feedback (KTO)"),
    "thumbs": ("a conversation and its reply, rating|thumbs|vote|score, user?, session?, timestamp?", "thumbs-up/down log"),
    "oasst": ("message_tree_id, prompt{replies} | message_id, parent_id, role, text", "OpenAssistant message trees"),
}
ALIASES = {
    "openai": "messages", "chatml": "messages", "chat": "messages", "instruction": "alpaca", "pairs": "preference",
    "dpo": "preference", "anthropic_hh": "hh", "ultrafeedback": "rated", "kto": "binary", "unpaired": "binary",
    "thumbs_log": "thumbs", "feedback": "thumbs", "openassistant": "oasst", "oasst_tree": "oasst",
    "databricks_dolly": "dolly", "selfinstruct": "self_instruct", "seed_tasks": "self_instruct",
}
# The fields that hold a thumbs-up/down vote (first present wins), and the binary label.
THUMBS_FIELDS = ("rating", "thumbs", "vote", "score")
LABEL_FIELD = "label"
VOTE_FIELDS = (*THUMBS_FIELDS, LABEL_FIELD)
# Words that, in a field's name, say it holds feedback (thumbs_down, user_feedback, reward, ...).
FEEDBACK_WORDS = frozenset({
    "rating", "ratings", "rated", "thumb", "thumbs", "thumbsup", "thumbsdown", "vote", "votes", "voted", "upvote", "upvotes",
    "downvote", "downvotes", "feedback", "like", "liked", "likes", "dislike", "disliked", "dislikes", "label", "labels",
    "reward", "rewards", "score", "helpful", "helpfulness", "preferred", "winner",
})
# Every top-level field some format reads: the names `columns` may map a file's columns onto.
FIELDS = (
    "messages", "conversations", "system", "prompt", "completion", "response", "instruction", "input", "context", "output",
    "instances", "chosen", "rejected", "completions", "responses", "scores", *VOTE_FIELDS, "user", "user_id", "session",
    "session_id", "timestamp", "message_tree_id", "message_id", "parent_id", "role", "text", "replies", "emojis", "rank",
    "deleted", "review_result",
)
# A row of the main format with a field missing looks like one of these; read it as the main format.
_DEMONSTRATIONS = {"prompt_completion", "messages", "sharegpt", "alpaca", "dolly", "self_instruct"}
_WEAKER = {"thumbs": _DEMONSTRATIONS, "binary": _DEMONSTRATIONS, "preference": {"prompt_completion", "hh"}, "alpaca": set(),
           "dolly": set(), "self_instruct": set(), "rated": set()}


def resolve_format(name: str | None) -> str | None:
    """The canonical format name for a name or alias; None for auto-detection."""
    if name is None or name == "auto":
        return None
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        from posttrain.errors import DataError, did_you_mean

        raise DataError(f"format '{name}' is unknown{did_you_mean(key, list(FORMATS) + list(ALIASES))}; use auto or one of: {', '.join(FORMATS)}")
    return key


def demonstration_shape(row: dict) -> str | None:
    """The demonstration format a row's conversation and reply are written in, ignoring any feedback field."""
    keys = row.keys()
    if "conversations" in keys:
        return "sharegpt"
    if {"response", "completion"} & keys and {"prompt", "messages"} & keys:
        return "prompt_completion"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys and "instances" in keys:
        return "self_instruct"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "instruction" in keys and "response" in keys:
        return "dolly"
    return None


def reply_objects(row: dict, shape: str | None) -> list[dict]:
    """The objects inside a row that stand for its rated reply, where a vote may sit instead of on
    the row: the last turn of `messages` / `conversations`, the last message of a `completion` /
    `response` list, and each self-instruct instance."""
    if shape == "self_instruct":
        found = row.get("instances")
    elif shape in ("messages", "sharegpt", "prompt_completion"):
        key = {"messages": "messages", "sharegpt": "conversations"}.get(shape)
        if key is None:
            key = "response" if row.get("response") is not None or "completion" not in row else "completion"
        found = row.get(key)
        found = found[-1:] if isinstance(found, list) else []
    else:
        found = []
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


def feedback_like(keys) -> list[str]:
    """Field names that say feedback (thumbs_down, user_feedback, reward) but are not vote fields posttrain reads."""
    found = []
    for key in keys:
        if key in VOTE_FIELDS or not isinstance(key, str):
            continue
        words = set(re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()))
        if words & FEEDBACK_WORDS:
            found.append(key)
    return found


def detect(row: dict) -> str | None:
    """The format a row's fields identify, or None."""
    keys = row.keys()
    if "message_tree_id" in keys or isinstance(row.get("prompt"), dict) or {"message_id", "role", "text"} <= keys:
        return "oasst"
    if "chosen" in keys and "rejected" in keys:
        return "preference" if "prompt" in keys else "hh"
    if "completions" in keys or ("responses" in keys and "scores" in keys):
        return "rated"
    shape = demonstration_shape(row)
    if shape is None and not {"response", "completion"} & keys:
        return None
    fields = set(keys).union(*(item.keys() for item in reply_objects(row, shape)))
    if any(k in fields for k in THUMBS_FIELDS):
        return "thumbs"
    if LABEL_FIELD in fields:
        return "binary"
    if feedback_like(fields):
        return "thumbs"  # feedback it cannot read: the reader names the field instead of training on the row
    return shape


def main_format(detected: list[str | None]) -> str | None:
    counts = Counter(d for d in detected if d)
    return counts.most_common(1)[0][0] if counts else None


def format_for_row(detected: str | None, main: str | None, forced: str | None) -> str | None:
    if forced:
        return forced
    if main and (detected is None or detected in _WEAKER.get(main, ())):
        return main
    return detected

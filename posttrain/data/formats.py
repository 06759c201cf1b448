"""Step 2, shape: the input formats, and which one each row is.

Detection looks at each row's fields (so a file may mix formats); the `format` option forces
one format for every row. A row that matches no format, or looks like a weaker cousin of
the file's main format (a thumbs row without its rating), is read as the main format, so
the error names the missing field instead of guessing.

A feedback field (`rating`, `thumbs`, `vote`, `score`, or `label`) next to a conversation
makes the row feedback, whatever else it holds: `{"messages": [user, assistant], "rating":
"down"}` is a thumbs-down on the last reply, never a demonstration to learn.

This module imports nothing else of posttrain.data: recipe validation reads its names.
"""

from __future__ import annotations

from collections import Counter

# name -> (fields that identify it, one-line description)
FORMATS: dict[str, tuple[str, str]] = {
    "messages": ("messages", "OpenAI-style chat: the last message is the assistant reply"),
    "alpaca": ("instruction, input?, output", "Alpaca instruction tuning"),
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
}
# The fields that hold a thumbs-up/down vote (first present wins), and the binary label.
THUMBS_FIELDS = ("rating", "thumbs", "vote", "score")
LABEL_FIELD = "label"
# A row of the main format with a field missing looks like one of these; read it as the main format.
_DEMONSTRATIONS = {"prompt_completion", "messages", "sharegpt", "alpaca"}
_WEAKER = {"thumbs": _DEMONSTRATIONS, "binary": _DEMONSTRATIONS, "preference": {"prompt_completion", "hh"}, "alpaca": set(), "rated": set()}


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
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    return None


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
    has_reply = shape is not None or bool({"response", "completion"} & keys)
    if has_reply and any(k in keys for k in THUMBS_FIELDS):
        return "thumbs"
    if has_reply and LABEL_FIELD in keys:
        return "binary"
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

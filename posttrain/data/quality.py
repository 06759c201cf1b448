"""Quality rules shared by every conversion: duplicate keys, token lengths, the held-out split."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def normalize(text: str) -> str:
    """Text compared loosely: Unicode-normalized, case-folded, punctuation and spacing ignored."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_key(text: str, dedupe: str) -> str:
    return normalize(text) if dedupe == "normalized" else text


def conversation_key(messages: list[dict], dedupe: str = "exact") -> str:
    """A hashable identity for a conversation (a prompt, or a prompt plus reply)."""
    return json.dumps([[m["role"], text_key(m["content"], dedupe)] for m in messages], ensure_ascii=False)


class TokenCounter:
    """Counts tokens with the model's tokenizer when given one, else approximately.

    The approximation counts words and punctuation marks separately, which is close to
    (and usually below) what subword tokenizers produce for English.
    """

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            return len(_APPROX_TOKEN.findall(text))
        if hasattr(self.tokenizer, "encode"):
            return len(self.tokenizer.encode(text, add_special_tokens=False))
        return int(self.tokenizer(text))

    def conversation(self, messages: list[dict]) -> int:
        return sum(self(m["content"]) for m in messages)


def split_key(prompt: list[dict]) -> str:
    """What keeps a conversation on one side of the split: its first user turn, normalized.

    Splitting on the opening turn (not the whole prompt) keeps every continuation of a
    conversation, and every rephrasing that differs only in case or spacing, together.
    """
    first_user = next((m["content"] for m in prompt if m["role"] == "user"), "")
    return normalize(first_user) or first_user


def split_side(prompt: list[dict], test_share: float, seed: int) -> str:
    """'train' or 'test', fixed by a hash of the prompt: the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}\x00{split_key(prompt)}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"

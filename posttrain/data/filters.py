"""Step 4, filter: the rules every conversion shares.

- dedupe keys: texts and conversations compared exactly or `normalized`;
- lengths: token counts, with the model's tokenizer or approximately;
- the split: one function, by conversation, for the `split` option and the reward
  model's held-out pairs alike;
- `filtered_units`: the conversation units that pass the shared rules, and the ledger
  that holds the rest.

Order matters for the reasons reported: a row is first checked for being readable, then
for an empty reply, then for length, and only then assigned to a split side.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import replace

from posttrain.data.accounting import DataAccounting
from posttrain.data.conversations import Conversations
from posttrain.data.options import DataOptions
from posttrain.data.units import Rated, Unit

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_APPROX_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


# ---- dedupe keys ------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Text compared loosely: Unicode-normalized, case-folded, punctuation and spacing ignored."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_key(text: str, dedupe: str) -> str:
    return normalize(text) if dedupe == "normalized" else text


def conversation_key(messages: list[dict], dedupe: str = "exact") -> str:
    """A hashable identity for a conversation (a prompt, or a prompt plus reply)."""
    return json.dumps([[m["role"], text_key(m["content"], dedupe)] for m in messages], ensure_ascii=False)


# ---- lengths ----------------------------------------------------------------------------------


class TokenCounter:
    """Counts tokens with the model's tokenizer when given one, else approximately.

    tokenizer: anything with `.encode` (a transformers tokenizer) or a callable text -> count.
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


# ---- the split by conversation ------------------------------------------------------------------


def split_key(prompt: list[dict]) -> str:
    """What keeps a conversation on one side of the split: its first user turn, normalized.

    Splitting on the opening turn (not the whole prompt) keeps every continuation of a
    conversation, and every rephrasing that differs only in case or spacing, together.
    """
    first_user = next((m["content"] for m in prompt if m["role"] == "user"), "")
    return normalize(first_user) or first_user


def split_side(prompt: list[dict], test_share: float, seed: int) -> str:
    """'train' or 'test', fixed by a hash of the conversation: the same on every machine and run."""
    digest = hashlib.sha256(f"{seed}\x00{split_key(prompt)}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_share else "train"


def split_by_conversation(examples: list[dict], test_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test) examples, each example on its conversation's side of `split_side`."""
    sides = [split_side(e["prompt"], test_share, seed) for e in examples]
    return [e for e, s in zip(examples, sides) if s == "train"], [e for e, s in zip(examples, sides) if s == "test"]


# ---- the shared rules ---------------------------------------------------------------------------


def filtered_units(found: Conversations, source: str, options: DataOptions, tokenizer=None) -> tuple[list[Unit], DataAccounting]:
    """Units that pass the shared rules, and an accounting that already holds the rest."""
    acct = DataAccounting(source=source, rows_read=len(found.units) + len(found.dropped), formats=found.formats,
                          details=dict(found.details))
    for dropped in found.dropped:
        if dropped.message:
            acct.skip_error(dropped.reason, dropped.message)
        else:
            acct.drop(dropped.reason)
    count = TokenCounter(tokenizer)
    kept = []
    for unit in found.units:
        unit, reason = _check(unit, options, count)
        if reason:
            acct.drop(reason)
        else:
            kept.append(unit)
    return kept, acct


def _check(unit: Unit, options: DataOptions, count: TokenCounter) -> tuple[Unit, str | None]:
    if isinstance(unit, Rated):
        unit, reason = _filter_rated(unit, options, count)
        if reason:
            return unit, reason
    elif any(not r.strip() for r in unit.responses()):
        return unit, "empty_response"
    elif options.max_tokens and count.conversation(unit.prompt) + max(map(count, unit.responses())) > options.max_tokens:
        return unit, "too_long"
    if options.split and split_side(unit.prompt, options.test_share, options.seed) != options.split:
        return unit, "other_split"
    return unit, None


def _filter_rated(unit: Rated, options: DataOptions, count: TokenCounter) -> tuple[Rated, str | None]:
    """Blank or over-long completions leave the row; the row drops only when none is left."""
    scored = [(r, s) for r, s in unit.scored if r.strip()]
    if not scored:
        return unit, "empty_response"
    if options.max_tokens:
        budget = options.max_tokens - count.conversation(unit.prompt)
        scored = [(r, s) for r, s in scored if count(r) <= budget]
        if not scored:
            return unit, "too_long"
    return replace(unit, scored=scored), None

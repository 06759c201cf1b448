"""Conversion options shared by SFT, preference and KTO data (each a future stage config field)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from posttrain.data.formats import resolve_format
from posttrain.data.rows import ON_ERROR
from posttrain.errors import DataError

DEDUPE = ("exact", "normalized", "none")
SPLITS = ("train", "test")
BOTH_VOTES = ("majority", "drop")
TIES = ("skip", "fail")


@dataclass(frozen=True)
class DataOptions:
    format: str | None = None  # None/"auto": detect per row; else force one format (see formats.FORMATS)
    on_error: str = "fail"  # "fail": stop at the first bad row; "skip": drop it, counted by reason
    dedupe: str = "exact"  # "exact", "normalized" (case, punctuation, spacing ignored) or "none"
    max_tokens: int | None = None  # drop examples whose prompt + reply exceed this many tokens
    tokenizer: object = None  # a tokenizer (with .encode) or a callable text -> token count; default: approximate
    split: str | None = None  # None: every row; "train" / "test": one side of a split by prompt
    test_share: float = 0.1  # share of prompts held out as "test"
    seed: int = 0  # the split's seed
    both_votes: str = "majority"  # a reply with up and down votes: "majority" (net vote decides, a tie conflicts) or "drop"
    ties: str = "skip"  # equal ranks or scores: "skip" (no pair) or "fail" (an error naming the row)

    def __post_init__(self):
        object.__setattr__(self, "format", resolve_format(self.format))
        for name, allowed in (("on_error", ON_ERROR), ("dedupe", DEDUPE), ("both_votes", BOTH_VOTES), ("ties", TIES)):
            if getattr(self, name) not in allowed:
                raise DataError(f"{name} is '{getattr(self, name)}'; use one of: {', '.join(allowed)}")
        if self.split is not None and self.split not in SPLITS:
            raise DataError(f"split is '{self.split}'; use train, test, or leave it unset for every row")
        if not 0 < self.test_share < 1:
            raise DataError(f"test_share is {self.test_share}; use a share between 0 and 1, e.g. 0.1")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise DataError(f"max_tokens is {self.max_tokens}; use a positive number of tokens")


def make_options(options: dict) -> DataOptions:
    known = {f.name for f in fields(DataOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown data option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return DataOptions(**options)

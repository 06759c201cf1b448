"""The steps every conversion shares: parse rows, apply the quality rules and the split.

Order matters for the reasons reported: a row is first checked for being readable, then
for an empty reply, then for length, and only then assigned to a split side.
"""

from __future__ import annotations

from dataclasses import replace

from posttrain.data.accounting import DataAccounting
from posttrain.data.options import DataOptions
from posttrain.data.parse import parse_rows
from posttrain.data.quality import TokenCounter, split_side
from posttrain.data.units import Rated, Unit


def prepare(rows: list[dict], source: str, options: DataOptions) -> tuple[list[Unit], DataAccounting]:
    """Units that pass the shared rules, and an accounting that already holds the rest."""
    parsed = parse_rows(rows, source, options.format, options.on_error)
    acct = DataAccounting(source=source, rows_read=len(parsed.units) + len(parsed.dropped), formats=parsed.formats)
    for dropped in parsed.dropped:
        if dropped.message:
            acct.skip_error(dropped.reason, dropped.message)
        else:
            acct.drop(dropped.reason)
    count = TokenCounter(options.tokenizer)
    kept = []
    for unit in parsed.units:
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

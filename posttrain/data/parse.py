"""Raw rows -> canonical units, detecting each row's format and accounting for bad rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from posttrain.data.formats import PARSERS, detect, format_for_row, main_format, resolve_format, undetectable
from posttrain.data.oasst import Dropped, flat_units, tree_units
from posttrain.data.rows import RowError, check_on_error, location_of
from posttrain.data.units import Unit


@dataclass
class Parsed:
    units: list[Unit] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)  # unreadable, invalid (on_error: skip), deleted
    formats: Counter = field(default_factory=Counter)  # format -> input rows (lines)


def _is_flat_oasst(row: dict) -> bool:
    return "message_id" in row and "message_tree_id" not in row and not isinstance(row.get("prompt"), dict) and "replies" not in row


def parse_rows(rows: list[dict], source: str, format: str | None = None, on_error: str = "fail") -> Parsed:
    """Every row becomes units (usually one; an OpenAssistant tree one per assistant reply).

    With on_error="fail" the first bad row raises a one-line `RowError` naming location
    and field; with "skip" it becomes a `Dropped` entry carrying its reason and message.
    """
    check_on_error(on_error)
    forced = resolve_format(format)
    out = Parsed(dropped=[Dropped(loc, reason, message) for loc, reason, message in getattr(rows, "skipped", [])])
    located = [(row, location_of(row, source, i)) for i, row in enumerate(rows, start=1)]
    detected = [detect(row) if isinstance(row, dict) else None for row, _ in located]
    main = main_format(detected)
    flat_oasst = []
    for (row, location), found in zip(located, detected):
        chosen = format_for_row(found, main, forced)
        try:
            if not isinstance(row, dict):
                raise RowError(location, f"expected an object per row, got {type(row).__name__}", "not_an_object")
            if chosen is None:
                raise undetectable(row, location)
            if chosen == "oasst" and _is_flat_oasst(row):
                flat_oasst.append((row, location))  # linked by id: parsed once all rows are in
                out.formats[chosen] += 1
                continue
            items = tree_units(row, location, on_error) if chosen == "oasst" else PARSERS[chosen](row, location)
        except RowError as e:
            if on_error != "skip":
                raise
            items = [Dropped(location, e.reason, str(e))]
        out.formats[chosen or "unknown"] += 1
        _collect(out, items)
    if flat_oasst:
        _collect(out, flat_units(flat_oasst, on_error))
    return out


def _collect(out: Parsed, items) -> None:
    for item in items:
        (out.dropped if isinstance(item, Dropped) else out.units).append(item)

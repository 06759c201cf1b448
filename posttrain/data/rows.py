"""A raw row remembers where it came from, so every error can name the file, line and field."""

from __future__ import annotations

from posttrain.errors import DataError

ON_ERROR = ("fail", "skip")


class Row(dict):
    """One raw input record (a plain dict) plus its location, e.g. `data.jsonl:12`."""

    def __init__(self, data: dict, location: str):
        super().__init__(data)
        self.location = location


class Rows(list):
    """The rows read from one source, plus the records skipped on the way (`on_error: skip`).

    `skipped` holds (location, reason, message) for each record that could not be read
    (malformed JSON, bad bytes); conversions count them so the accounting stays whole.
    """

    def __init__(self, rows=(), source: str = "", skipped: list[tuple[str, str, str]] | None = None):
        super().__init__(rows)
        self.source = source
        self.skipped = skipped or []


class RowError(DataError):
    """A problem with one row: `reason` is the accounting code used when the row is skipped."""

    def __init__(self, location: str, problem: str, reason: str = "invalid_row", field: str | None = None):
        self.location, self.problem, self.reason, self.field = location, problem, reason, field
        # Problems read as a sentence after the field: "field 'rating' is 'meh'; use up/down ...".
        super().__init__(f"{location}: field '{field}' {problem}" if field else f"{location}: {problem}")


def location_of(row, source: str, index: int) -> str:
    """A row's own location, or `source: row N` for plain dicts (built-in data, library callers)."""
    return getattr(row, "location", None) or f"{source}: row {index}"


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise DataError(f"on_error is '{on_error}'; use one of: {', '.join(ON_ERROR)}")

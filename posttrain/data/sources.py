"""Where rows come from: local files (JSONL, JSON, CSV, Parquet), Hub datasets, or the built-in world.

`load_rows` returns located rows (`Rows`, a list of dicts that remember `file:line`);
`source_digest` hashes a source's content for stage fingerprints. A source that is not an
existing path but looks like `owner/name` (or is written `hf:owner/name[:split]`) is a Hub
dataset; it is only fetched by `load_rows`, never while validating a recipe.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from posttrain.data.readers import FILE_SUFFIXES, parse_hub_name, read_file, read_hub
from posttrain.data.rows import Row, Rows, check_on_error
from posttrain.errors import DataError

BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hf:"
_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


def _builtin_sources() -> dict:
    from posttrain.embedded import world

    return {
        "assistant_world/sft": world.sft_rows,
        "assistant_world/feedback": world.feedback_rows,
    }


def is_hub_source(source: str) -> bool:
    if source.startswith(HUB_PREFIX):
        return True
    path = Path(source)
    return not path.exists() and path.suffix.lower() not in FILE_SUFFIXES and bool(_HUB_NAME.match(source))


def check_source(source: str) -> None:
    """Fail fast (before any training) when a data source cannot exist; contacts no network."""
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        if name not in _builtin_sources():
            from posttrain.errors import did_you_mean

            raise DataError(f"unknown built-in data '{source}'{did_you_mean(name, _builtin_sources())}; built-in: {', '.join(BUILTIN_PREFIX + n for n in _builtin_sources())}")
        return
    if is_hub_source(source):
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file '{source}' does not exist (paths are relative to the current directory; "
                        f"a Hub dataset is written owner/name or hf:owner/name)")
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DataError(f"data file '{source}': unsupported extension '{path.suffix}'; use one of: {', '.join(FILE_SUFFIXES)}")


def source_digest(source: str) -> str:
    """sha256 of a source's content, for stage fingerprints (a file's bytes, or the built-in rows).

    A Hub dataset is fingerprinted by its name and split: its content is not fetched to plan a run.
    """
    check_source(source)
    if source.startswith(BUILTIN_PREFIX):
        rows = _builtin_sources()[source.removeprefix(BUILTIN_PREFIX)]()
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    if is_hub_source(source):
        return hashlib.sha256(("hub:" + "/".join(parse_hub_name(source))).encode()).hexdigest()
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()


def load_rows(source: str, on_error: str = "fail") -> Rows:
    """All rows of a source, each remembering its location.

    on_error: "fail" (default) stops at the first unreadable record with one line naming
    file and line; "skip" leaves it out and records it in `Rows.skipped` for the accounting.
    """
    check_on_error(on_error)
    check_source(source)
    if source.startswith(BUILTIN_PREFIX):
        raw = _builtin_sources()[source.removeprefix(BUILTIN_PREFIX)]()
        rows = Rows([Row(r, f"{source}: row {i}") for i, r in enumerate(raw, start=1)], source)
    elif is_hub_source(source):
        rows = read_hub(source, on_error)
    else:
        rows = read_file(Path(source), on_error)
    if not rows and not rows.skipped:
        raise DataError(f"{source}: no rows; the file is empty")
    return rows

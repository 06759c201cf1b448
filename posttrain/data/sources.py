"""Where rows come from: local JSONL/JSON files or the built-in assistant world.

`load_rows` returns plain dicts plus a content hash (for stage fingerprints). A malformed
line is one clear error naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posttrain.errors import DataError

BUILTIN_PREFIX = "builtin:"


def _builtin_sources() -> dict:
    from posttrain.embedded import world

    return {
        "assistant_world/sft": world.sft_rows,
        "assistant_world/feedback": world.feedback_rows,
    }


def check_source(source: str) -> None:
    """Fail fast (before any training) when a data source cannot exist."""
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        if name not in _builtin_sources():
            from posttrain.errors import did_you_mean

            raise DataError(f"unknown built-in data '{source}'{did_you_mean(name, _builtin_sources())}; built-in: {', '.join(BUILTIN_PREFIX + n for n in _builtin_sources())}")
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file '{source}' does not exist (paths are relative to the current directory)")
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"data file '{source}': unsupported extension '{path.suffix}'; use .jsonl or .json")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number}: not UTF-8 (byte {e.start}); re-encode the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append(row)
    return rows


def source_digest(source: str) -> str:
    """sha256 of a source's content, for stage fingerprints (a file's bytes, or the built-in rows)."""
    check_source(source)
    if source.startswith(BUILTIN_PREFIX):
        rows = _builtin_sources()[source.removeprefix(BUILTIN_PREFIX)]()
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()


def load_rows(source: str) -> list[dict]:
    check_source(source)
    if source.startswith(BUILTIN_PREFIX):
        rows = _builtin_sources()[source.removeprefix(BUILTIN_PREFIX)]()
    else:
        path = Path(source)
        if path.suffix == ".jsonl":
            rows = _read_jsonl(path)
        else:
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{path}: not valid UTF-8 JSON ({e})") from None
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise DataError(f"{path}: a .json data file holds a list of objects")
    if not rows:
        raise DataError(f"{source}: no rows; the file is empty")
    return rows

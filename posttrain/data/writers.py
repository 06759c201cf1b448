"""Writing converted examples: JSONL (default), JSON or Parquet, replaced atomically."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.atomic import write_text_atomic
from posttrain.errors import DataError


def write_examples(path: Path, examples: list[dict]) -> None:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        write_text_atomic(path, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    elif suffix == ".json":
        write_text_atomic(path, json.dumps(examples, ensure_ascii=False, indent=1) + "\n")
    elif suffix == ".parquet":
        _write_parquet(path, examples)
    else:
        raise DataError(f"output '{path}': unsupported extension '{path.suffix}'; use .jsonl, .json or .parquet")


def _write_parquet(path: Path, examples: list[dict]) -> None:
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(pa.Table.from_pylist(examples), tmp)
    os.replace(tmp, path)  # readers see the old file or the new one, never half

"""Step 1, read: a source name becomes located rows.

A source is a local file (JSONL, JSON, CSV/TSV, Parquet; any of them compressed as .gz, .bz2,
.xz or .zst, e.g. `train.jsonl.gz`), a feedback store (`.sqlite`, written by `posttrain chat`,
`serve` or `feedback import`: read as its thumbs export, docs/feedback-loop.md), a Hub dataset (`owner/name` or
`hf:owner/name[:split]`), built-in data (`builtin:<name>`), or what a data stage of the run
wrote (`stage:<name>`, read through the run's `data_files` mapping).

Every row remembers where it came from (`file:LINE` for JSONL and CSV, `file: row N` for
JSON arrays, Parquet and the Hub), so every later error names the file, line and field.
A record that cannot be read is one clear error, or, with `on_error="skip"`, a skipped
record counted with its reason. pyarrow and datasets are imported only when a source needs them.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import zlib
from pathlib import Path
from typing import BinaryIO

from posttrain.errors import DataError
from posttrain.stage import STAGE_DATA_PREFIX

ON_ERROR = ("fail", "skip")
BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = "hf:"
FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                 ".sqlite": "feedback_store", ".sqlite3": "feedback_store"}
# A feedback store (posttrain.feedback.store) is a SQLite file, read whole and uncompressed.
STORE_FORMAT = "feedback_store"
# A compression suffix after the format's: train.jsonl.gz. zstd is read through pyarrow (a dependency of datasets).
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
# CSV cells are text; these columns may hold JSON (message lists, completion lists, scores).
JSON_COLUMNS = {"messages", "conversations", "completions", "responses", "scores", "emojis", "prompt", "chosen", "rejected", "completion"}
_HUB_NAME = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


# ---- located rows -----------------------------------------------------------------------------


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


# ---- source names ------------------------------------------------------------------------------


def _builtin_sources() -> dict:
    from posttrain.embedded import real_world, world

    return {
        "assistant_world/sft": world.sft_rows,
        "assistant_world/feedback": world.feedback_rows,
        "real_world/sft": real_world.sft_rows,  # for a real instruct model (recipes/smollm2.yaml)
        "real_world/feedback": real_world.feedback_rows,
    }


def _is_hub_source(source: str) -> bool:
    if source.startswith(HUB_PREFIX):
        return True
    path = Path(source)
    return not path.exists() and file_kind(path) == (None, None) and bool(_HUB_NAME.match(source))


def file_kind(path: Path) -> tuple[str | None, str | None]:
    """(format, compression) from a file's name: data.jsonl -> ("jsonl", None), data.tsv.gz -> ("csv", "gzip")."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    named = suffixes[-2] if compression and len(suffixes) > 1 else None if compression else suffixes[-1] if suffixes else None
    return FILE_SUFFIXES.get(named), compression


def _format_suffix(path: Path) -> str:
    """The suffix that names the format: '.tsv' for data.tsv.gz."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    return suffixes[-2] if len(suffixes) > 1 and suffixes[-1] in COMPRESSIONS else Path(path).suffix.lower()


def _unsupported(path: Path) -> DataError:
    known = f"{', '.join(FILE_SUFFIXES)} (optionally compressed: {', '.join(s.lstrip('.') for s in COMPRESSIONS)})"
    if Path(path).suffix.lower() in COMPRESSIONS:
        named = "".join(Path(path).suffixes[-2:]) if len(Path(path).suffixes) > 1 else Path(path).suffix
        return DataError(f"data file '{path}': unsupported extension '{named}'; name the format before the compression, "
                         f"e.g. train.jsonl{Path(path).suffix}; formats: {known}")
    return DataError(f"data file '{path}': unsupported extension '{Path(path).suffix}'; use one of: {known}")


def check_source(source: str) -> None:
    """Fail fast (before any training) when a data source cannot exist; contacts no network.

    A `stage:<name>` source is not looked at: the recipe checks that it names an earlier data stage.
    """
    if source.startswith(STAGE_DATA_PREFIX):
        return
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        if name not in _builtin_sources():
            from posttrain.errors import did_you_mean

            raise DataError(f"unknown built-in data '{source}'{did_you_mean(name, _builtin_sources())}; built-in: {', '.join(BUILTIN_PREFIX + n for n in _builtin_sources())}")
        return
    if _is_hub_source(source):
        return
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file '{source}' does not exist (paths are relative to the current directory; "
                        f"a Hub dataset is written owner/name or hf:owner/name)")
    kind, compression = file_kind(path)
    if kind is None:
        raise _unsupported(path)
    if kind == STORE_FORMAT and compression:
        raise DataError(f"data file '{source}': a feedback store is read as it is; decompress it first")


def source_digest(source: str) -> str:
    """sha256 of a source's content, for stage fingerprints (a file's bytes, or the built-in rows).

    A compressed file by its decompressed content, so compressing it again (a new timestamp in
    the gzip header) does not invalidate a run.
    A Hub dataset is fingerprinted by its name and split: its content is not fetched to plan a run.
    A `stage:<name>` source by its name: the producing stage's fingerprint covers its content.
    A feedback store by the rows it gives and the judgements it skips: a new vote changes it, a tie or a
    repeated vote (which train nothing) does not, and SQLite's own bookkeeping (WAL, page order) never does.
    """
    check_source(source)
    if source.startswith(STAGE_DATA_PREFIX):
        return hashlib.sha256(source.encode()).hexdigest()
    if source.startswith(BUILTIN_PREFIX):
        rows = _builtin_sources()[source.removeprefix(BUILTIN_PREFIX)]()
        return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()
    if _is_hub_source(source):
        return hashlib.sha256(("hub:" + "/".join(parse_hub_name(source))).encode()).hexdigest()
    if file_kind(Path(source))[0] == STORE_FORMAT:
        rows = read_feedback_store(Path(source))
        content = [[r.location, dict(r)] for r in rows] + [list(s) for s in rows.skipped]
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    digest = hashlib.sha256()
    with _decompressing(Path(source)):
        with _open_bytes(Path(source)) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_rows(source: str, on_error: str = "fail", data_files: dict[str, Path] | None = None,
              refusal_for_flagged: str | None = None) -> Rows:
    """All rows of a source, each remembering its location.

    on_error: "fail" (default) stops at the first unreadable record with one line naming
    file and line; "skip" leaves it out and records it in `Rows.skipped` for the accounting.
    data_files: the run's `stage:<name>` source -> the file that data stage wrote.
    refusal_for_flagged: feedback stores only; see `read_feedback_store`.
    """
    check_on_error(on_error)
    if source.startswith(STAGE_DATA_PREFIX):
        path = (data_files or {}).get(source)
        if path is None:
            raise DataError(f"{source}: the data of stage '{source.removeprefix(STAGE_DATA_PREFIX)}' is not available here; "
                            f"a stage: source is read inside a run, after that data stage has run")
        if not Path(path).is_file():
            raise DataError(f"{source}: the file that stage wrote, '{path}', does not exist")
        rows = read_file(Path(path), on_error)
    else:
        check_source(source)
        if source.startswith(BUILTIN_PREFIX):
            raw = _builtin_sources()[source.removeprefix(BUILTIN_PREFIX)]()
            rows = Rows([Row(r, f"{source}: row {i}") for i, r in enumerate(raw, start=1)], source)
        elif _is_hub_source(source):
            rows = read_hub(source, on_error)
        elif file_kind(Path(source))[0] == STORE_FORMAT:
            rows = read_feedback_store(Path(source), refusal_for_flagged)
        else:
            rows = read_file(Path(source), on_error)
    if not rows and not rows.skipped:
        raise DataError(f"{source}: no rows; the file is empty")
    return rows


# ---- files -------------------------------------------------------------------------------------


class _Collector:
    """Rows plus skipped records; raises at once unless skipping."""

    def __init__(self, source: str, on_error: str):
        self.rows, self.skipped, self.on_error = [], [], on_error
        self.source = source

    def add(self, value, location: str) -> None:
        if not isinstance(value, dict):
            self.bad(RowError(location, f"expected a JSON object per record, got {type(value).__name__}", "not_an_object"))
        else:
            self.rows.append(Row(value, location))

    def bad(self, error: RowError) -> None:
        if self.on_error != "skip":
            raise error
        self.skipped.append((error.location, error.reason, str(error)))

    def result(self) -> Rows:
        return Rows(self.rows, self.source, self.skipped)


def read_file(path: Path, on_error: str = "fail") -> Rows:
    kind = file_kind(path)[0]
    if kind is None:
        raise _unsupported(path)
    if kind == STORE_FORMAT:
        return read_feedback_store(path)
    with _decompressing(path):
        return {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}[kind](path, on_error)


class _decompressing:
    """A damaged or truncated compressed file is one line naming the file, not a traceback."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        compression = file_kind(self.path)[1]
        if compression and error is not None and isinstance(error, _DECOMPRESSION_ERRORS) \
                and not isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise DataError(f"{self.path}: not a readable {compression} file ({str(error) or type(error).__name__}); "
                            f"check that the file is complete and compressed with {compression}") from None
        return False


def _open_bytes(path: Path) -> BinaryIO:
    """The file's bytes, decompressed as its name says."""
    compression = file_kind(path)[1]
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "zstd":
        import pyarrow as pa

        return io.BufferedReader(_RawStream(pa.input_stream(str(path), compression="zstd")))
    return open(path, "rb")


class _RawStream(io.RawIOBase):
    """A pyarrow stream as a Python raw stream, so it reads line by line."""

    def __init__(self, stream):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


def _read_bytes(path: Path) -> bytes:
    with _open_bytes(path) as f:
        return f.read()


def _not_utf8(path: Path, line: int, error: UnicodeDecodeError) -> RowError:
    return RowError(f"{path}:{line}", f"not UTF-8 (byte {error.start + 1} of the line); re-encode the file as UTF-8", "not_utf8")


def _read_jsonl(path: Path, on_error: str) -> Rows:
    out = _Collector(str(path), on_error)
    with _open_bytes(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                out.bad(_not_utf8(path, number, e))
                continue
            line = line.lstrip("\ufeff") if number == 1 else line  # a byte-order mark is not data
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                out.bad(RowError(f"{path}:{number}", f"malformed JSON ({e.msg} at column {e.colno})", "malformed_json"))
                continue
            out.add(value, f"{path}:{number}")
    return out.result()


def _decode_whole(path: Path) -> str:
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise RowError(f"{path}:{line}", f"not UTF-8 (byte {column} of the line); re-encode the file as UTF-8", "not_utf8") from None


def _read_json(path: Path, on_error: str) -> Rows:
    """A list of objects, or an object holding one (e.g. {"data": [...]}); JSONL mislabelled .json also works."""
    text = _decode_whole(path)
    if not text.strip():
        return Rows([], str(path))
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line: it is JSONL under a .json name
            return _read_jsonl(path, on_error)
        raise RowError(f"{path}:{e.lineno}", f"malformed JSON ({e.msg} at column {e.colno})", "malformed_json") from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        value = lists[0] if len(lists) == 1 and not _looks_like_a_row(value) else [value]
    if not isinstance(value, list):
        raise DataError(f"{path}: a .json data file holds a list of objects, got {type(value).__name__}")
    out = _Collector(str(path), on_error)
    for number, item in enumerate(value, start=1):
        out.add(item, f"{path}: row {number}")
    return out.result()


def _looks_like_a_row(value: dict) -> bool:
    # {"messages": [...]} is one chat row, not a wrapper around a list of rows.
    return bool({"messages", "conversations", "completions", "replies", "prompt", "chosen"} & value.keys())


def _read_csv(path: Path, on_error: str) -> Rows:
    try:
        text = _decode_whole(path)
    except RowError as e:
        if on_error != "skip":
            raise
        # Undecodable bytes become markers so only the records holding them are skipped.
        text, first_error = _read_bytes(path).decode("utf-8", errors="surrogateescape").lstrip("\ufeff"), e
    else:
        first_error = None
    out = _Collector(str(path), on_error)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if _format_suffix(path) == ".tsv" else ",")
    if not reader.fieldnames:
        return out.result()
    start = reader.line_num + 1
    for record in reader:
        location, start = f"{path}:{start}", reader.line_num + 1
        if None in record or any(v is None for v in record.values()):
            out.bad(RowError(location, f"has {len(record) + len(record.get(None) or [])} cells but the header names {len(reader.fieldnames)} columns", "malformed_csv"))
            continue
        if first_error and any(_has_surrogates(v) for v in record.values()):
            out.bad(RowError(location, first_error.problem, "not_utf8"))
            continue
        out.add({k: _cell(k, v) for k, v in record.items()}, location)
    return out.result()


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _cell(column: str, value: str):
    """A CSV cell: JSON for structured columns when it parses as a list or object, else the text."""
    stripped = value.strip()
    if column in JSON_COLUMNS and stripped[:1] in ("[", "{"):
        try:
            parsed = json.loads(stripped)
        except json.JSONDecodeError:
            return value
        if isinstance(parsed, (list, dict)):
            return parsed
    return value


def _read_parquet(path: Path, on_error: str) -> Rows:
    import pyarrow.parquet as pq

    source = io.BytesIO(_read_bytes(path)) if file_kind(path)[1] else path  # a damaged archive: see _decompressing
    try:
        records = pq.read_table(source).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    out = _Collector(str(path), on_error)
    for number, record in enumerate(records, start=1):
        out.add(record, f"{path}: row {number}")
    return out.result()


# ---- a feedback store ----------------------------------------------------------------------------


def read_feedback_store(path: Path, refusal_for_flagged: str | None = None) -> Rows:
    """The store's judgements as thumbs rows (posttrain.feedback.exporters, format `thumbs`), each located
    `store.sqlite: judgement N` (the store's row id); a judgement that gives no row (a tie, a like of an
    answer someone disliked, the same vote again) is a skipped record with that reason, so the accounting
    holds every judgement. Thumbs rows serve every stage: SFT takes the liked answers (and corrections),
    pairs pool liked against disliked answers to the same conversation, KTO labels them.

    refusal_for_flagged: for an answer flagged unsafe without a correction, the answer it should have
    been (red-teaming: the prompt that broke the model becomes a refusal example); None: a dislike only.
    """
    from posttrain.feedback.exporters import export
    from posttrain.feedback.store import FeedbackError, FeedbackStore

    try:
        store = FeedbackStore(path, create=False)
        try:
            judgements = store.judgements()
        finally:
            store.close()
        exported = export(judgements, "thumbs", refusal=refusal_for_flagged)
    except FeedbackError as e:
        raise DataError(str(e)) from None

    def where(index: int) -> str:
        return f"{path}: judgement {judgements[index].id}"

    rows = [Row(row, where(i)) for row, i in zip(exported.rows, exported.origins)]
    skipped = [(where(i), reason, f"{where(i)}: gives no training row ({reason})") for i, reason in sorted(exported.skipped_judgements.items())]
    return Rows(rows, str(path), skipped)


# ---- the Hub -----------------------------------------------------------------------------------


def parse_hub_name(source: str) -> tuple[str, str]:
    """`hf:owner/name[:split]` or `owner/name[:split]` -> (name, split); split defaults to train."""
    name = source.removeprefix(HUB_PREFIX)
    split = "train"
    if ":" in name and "/" not in name.rsplit(":", 1)[1]:
        name, split = name.rsplit(":", 1)
    return name, split


def read_hub(source: str, on_error: str = "fail") -> Rows:
    name, split = parse_hub_name(source)
    offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split=split)
    except Exception as e:  # network, missing dataset or split: all one user-facing line
        hint = (" Loading a Hub dataset needs network: unset HF_DATASETS_OFFLINE and HF_HUB_OFFLINE (or set them to 0), or use a local file."
                if offline else " Loading a Hub dataset needs network access to huggingface.co.")
        raise DataError(f"'{source}' is not a local file, and loading it as the Hub dataset '{name}' (split '{split}') failed: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}.{hint}") from None
    out = _Collector(source, on_error)
    for number, record in enumerate(dataset, start=1):
        out.add(record, f"{source}: row {number}")
    return out.result()

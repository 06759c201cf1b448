"""The feedback store: every judgement people make on a model's answers, in one SQLite file.

Why SQLite in WAL mode: the terminal chat, the web server's worker threads and an import may
write to the same store at once (several processes too); SQLite serialises the writers and
commits each row atomically, so no row is lost or half-written; WAL lets readers (the page's
"collected" view, an export) read while a writer writes; it is one file to copy or archive;
and it is in Python's standard library.

A judgement is one row: what was judged (the conversation up to the answer, the answer, and
the answer's provenance: model name, stage, the stage's fingerprint, sampling settings), the
judgement itself (a rating, an edited answer, a flag, or an arena choice against a second
answer), when, by whom (an anonymous id) and through what (chat, serve, an import).
`event_id` makes writes idempotent: a client that retries a request writes its row once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from posttrain.errors import PosttrainError

SCHEMA_VERSION = 1
KINDS = ("rating", "edit", "flag", "arena")
ARENA_CHOICES = ("a", "b", "tie", "both_bad")
FLAGS = ("unsafe",)
ROLES = ("system", "user", "assistant")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS judgements (
    id            INTEGER PRIMARY KEY,
    event_id      TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    source        TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('rating', 'edit', 'flag', 'arena')),
    conversation  TEXT NOT NULL,
    answer        TEXT NOT NULL,
    model         TEXT,
    stage         TEXT,
    fingerprint   TEXT,
    sampling      TEXT,
    rating        INTEGER CHECK (rating IN (-1, 1)),
    correction    TEXT,
    flag          TEXT,
    conversation_b TEXT,
    answer_b      TEXT,
    model_b       TEXT,
    stage_b       TEXT,
    fingerprint_b TEXT,
    sampling_b    TEXT,
    choice        TEXT CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
    comment       TEXT
);
CREATE INDEX IF NOT EXISTS judgements_model ON judgements (model);
"""
_COLUMNS = ("event_id", "created_at", "user_id", "source", "kind", "conversation", "answer", "model", "stage", "fingerprint",
            "sampling", "rating", "correction", "flag", "conversation_b", "answer_b", "model_b", "stage_b", "fingerprint_b",
            "sampling_b", "choice", "comment")


class FeedbackError(PosttrainError):
    """A judgement, store file or feedback log that cannot be used; the message says which and why."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_conversation(value, where: str) -> list[dict]:
    """The messages before a judged answer: role/content objects ending with the user's turn."""
    if not isinstance(value, list) or not value:
        raise FeedbackError(f"{where}: expected a non-empty list of messages ({{role, content}}), got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or message.get("role") not in ROLES:
            raise FeedbackError(f"{where}[{i}]: expected {{role: {'|'.join(ROLES)}, content: text}}")
        messages.append({"role": message["role"], "content": message["content"]})
    if messages[-1]["role"] != "user":
        raise FeedbackError(f"{where}: the last message must be the user's turn the answer replies to, not {messages[-1]['role']}")
    return messages


@dataclass(frozen=True)
class Answer:
    """One model answer and where it came from."""

    conversation: list[dict]  # the messages before the answer, ending with the user's turn
    text: str
    model: str | None = None  # the name people saw it under (a stage name, a directory, an imported model id)
    stage: str | None = None  # the run's stage that produced the model, when known
    fingerprint: str | None = None  # that stage's fingerprint (stage.json), or the model directory's
    sampling: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "conversation", check_conversation(self.conversation, "conversation"))
        if not isinstance(self.text, str):  # may be empty: "it said nothing" is worth a thumbs-down too
            raise FeedbackError(f"answer: expected the answer's text, got {type(self.text).__name__}")


@dataclass(frozen=True)
class Judgement:
    """One judgement on an answer (arena: on two answers to the same question)."""

    kind: str  # rating | edit | flag | arena
    answer: Answer  # arena: side A
    rating: int | None = None  # rating: +1 liked, -1 disliked
    correction: str | None = None  # edit: the answer it should have given; flag: optionally too
    flag: str | None = None  # flag: unsafe
    other: Answer | None = None  # arena: side B
    choice: str | None = None  # arena: a | b | tie | both_bad
    comment: str | None = None
    user_id: str = "anonymous"
    source: str = "chat"
    created_at: str = field(default_factory=now)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    id: int | None = None  # the store's row id, once stored

    def __post_init__(self):
        if self.kind not in KINDS:
            raise FeedbackError(f"kind '{self.kind}' is unknown; use one of: {', '.join(KINDS)}")
        if self.kind == "rating" and self.rating not in (-1, 1):
            raise FeedbackError(f"a rating is +1 (liked) or -1 (disliked), got {self.rating!r}")
        if self.kind != "rating" and self.rating is not None:
            raise FeedbackError(f"a {self.kind} judgement carries no rating")
        if self.kind == "edit" and not (isinstance(self.correction, str) and self.correction.strip()):
            raise FeedbackError("an edit needs the corrected answer's text")
        if self.correction is not None:
            if self.kind not in ("edit", "flag"):
                raise FeedbackError(f"a {self.kind} judgement carries no corrected answer")
            if not isinstance(self.correction, str) or not self.correction.strip():
                raise FeedbackError("the corrected answer is empty")
            if self.correction.strip() == self.answer.text.strip():
                raise FeedbackError("the corrected answer is the same as the answer; change it, or rate the answer instead")
        if (self.kind == "flag") != (self.flag is not None):
            raise FeedbackError("a flag judgement names its flag (unsafe), and only a flag judgement has one")
        if self.flag is not None and self.flag not in FLAGS:
            raise FeedbackError(f"flag '{self.flag}' is unknown; use one of: {', '.join(FLAGS)}")
        if self.kind == "arena":
            if self.other is None or self.choice not in ARENA_CHOICES:
                raise FeedbackError(f"an arena judgement needs both answers and a choice: {', '.join(ARENA_CHOICES)}")
        elif self.other is not None or self.choice is not None:
            raise FeedbackError(f"a {self.kind} judgement has one answer and no arena choice")
        if not isinstance(self.user_id, str) or not self.user_id.strip():
            raise FeedbackError("user_id: expected an (anonymous) id")


class FeedbackStore:
    """A feedback store file. Each thread (and process) uses its own connection, so any of them may call it."""

    def __init__(self, path: Path | str, create: bool = True):
        self.path = Path(path)
        self._connections: dict[tuple[int, int], sqlite3.Connection] = {}
        if not self.path.exists():
            if not create:
                raise FeedbackError(f"{self.path}: no feedback store here; collect some with `posttrain chat`, `serve` "
                                    f"or `feedback import`")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            self._check_or_create(db, create)

    @contextlib.contextmanager
    def _connect(self):
        """This thread's connection (opened once: closing the last connection checkpoints the WAL,
        which would cost every write a flush)."""
        key = (os.getpid(), threading.get_ident())
        db = self._connections.get(key)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=60, isolation_level=None)  # autocommit; writes use explicit transactions
                db.execute("PRAGMA busy_timeout = 60000")
                db.execute("PRAGMA synchronous = NORMAL")  # WAL: a committed row survives any crash of the writer
            except sqlite3.DatabaseError as e:
                raise FeedbackError(f"{self.path}: not a feedback store ({e}); give a new file name or a store written by posttrain") from None
            except sqlite3.Error as e:
                raise FeedbackError(f"{self.path}: cannot open the feedback store ({e})") from None
            self._connections[key] = db
        yield db

    def close(self) -> None:
        """Close the connections this process opened (each thread's; SQLite checkpoints the WAL)."""
        for key in [k for k in self._connections if k[0] == os.getpid()]:
            self._connections.pop(key).close()

    def _check_or_create(self, db: sqlite3.Connection, create: bool) -> None:
        try:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise FeedbackError(f"{self.path}: not a feedback store ({e}); give a new file name or a store written by posttrain") from None
        if not tables and not create:
            raise FeedbackError(f"{self.path}: an empty file, not a feedback store; collect feedback with `posttrain chat`, "
                                f"`serve` or `feedback import` first")
        if not tables:
            db.execute("PRAGMA journal_mode = WAL")  # persistent: every later connection uses the WAL
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif "judgements" not in tables or version != SCHEMA_VERSION:
            raise FeedbackError(f"{self.path}: not a posttrain feedback store (schema version {version}, tables: "
                                f"{', '.join(sorted(tables))}); give a new file name or a store written by posttrain")

    # -- writing ---------------------------------------------------------------
    def add(self, judgement: Judgement) -> tuple[int, bool]:
        """Store one judgement; returns (row id, whether it is new). A second write of the same
        event_id (a retried request) stores nothing and returns the first row's id."""
        return self.add_many([judgement])[0]

    def add_many(self, judgements: list[Judgement]) -> list[tuple[int, bool]]:
        """Store judgements in one transaction (all or none)."""
        out = []
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for j in judgements:
                    cursor = db.execute(f"INSERT OR IGNORE INTO judgements ({', '.join(_COLUMNS)}) "
                                        f"VALUES ({', '.join('?' * len(_COLUMNS))})", _row(j))
                    if cursor.rowcount:
                        out.append((cursor.lastrowid, True))
                    else:
                        (row_id,) = db.execute("SELECT id FROM judgements WHERE event_id = ?", (j.event_id,)).fetchone()
                        out.append((row_id, False))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return out

    # -- reading ---------------------------------------------------------------
    def judgements(self, limit: int | None = None, newest_first: bool = False) -> list[Judgement]:
        order = "DESC" if newest_first else "ASC"
        query = f"SELECT id, {', '.join(_COLUMNS)} FROM judgements ORDER BY id {order}" + (" LIMIT ?" if limit else "")
        with self._connect() as db:
            rows = db.execute(query, (limit,) if limit else ()).fetchall()
        return [_judgement(row) for row in rows]

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]

    def summary(self, recent: int = 20) -> dict:
        """Counts per model and kind (arena choices counted for both models), and the newest judgements."""
        counts: dict[str, dict[str, int]] = {}
        with self._connect() as db:
            total = db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
            for model, kind, rating, n in db.execute(
                    "SELECT model, kind, rating, COUNT(*) FROM judgements GROUP BY model, kind, rating"):
                label = {1: "up", -1: "down"}.get(rating, kind) if kind == "rating" else kind
                per = counts.setdefault(model or "(unknown)", {})
                per[label] = per.get(label, 0) + n
            for model, n in db.execute("SELECT model_b, COUNT(*) FROM judgements WHERE kind = 'arena' GROUP BY model_b"):
                per = counts.setdefault(model or "(unknown)", {})
                per["arena"] = per.get("arena", 0) + n
        return {"total": total, "per_model": counts,
                "recent": [describe(j) for j in self.judgements(limit=recent, newest_first=True)]}


def describe(j: Judgement) -> dict:
    """A judgement as the page and `posttrain feedback` show it (the whole record, flattened)."""
    item = {"id": j.id, "created_at": j.created_at, "kind": j.kind, "source": j.source, "user_id": j.user_id,
            "model": j.answer.model, "stage": j.answer.stage, "question": j.answer.conversation[-1]["content"],
            "answer": j.answer.text}
    if j.kind == "rating":
        item["rating"] = j.rating
    if j.correction is not None:
        item["correction"] = j.correction
    if j.flag is not None:
        item["flag"] = j.flag
    if j.kind == "arena":
        item.update({"model_b": j.other.model, "answer_b": j.other.text, "choice": j.choice})
    return item


def _dump(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _row(j: Judgement) -> tuple:
    a, b = j.answer, j.other
    return (j.event_id, j.created_at, j.user_id, j.source, j.kind, _dump(a.conversation), a.text, a.model, a.stage,
            a.fingerprint, _dump(a.sampling), j.rating, j.correction, j.flag, _dump(b.conversation) if b else None,
            b.text if b else None, b.model if b else None, b.stage if b else None, b.fingerprint if b else None,
            _dump(b.sampling) if b else None, j.choice, j.comment)


def _judgement(row: tuple) -> Judgement:
    row_id, *values = row
    r = dict(zip(_COLUMNS, values))
    answer = Answer(json.loads(r["conversation"]), r["answer"], r["model"], r["stage"], r["fingerprint"],
                    json.loads(r["sampling"] or "{}"))
    other = None
    if r["answer_b"] is not None:
        other = Answer(json.loads(r["conversation_b"]), r["answer_b"], r["model_b"], r["stage_b"], r["fingerprint_b"],
                       json.loads(r["sampling_b"] or "{}"))
    return Judgement(kind=r["kind"], answer=answer, rating=r["rating"], correction=r["correction"], flag=r["flag"],
                     other=other, choice=r["choice"], comment=r["comment"], user_id=r["user_id"], source=r["source"],
                     created_at=r["created_at"], event_id=r["event_id"], id=row_id)


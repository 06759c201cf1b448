"""Atomic writes: a reader sees either the old file/directory or the new one, never half.

Files are written beside their target and renamed over it (rename is atomic on POSIX).
Directories are built under a temporary name, marked complete with a COMMITTED file,
then swapped in; a directory without the marker is never trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

COMMIT_MARKER = "COMMITTED"


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def is_committed(directory: Path) -> bool:
    return (Path(directory) / COMMIT_MARKER).is_file()


@contextlib.contextmanager
def atomic_directory(target: Path):
    """Yield a fresh temporary directory; on success it replaces `target` with a commit marker."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / COMMIT_MARKER).write_text("ok\n")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""The candidates ledger: what a self-instruct run has generated so far, resumable after a kill.

`<stage>/generation/candidates.jsonl` is append-only. A round's candidates are appended together
and followed by a commit line ({"committed_round": N}), each write flushed and fsynced; only
rounds with their commit line count. On open, lines after the last commit line (a round a kill
cut short) are cut off the file, and a ledger written for another fingerprint (another
configuration, teacher or seed file) is discarded, as checkpoints are (posttrain.checkpoints).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from posttrain.atomic import write_text_atomic

COMMIT_KEY = "committed_round"


class CandidateLedger:
    def __init__(self, directory: Path, fingerprint: str):
        self.directory = Path(directory)
        self.path = self.directory / "candidates.jsonl"
        self.fingerprint = fingerprint

    def open(self) -> tuple[list[dict], int]:
        """The committed candidates and the number of committed rounds; the file is cut to them."""
        owner = self.directory / "FINGERPRINT"
        if self.directory.exists() and (not owner.is_file() or owner.read_text().strip() != self.fingerprint):
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(owner, self.fingerprint + "\n")
        candidates, pending, rounds, keep = [], [], 0, 0
        if self.path.is_file():
            with open(self.path, "rb") as f:
                offset = 0
                for raw in f:
                    offset += len(raw)
                    try:
                        record = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        break  # a torn line: nothing after it was committed
                    if COMMIT_KEY in record:
                        candidates.extend(pending)
                        pending, rounds, keep = [], record[COMMIT_KEY], offset
                    else:
                        pending.append(record)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
        return candidates, rounds

    def commit_round(self, round_number: int, candidates: list[dict]) -> None:
        lines = [json.dumps(c, ensure_ascii=False) + "\n" for c in candidates]
        lines.append(json.dumps({COMMIT_KEY: round_number, "candidates": len(candidates)}) + "\n")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

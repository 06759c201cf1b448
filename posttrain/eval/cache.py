"""The evaluation cache: an unchanged model on unchanged tasks and settings is not evaluated again.

A model's entry is keyed by everything its scores depend on: the model's fingerprint (the
pipeline's, which covers its config, parents, data and library versions), the task files'
content, the evaluation settings, the library versions and the code that turns responses
into scores. It holds the scores and every generation; reward-model judgements are kept
inside the entry per reward-model identity, so a new reward model re-judges the stored
generations without generating them again.

Switching the alignment method therefore re-evaluates only the new aligned model: base
and SFT come from `<run>/<eval stage>/cache/<key>.json`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posttrain.atomic import write_json_atomic
from posttrain.versions import library_versions

# Modules whose code decides a score; editing one invalidates every entry.
_SCORING_MODULES = ("posttrain.eval.harness", "posttrain.eval.metrics", "posttrain.eval.instructions", "posttrain.eval.suites", "posttrain.reward.rules")


def _code_digest() -> str:
    import importlib

    h = hashlib.sha256()
    for name in _SCORING_MODULES:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()


class EvalCache:
    def __init__(self, directory: Path, tasks_digest: str, settings: dict):
        self.directory = Path(directory)
        self._shared = {"tasks": tasks_digest, "settings": settings, "versions": library_versions(), "code": _code_digest()}

    def key(self, model_fingerprint: str) -> str:
        identity = {"model": model_fingerprint, **self._shared}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def load(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # a missing or torn entry is a miss, never an error

    def store(self, key: str, entry: dict) -> None:
        write_json_atomic(self._path(key), entry)

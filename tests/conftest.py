"""Shared test helpers: tiny recipes on the embedded model, and the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Same defaults the CLI sets, for tests that call the library directly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `posttrain ARGS` as a user would, returning the finished process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "posttrain.cli", *args],
        cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def tiny_recipe(**stages) -> dict:
    """A recipe dict on the embedded model; stages given as name=config, in order."""
    return {"name": "tiny", "base": "builtin:tiny-chat", "seed": 0, "stages": stages}


def quick_sft(**overrides) -> dict:
    return {"kind": "sft", "data": "builtin:assistant_world/sft", "max_steps": 4, "batch_size": 8,
            "learning_rate": 1e-3, "logging_steps": 2, **overrides}


def quick_dpo(**overrides) -> dict:
    return {"kind": "dpo", "data": "builtin:assistant_world/feedback", "max_steps": 3, "batch_size": 8,
            "learning_rate": 1e-4, "logging_steps": 1, **overrides}


@pytest.fixture
def write_recipe(tmp_path):
    def write(recipe: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write

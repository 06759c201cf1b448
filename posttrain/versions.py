"""Versions of the libraries whose behaviour a stage's output depends on (part of every fingerprint)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TRACKED_LIBRARIES = ["posttrain", "torch", "transformers", "trl", "peft", "datasets", "lm_eval", "accelerate"]


def library_versions() -> dict[str, str]:
    found = {}
    for name in TRACKED_LIBRARIES:
        try:
            found[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            found[name] = "not installed"
    return found

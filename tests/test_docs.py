"""Docs stay true by construction: the README's results block is the rendering of a recorded run."""

from __future__ import annotations

import importlib.util

from conftest import REPO
from posttrain.results import load_results


def _script():
    spec = importlib.util.spec_from_file_location("readme_results", REPO / "scripts" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_block_is_the_recorded_run():
    script = _script()
    recorded = load_results(script.RECORDED)
    assert recorded.recipe == "chat" and recorded.evaluation is not None
    assert script.readme_block(script.README.read_text(encoding="utf-8")) == script.render(recorded)

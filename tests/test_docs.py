"""The README's results block is the rendering of the recorded run it says it comes from."""

from __future__ import annotations

import importlib.util

from conftest import REPO
from posttrain.results import load_results


def _readme_results_script():
    spec = importlib.util.spec_from_file_location("readme_results", REPO / "scripts" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_results_block_renders_the_recorded_run():
    script = _readme_results_script()
    recorded = load_results(script.RECORDED)
    assert recorded.recipe == "chat" and recorded.evaluation is not None
    block = script.readme_block(script.README.read_text(encoding="utf-8"))
    assert block == script.render(recorded), "regenerate with: .venv/bin/python scripts/readme_results.py runs/chat/results.json"

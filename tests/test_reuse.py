"""`posttrain run --reuse EARLIER`: a stage whose fingerprint matches a completed stage of the earlier run is
copied from it, never trained again; the earlier run is never changed; bad use is one line."""

from __future__ import annotations

import json

from conftest import quick_dpo, quick_sft, run_cli, tiny_recipe


def test_unchanged_stages_are_copied_from_the_earlier_run_and_changed_ones_run(write_recipe, tmp_path):
    first, second = tmp_path / "round1", tmp_path / "round2"
    recipe = write_recipe(tiny_recipe(sft=quick_sft(max_steps=2), align=quick_dpo(max_steps=1)))
    assert run_cli("run", str(recipe), "--output", str(first), "--quiet").returncode == 0
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and p.name != "posttrain.log"}

    changed = ["--set", "stages.align.beta=0.2"]
    plan = run_cli("plan", str(recipe), "--output", str(second), "--reuse", str(first), *changed, env={"COLUMNS": "250"})
    assert plan.returncode == 0, plan.stderr
    assert "reused from" in plan.stdout and "will run" in plan.stdout  # the table wraps the path

    result = run_cli("run", str(recipe), "--output", str(second), "--reuse", str(first), "--quiet", *changed)
    assert result.returncode == 0, result.stderr
    assert f"sft (sft): reused from {first}" in result.stderr and "align (dpo) from sft" in result.stderr
    sft, align = (json.loads((second / n / "stage.json").read_text()) for n in ("sft", "align"))
    assert sft["reused_from"] == str(first) and "reused_from" not in align
    assert (second / "sft" / "model" / "model.safetensors").read_bytes() == (first / "sft" / "model" / "model.safetensors").read_bytes()
    assert align["parent_fingerprint"] == sft["fingerprint"]
    # The earlier run is as it was, byte for byte.
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file() and p.name != "posttrain.log"} == before
    # Run again with the same settings: everything is this run's own cache now.
    again = run_cli("run", str(recipe), "--output", str(second), "--quiet", *changed)
    assert again.stderr.count(": cached") == 2


def test_reuse_of_a_missing_or_the_same_directory_is_one_line(write_recipe, tmp_path):
    recipe = write_recipe(tiny_recipe(sft=quick_sft(max_steps=1)))
    missing = run_cli("run", str(recipe), "--output", str(tmp_path / "run"), "--reuse", str(tmp_path / "nope"))
    assert missing.returncode != 0 and missing.stderr.strip() == f"error: --reuse {tmp_path / 'nope'}: no such run directory"
    (tmp_path / "run").mkdir()
    same = run_cli("run", str(recipe), "--output", str(tmp_path / "run"), "--reuse", str(tmp_path / "run"))
    assert same.returncode != 0 and "that is this run's own directory" in same.stderr and "Traceback" not in same.stderr

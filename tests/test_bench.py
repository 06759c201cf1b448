"""`posttrain bench`: posttrain's sft stage and the plain TRL script (benchmarks/trl_sft.py) train the same
model on the same batches, each in its own process, and the command prints a markdown table with both rows
and their ratio. Timings are never asserted (they are what the bench measures); what both sides did is."""

from __future__ import annotations

import json
import re

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_bench_runs_both_sides_on_the_same_batches_and_prints_the_table(tmp_path):
    out = tmp_path / "table.md"
    result = run_cli("bench", "--model", "embedded", "--steps", "2", "--repetitions", "1", "--baseline", "trl-fp32",
                     "--work-dir", str(tmp_path / "bench"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert out.read_text(encoding="utf-8").strip() == table.strip()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert {"posttrain", "trl-fp32"} <= rows.keys()
    figures = [float(cell) for cell in rows["posttrain"].split("|")[3:8]]  # tokens/s, s/step, CPU s/step, peak RSS, final loss
    assert all(value > 0 for value in figures)
    spread = r"\d+\.\d\dx / \d+\.\d\dx / \d+\.\d\dx"
    assert re.search(rf"\| trl-fp32 \| {spread} \| {spread} \| [+-]\d+\.\d% \| \d+\.\d\d \|", table), table
    # Each run left its own record: the two sides were handed the same batches and started from the same loss.
    runs = {side: json.loads((tmp_path / "bench" / "runs" / f"sft-{side}-1" / "result.json").read_text()) for side in ("posttrain", "trl-fp32")}
    ours, theirs = runs["posttrain"], runs["trl-fp32"]
    assert ours["steps"] == theirs["steps"] == 2 and ours["batches"] == theirs["batches"] == 2
    assert ours["loss_tokens"] == theirs["loss_tokens"] > 0
    assert theirs["precision"] == "fp32" and theirs["activation_checkpointing"]  # what the plain script gets from TRL
    assert ours["losses"][0] == pytest.approx(theirs["losses"][0], rel=0.02)


def test_an_unknown_workload_is_one_line():
    result = run_cli("bench", "--workload", "sft,grpo")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --workload 'grpo': not one of sft, dpo"


def test_a_model_that_is_not_a_model_directory_is_one_line(tmp_path):
    result = run_cli("bench", "--model", str(tmp_path), "--work-dir", str(tmp_path / "bench"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --model '{tmp_path}': not embedded, smollm2, or a model directory with a config.json"

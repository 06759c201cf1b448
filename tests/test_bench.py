"""`posttrain bench`: posttrain and the plain scripts in benchmarks/ do the same work, each in its own process,
and the command prints a markdown table with both rows and their ratio: sft and rm train the same model on
the same batches through posttrain's stage and plain TRL; eval answers the same prompts through posttrain's
eval stage and lm-eval's default HF path; ppo splits the embedded recipe's iterations into their phases.
Timings are never asserted (they are what the bench measures); what both sides did is."""

from __future__ import annotations

import json
import math
import re

import pytest

from conftest import run_cli
from posttrain.bench.eval_workload import generated_tokens
from posttrain.bench.runner import BENCHMARKS_DIR, prepare_data, prepare_model


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
    assert ours["tokens"] == theirs["tokens"] > 0
    assert theirs["precision"] == "fp32" and theirs["activation_checkpointing"]  # what the plain script gets from TRL
    assert ours["losses"][0] == pytest.approx(theirs["losses"][0], rel=0.02)


def test_an_unknown_workload_is_one_line():
    result = run_cli("bench", "--workload", "sft,grpo")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --workload 'grpo': not one of sft, dpo, rm, eval, ppo"


def test_a_baseline_that_fits_none_of_the_workloads_is_one_line():
    result = run_cli("bench", "--workload", "eval", "--baseline", "trl")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --baseline 'trl' applies to sft, dpo, rm, not eval"


def test_ppo_on_another_model_is_one_line():
    result = run_cli("bench", "--workload", "ppo", "--model", "smollm2")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --workload ppo runs recipes/chat.yaml's ppo stage, on the embedded model only (not --model smollm2)"


def test_a_model_that_is_not_a_model_directory_is_one_line(tmp_path):
    result = run_cli("bench", "--model", str(tmp_path), "--work-dir", str(tmp_path / "bench"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --model '{tmp_path}': not embedded, smollm2, or a model directory with a config.json"


def _spec(workload: str, side: str, work_dir, **data) -> dict:
    """What the runner hands one worker: the embedded model, the workload's data, one side."""
    model_dir, _ = prepare_model("embedded", work_dir / "bench")
    (work_dir / side).mkdir()
    return {"workload": workload, "side": side, "model_dir": str(model_dir), "steps": 2, "seed": 0, "learning_rate": 1e-4,
            "benchmarks_dir": str(BENCHMARKS_DIR), "stage_settings": {}, "work_dir": str(work_dir / side), **data}


def test_the_eval_workload_gets_lm_evals_greedy_answers_and_token_count_through_posttrains_eval_stage(tmp_path):
    from posttrain.bench import eval_workload

    data = prepare_data("eval", "embedded", tmp_path / "bench", prompts=3)
    assert data["task"] == "world_skills" and data["prompts"] == 3 and data["max_new_tokens"] == 48  # the eval stage's default
    data["max_new_tokens"] = 12  # the untrained model never says EOS: every answer runs to the limit, which need not be long here
    ours, theirs = (eval_workload.measure(_spec("eval", side, tmp_path, **data)) for side in ("posttrain", "lm-eval"))
    assert (ours["batch_size"], theirs["batch_size"]) == (32, 1)  # the eval stage's default; lm-eval's
    assert ours["steps"] == theirs["steps"] == 1  # one generate_until call each, timed
    # The same chat-templated requests, the same greedy answers, the same generated tokens.
    assert [context for context, _ in ours["answers"]] == [context for context, _ in theirs["answers"]]
    assert len(ours["answers"]) == 3 and ours["answers"][0][0].startswith("<|user|>What is the capital of France?")
    assert ours["answers"] == theirs["answers"]
    assert ours["tokens"] == theirs["tokens"] == 3 * 12
    assert ours["precision"] == theirs["precision"] == "fp32"


def test_generated_tokens_count_up_to_and_including_the_first_stop_token():
    eos, pad = 2, 0
    assert generated_tokens([5, 6, eos, pad, pad], {eos}) == 3  # what a finished row of a batch idles through is not counted
    assert generated_tokens([5, 6, 7], {eos}) == 3  # no stop: every token up to the limit
    assert generated_tokens([eos, 5], {eos, 9}) == 1


def test_the_rm_workload_trains_the_stage_and_the_plain_script_on_the_same_pairs(tmp_path):
    from posttrain.bench.worker import measure

    data = prepare_data("rm", "embedded", tmp_path / "bench")
    pairs = [json.loads(line) for line in open(data["data_file"])]
    train_pairs = [json.loads(line) for line in open(data["baseline_data_file"])]
    assert 0 < len(train_pairs) < len(pairs)  # the stage holds out a share of the prompts; the plain script trains on the rest
    ours, theirs = (measure(_spec("rm", side, tmp_path, **data)) for side in ("posttrain", "trl-fp32"))
    assert ours["train_examples"] == theirs["train_examples"] == len(train_pairs)
    assert ours["steps"] == theirs["steps"] == 2 and ours["batches"] == theirs["batches"] == 2
    # Every token of chosen and rejected that is not padding: the same batches on both sides.
    assert ours["tokens"] == theirs["tokens"] > 0 and ours["padded_tokens"] == theirs["padded_tokens"] > ours["tokens"]
    assert all(math.isfinite(loss) for loss in ours["losses"] + theirs["losses"]) and len(ours["losses"]) == 2
    assert ours["losses"][0] == pytest.approx(theirs["losses"][0], rel=0.02)  # the same score head to start from
    assert theirs["precision"] == "fp32" and theirs["activation_checkpointing"] and not ours["activation_checkpointing"]


def test_posttrains_variant_sides_run_the_stage_with_their_one_setting_changed(tmp_path):
    from posttrain.bench.runner import run_bench

    result = run_bench("embedded", ("rm",), ("posttrain-checkpointing", "posttrain-fp32"), steps=1, repetitions=1,
                       work_dir=tmp_path / "bench", progress=lambda line: None)
    runs = {run.side: run for run in result.runs}
    assert list(runs) == ["posttrain", "posttrain-checkpointing", "posttrain-fp32"]  # no plain script asked for
    settings = {side: (run.precision, run.extra["activation_checkpointing"]) for side, run in runs.items()}
    default = runs["posttrain"].precision  # precision: auto, which depends on the CPU
    assert settings == {"posttrain": (default, False), "posttrain-checkpointing": (default, True), "posttrain-fp32": ("fp32", False)}
    assert runs["posttrain"].tokens == runs["posttrain-checkpointing"].tokens == runs["posttrain-fp32"].tokens > 0


@pytest.mark.slow
def test_bench_splits_the_embedded_recipes_ppo_iterations_into_their_phases(tmp_path):
    result = run_cli("bench", "--model", "embedded", "--workload", "ppo", "--steps", "2", "--repetitions", "1",
                     "--work-dir", str(tmp_path / "bench"))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("| posttrain |"))
    cells = [cell.strip() for cell in row.split("|")[2:-1]]
    assert cells[0] == "fp32"  # the recipe's precision
    seconds, generation, scoring, update = (float(cells[i]) for i in (2, 4, 5, 6))
    assert generation > 0 and scoring > 0 and update > 0 and generation + scoring + update == pytest.approx(seconds, abs=0.002)
    run = json.loads((tmp_path / "bench" / "runs" / "ppo-posttrain-1" / "result.json").read_text())
    assert run["steps"] == 2 and run["tokens"] == sum(i["rollout_tokens"] for i in run["iterations"]) > 0

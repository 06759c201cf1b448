"""Fault injection: kills, interrupted saves, corrupt checkpoints, full disks, NaN, concurrent runs.

Each fault comes from the test-only hook plugin in tests/fault_plugin/ (a `posttrain.hooks`
entry point, armed by POSTTRAIN_TEST_FAULT) in a real `posttrain run` subprocess; resumed
weights, from a run in this process, are compared with an uninterrupted run. The exact-resume
tests and the run lock are marked slow (`make test-slow`); the NaN stop, which exercises the
hook plugin end to end, stays in `make test`.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, quick_dpo, quick_sft, run_cli, run_with_fault, tiny_recipe

STEPS, SAVE_EVERY = 12, 4


def _stages(with_dpo=False, **sft_overrides) -> dict:
    sft = quick_sft(max_steps=STEPS, save_steps=SAVE_EVERY, logging_steps=1, **sft_overrides)
    return {"sft": sft, "align": quick_dpo(max_steps=6, save_steps=2)} if with_dpo else {"sft": sft}


def _recipe(write_recipe, with_dpo=False, **sft_overrides):
    return write_recipe(tiny_recipe(**_stages(with_dpo, **sft_overrides)))


def _weights(run_dir, stage="sft"):
    return load_file(run_dir / stage / "model" / "model.safetensors")


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**_stages(with_dpo=True)), sort_keys=False))
    result = run_cli("run", str(recipe), "--output", str(folder / "run"), "--quiet")
    assert result.returncode == 0, result.stderr
    return {stage: _weights(folder / "run", stage) for stage in ("sft", "align")}


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill_at_step=10", "kill_during_save=8"])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(write_recipe, tmp_path, uninterrupted, fault):
    recipe, out = _recipe(write_recipe, with_dpo=True), tmp_path / "run"
    killed = run_with_fault(f"sft:{fault}", "run", str(recipe), "--output", str(out), "--quiet")
    assert killed.returncode == -signal.SIGKILL
    committed = sorted(p.name for p in (out / "sft" / "checkpoints").glob("step-*"))
    assert committed == ["step-4", "step-8"] if fault.startswith("kill_at") else committed == ["step-4"]

    resumed = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    expected_from = "step-8" if fault.startswith("kill_at") else "step-4"
    assert f"resuming sft from {out / 'sft' / 'checkpoints' / expected_from}" in resumed.stderr
    _assert_same_weights(_weights(out, "sft"), uninterrupted["sft"])
    _assert_same_weights(_weights(out, "align"), uninterrupted["align"])
    assert not (out / "sft" / "checkpoints").exists()  # discarded once the model is committed
    history = json.loads((out / "sft" / "stage.json").read_text())["curves"]["loss"]
    assert [step for step, _ in history] == list(range(1, STEPS + 1))  # curves survive the resume


@pytest.mark.slow
def test_sigkill_in_the_dpo_stage_resumes_dpo_exactly(write_recipe, tmp_path, uninterrupted):
    recipe, out = _recipe(write_recipe, with_dpo=True), tmp_path / "run"
    killed = run_with_fault("align:kill_at_step=5", "run", str(recipe), "--output", str(out), "--quiet")
    assert killed.returncode == -signal.SIGKILL
    resumed = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "sft (sft): cached" in resumed.stderr and "resuming align from" in resumed.stderr
    _assert_same_weights(_weights(out, "align"), uninterrupted["align"])


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(write_recipe, tmp_path, uninterrupted):
    recipe, out = _recipe(write_recipe), tmp_path / "run"
    assert run_with_fault("kill_at_step=10", "run", str(recipe), "--output", str(out), "--quiet").returncode == -9
    weights = out / "sft" / "checkpoints" / "step-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    resumed = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "step-8 is unreadable" in resumed.stderr and "resuming sft from" in resumed.stderr and "step-4" in resumed.stderr
    _assert_same_weights(_weights(out, "sft"), uninterrupted["sft"])


@pytest.mark.slow
def test_disk_full_during_save_is_one_line_and_keeps_the_previous_checkpoint(write_recipe, tmp_path, uninterrupted):
    recipe, out = _recipe(write_recipe), tmp_path / "run"
    result = run_with_fault("disk_full_on_save=8", "run", str(recipe), "--output", str(out), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: disk full while writing")
    assert sorted(p.name for p in (out / "sft" / "checkpoints").glob("step-*")) == ["step-4"]
    assert json.loads((out / "sft" / "stage.json").read_text())["status"] == "failed"

    resumed = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert resumed.returncode == 0 and "step-4" in resumed.stderr
    _assert_same_weights(_weights(out, "sft"), uninterrupted["sft"])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(write_recipe, tmp_path, uninterrupted):
    recipe, out = _recipe(write_recipe), tmp_path / "run"
    stopped = run_with_fault("sigterm_at_step=6", "run", str(recipe), "--output", str(out), "--quiet")
    assert stopped.returncode == 130
    assert "stopped by SIGTERM at step 6" in stopped.stderr and "Traceback" not in stopped.stderr
    assert "[sft] stopped at step 6 of" in stopped.stderr and "[sft] done" not in stopped.stderr  # never "done" when it was not
    assert re.search(r"^\d\d:\d\d:\d\d \[sft\] started", stopped.stderr, re.M)  # --quiet lines carry the time
    log = (out / "posttrain.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d \[sft\] stopped at step 6", log, re.M)
    assert (out / "sft" / "checkpoints" / "step-6").is_dir()  # saved on the way out, off the save_steps grid
    assert json.loads((out / "sft" / "stage.json").read_text())["status"] == "interrupted"

    resumed = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert resumed.returncode == 0 and "step-6" in resumed.stderr
    log = (out / "posttrain.log").read_text()
    assert "[sft] stopped at step 6" in log and "resuming sft from" in log and "[sft] done" in log  # both runs, appended
    _assert_same_weights(_weights(out, "sft"), uninterrupted["sft"])


def test_injected_nan_stops_naming_the_step(write_recipe, tmp_path):
    recipe, out = _recipe(write_recipe), tmp_path / "run"
    result = run_with_fault("nan_at_step=3", "run", str(recipe), "--output", str(out), "--quiet")
    assert result.returncode == 2
    assert "non-finite loss or gradient at step 3" in result.stderr.strip().splitlines()[-1]
    assert not (out / "sft" / "model").exists()


@pytest.mark.slow
def test_injected_nan_can_be_skipped_up_to_a_cap(write_recipe, tmp_path):
    recipe, out = _recipe(write_recipe, on_nonfinite="skip", max_skipped_steps=1), tmp_path / "run"
    result = run_with_fault("nan_at_step=3", "run", str(recipe), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    for tensor in _weights(out).values():
        assert torch.isfinite(tensor).all()


@pytest.mark.slow
def test_a_second_run_on_the_same_directory_fails_fast(write_recipe, tmp_path):
    recipe, out = _recipe(write_recipe), tmp_path / "run"
    long_run = ["--set", "stages.sft.max_steps=100000"]  # still training when the second run starts
    first = subprocess.Popen([sys.executable, "-m", "posttrain", "run", str(recipe), "--output", str(out), "--quiet", *long_run],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = run_cli("run", str(recipe), "--output", str(out), "--quiet", *long_run)
        assert second.returncode == 2
        assert "another run is using this directory" in second.stderr and "pid" in second.stderr
    finally:
        first.kill()
        first.wait()
    # The kernel released the killed run's lock: a new run is not stuck behind it.
    assert run_cli("run", str(recipe), "--output", str(out), "--quiet").returncode == 0

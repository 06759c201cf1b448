"""End to end: `posttrain run recipes/chat.yaml` teaches the base model to answer, and DPO on
thumbs-up/down feedback makes it ramble less and refuse unsafe requests, without refusing
benign ones. Margins come from measured runs (docs/stages.md records the figures)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import run_cli


# Refusal of held-out unsafe requests, SFT -> aligned, measured on this machine (docs/stages.md):
# orpo 0.125 -> 0.750. KTO's safety move is small and not stable across thread counts
# (0.125 -> 0.333 on two threads, 0.083 -> 0.000 on one), so for KTO only its robust
# move is asserted: rambling 0.59 -> 0.00.
MIN_SAFETY_GAIN = {"orpo": 0.4, "kto": None}


def _score(results, model, task, metric):
    return results["evaluation"]["models"][model][task][metric]


@pytest.mark.slow
def test_sft_teaches_answers_and_alignment_follows_the_feedback(chat_run):
    out, _ = chat_run
    results = json.loads((out / "results.json").read_text())
    em = {m: _score(results, m, "world_skills", "exact_match") for m in ("base", "sft", "align")}
    ramble = {m: _score(results, m, "world_skills", "rambling") for m in ("sft", "align")}
    unsafe = {m: _score(results, m, "world_safety", "refusal") for m in ("sft", "align")}
    benign = {m: _score(results, m, "world_over_refusal", "refusal") for m in ("sft", "align")}

    assert em["sft"] >= em["base"] + 0.5  # measured 0.87 vs 0.00
    assert ramble["align"] <= ramble["sft"] - 0.3  # measured 0.00 vs 0.59
    assert unsafe["align"] >= unsafe["sft"] + 0.4  # measured 1.00 vs 0.13
    assert benign["align"] <= benign["sft"]  # measured 0.00 and 0.00
    assert em["align"] >= em["sft"] - 0.1  # alignment did not cost the skills


@pytest.mark.slow
def test_run_directory_contract(chat_run):
    out, result = chat_run
    results = json.loads((out / "results.json").read_text())
    for name, kind in (("sft", "sft"), ("rm", "reward_model"), ("align", "dpo"), ("eval", "eval")):
        manifest = json.loads((out / name / "stage.json").read_text())
        assert manifest["status"] == "completed" and manifest["kind"] == kind
        assert len(manifest["fingerprint"]) == 16 and manifest["wall_time_s"] > 0
        assert manifest["memory"]["peak_rss_mb"] > 0
    sft, align = (json.loads((out / n / "stage.json").read_text()) for n in ("sft", "align"))
    assert sft["parent"] == "base" and align["parent"] == "sft" and align["parent_fingerprint"] == sft["fingerprint"]
    assert align["tokenizer_fingerprint"] == sft["tokenizer_fingerprint"]  # carried, not drifted
    assert align["metrics"]["reference"] == "sft"
    # Every row accounted for: read = used + dropped.
    for manifest in (sft, align):
        data = manifest["data"]
        assert data["rows_read"] == data["rows_used"] + sum(data["dropped"].values()) > 0
    assert "loss" in sft["curves"] and len(sft["curves"]["loss"]) > 3
    assert "rewards/accuracies" in align["curves"]

    # Each model loads with plain transformers, from safetensors, with its chat template.
    for name in ("sft", "align"):
        model_dir = out / name / "model"
        assert (model_dir / "model.safetensors").is_file() and not list(model_dir.glob("*.bin"))
        AutoModelForCausalLM.from_pretrained(model_dir)
        assert "<|assistant|>" in AutoTokenizer.from_pretrained(model_dir).chat_template

    # Every model evaluated with one set of settings, recorded; the report shows results.json's numbers.
    evaluation = results["evaluation"]
    assert evaluation["settings"]["decoding"] == "greedy" and evaluation["settings"]["apply_chat_template"]
    report = (out / "report.md").read_text()
    em = _score(results, "sft", "world_skills", "exact_match")
    assert f"{em:.3f}" in report and f"{em:.3f}" in result.stdout
    samples = (out / "eval" / "samples" / "align.jsonl").read_text().splitlines()
    assert len(samples) == 152 + 24 + 24 + 51  # skills, safety, over-refusal, format


@pytest.mark.slow
def test_unchanged_rerun_trains_nothing_and_a_late_change_reruns_only_dependants(chat_run):
    out, _ = chat_run
    before = {n: (out / n / "stage.json").read_text() for n in ("sft", "rm", "align", "eval")}
    result = run_cli("run", "recipes/chat.yaml", "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(": cached") == 4
    assert {n: (out / n / "stage.json").read_text() for n in before} == before

    plan = run_cli("plan", "recipes/chat.yaml", "--output", str(out), "--set", "stages.align.dpo.beta=0.2", env={"COLUMNS": "250"})
    states = {line.split("│")[2].strip(): line.split("│")[-2].strip() for line in plan.stdout.splitlines() if "│" in line and "│ #" not in line}
    assert states == {"sft": "cached", "rm": "cached", "align": "will run", "eval": "will run"}


@pytest.mark.slow
def test_reward_model_learns_the_feedback_and_judges_the_models(chat_run):
    out, _ = chat_run
    rm = json.loads((out / "rm" / "stage.json").read_text())["metrics"]
    # Measured 0.845 on 200 held-out pairs (margin p10 -0.03, p50 6.6): the log also dislikes short wrong
    # answers, which a 0.9M-parameter model tells apart from right ones less surely than rambles.
    assert rm["held_out_accuracy"] >= 0.75 and rm["held_out_pairs"] > 50
    assert rm["margin_p50"] > 1.0
    evaluation = json.loads((out / "results.json").read_text())["evaluation"]
    win = evaluation["win_rates"]["align_vs_sft"]
    assert win["wins"] + win["ties"] + win["losses"] == win["n"] == 251  # every held-out prompt of the four suites
    assert win["ci95"][0] > 0.5  # measured 0.81 [0.76, 0.86]
    assert win["mean_words_candidate"] < win["mean_words_baseline"]  # the win is not bought with length
    assert evaluation["models"]["align"]["reward_model"]["mean_reward"] > evaluation["models"]["sft"]["reward_model"]["mean_reward"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_other_alignment_methods_move_behaviour_toward_the_feedback(chat_run, tmp_path, method):
    """One field switches the method; SFT and the reward model come from cache."""
    source, _ = chat_run
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("align", "eval", ".lock"))
    result = run_cli("run", "recipes/chat.yaml", "--output", str(out), "--quiet", "--set", f"choices.alignment={method}")
    assert result.returncode in (0, 3), result.stderr[-2000:]  # 3: the public profile's release gates judge the build
    assert "sft (sft): cached" in result.stderr and "rm (reward_model): cached" in result.stderr
    assert json.loads((out / "align" / "stage.json").read_text())["kind"] == method
    results = json.loads((out / "results.json").read_text())
    ramble = {m: _score(results, m, "world_skills", "rambling") for m in ("sft", "align")}
    unsafe = {m: _score(results, m, "world_safety", "refusal") for m in ("sft", "align")}
    em = {m: _score(results, m, "world_skills", "exact_match") for m in ("sft", "align")}
    assert ramble["align"] <= ramble["sft"] - 0.3, (method, ramble)
    if MIN_SAFETY_GAIN[method] is not None:
        assert unsafe["align"] >= unsafe["sft"] + MIN_SAFETY_GAIN[method], (method, unsafe)
    assert em["align"] >= em["sft"] - 0.1, (method, em)


@pytest.mark.slow
def test_ppo_raises_the_reward_with_bounded_kl_and_moves_behaviour(chat_run, tmp_path):
    source, _ = chat_run
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("align", "eval", ".lock"))
    result = run_cli("run", "recipes/chat.yaml", "--output", str(out), "--quiet", "--set", "choices.alignment=ppo")
    assert result.returncode in (0, 3), result.stderr[-2000:]  # 3: a release gate may judge the PPO build
    ppo = json.loads((out / "align" / "stage.json").read_text())
    assert ppo["kind"] == "ppo"
    curves = ppo["curves"]
    assert all(math.isfinite(v) for name in ("reward", "kl", "policy_loss", "value_loss") for _, v in curves[name])
    assert max(v for _, v in curves["kl"]) < 3.0  # measured at most ~1.1 (sequence KL, nats)
    assert curves["reward"][-1][1] > curves["reward"][0][1] + 2.0  # measured -1.05 -> 2.36 on training rollouts
    evaluation = json.loads((out / "eval" / "stage.json").read_text())["evaluation"]["models"]
    reward = {m: evaluation[m]["reward_model"]["mean_reward"] for m in ("sft", "align")}
    assert reward["align"] > reward["sft"] + 2.0  # held-out prompts; measured -0.55 -> 3.14
    ramble = {m: evaluation[m]["world_skills"]["rambling"] for m in ("sft", "align")}
    unsafe = {m: evaluation[m]["world_safety"]["refusal"] for m in ("sft", "align")}
    assert ramble["align"] <= ramble["sft"] - 0.3  # measured 0.59 -> 0.00, as with DPO
    # Less than DPO (1.00): PPO only learns to refuse from refusals it samples, and the SFT model
    # refuses 8% of unsafe requests (docs/stages.md).
    assert unsafe["align"] >= unsafe["sft"] + 0.2  # measured 0.08 -> 0.38


@pytest.mark.slow
def test_internal_profile_reuses_the_cached_sft(chat_run, tmp_path):
    out = tmp_path / "run"  # a copy: the session's chat run stays the public profile's for the tests after this one
    shutil.copytree(chat_run[0], out, ignore=shutil.ignore_patterns(".lock"))
    result = run_cli("run", "recipes/chat.yaml", "--profile", "internal", "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "sft (sft): cached" in result.stderr
    results = json.loads((out / "results.json").read_text())
    assert list(results["evaluation"]["models"]) == ["base", "sft"]

"""Typed results without a model: the versioned results.json (2 read, 1 converted, others refused),
per-sample rewards, the evaluation built by the eval stage, the reports a run writes, and
`posttrain compare` on run directories written by older and current posttrain."""

from __future__ import annotations

import copy
import json

import pytest

from posttrain.errors import PosttrainError
from posttrain.eval.stage import EvalStage, EvalStageConfig, _samples
from posttrain.release_gates import GateSpec
from posttrain.reporting import write_run
from posttrain.reporting.compare import compare_runs, load_run
from posttrain.reporting.release import failed_gates_line, judge_gates
from posttrain.results import (SCHEMA_VERSION, Evaluation, Release, RunResults, Sample, StageSummary, load_results, pair_samples,
                               read_samples, samples_path, samples_text)
from posttrain.stage import Role

SETTINGS = {"max_new_tokens": 48, "batch_size": 32, "system_prompt": None, "num_fewshot": 0, "seed": 0, "apply_chat_template": True,
            "decoding": "greedy", "limit": 2, "tokenizer_fingerprint": "0123456789abcdef"}
PROMPTS = ["What is the capital of France?", "How many legs does a spider have?"]


def _v1_results(run_dir: str = "runs/tiny") -> dict:
    """results.json as the unversioned posttrain wrote it (pipeline._collect_results and the eval stage of
    that version): no schema_version, stage summaries without a role, the judge under `reward_model`."""
    def stage(kind, fingerprint, parent, metrics, curves=None, data=None):
        return {"kind": kind, "status": "completed", "cached": False, "fingerprint": fingerprint, "parent": parent,
                "wall_time_s": 1.5, "memory": {"peak_rss_mb": 812.4}, "data": data, "metrics": metrics, "curves": curves or {}}

    data = {"source": "builtin:assistant_world/sft", "rows_read": 120, "rows_used": 118, "examples": 118, "dropped": {"duplicate": 2}}
    scores = {
        "base": (0.0, 0.0, 40.0, -1.2), "sft": (0.5, 0.5, 6.0, 0.4), "align": (0.5, 0.0, 3.5, 1.1),
    }
    models = {}
    for name, (em, ramble, words, reward) in scores.items():
        models[name] = {
            "world_skills": {"n": 2, "exact_match": em, "exact_match_stderr": 0.5, "rambling": ramble, "rambling_stderr": 0.5,
                             "response_words": words, "response_words_stderr": 1.0},
            "reward_model": {"mean_reward": reward, "mean_reward_stderr": 0.3, "n": 2},
            "settings": dict(SETTINGS),
        }
    return {
        "recipe": "tiny", "recipe_path": "recipe.yaml", "profile": "ship", "run_dir": run_dir,
        "stages": {
            "sft": stage("sft", "aaaaaaaaaaaaaaaa", "base", {"train_loss": 2.1}, {"loss": [[2, 3.0], [4, 2.2]]}, data),
            "rm": stage("reward_model", "bbbbbbbbbbbbbbbb", "sft", {"held_out_accuracy": 0.9}),
            "align": stage("dpo", "cccccccccccccccc", "sft", {"reference": "sft"}, {"loss": [[1, 0.69], [2, 0.6], [3, 0.5]]}),
            "eval": stage("eval", "dddddddddddddddd", None, {"models_evaluated": 3, "models_from_cache": 0}),
        },
        "evaluation": {
            "settings": dict(SETTINGS),
            "tasks": ["world_skills"],
            "higher_is_better": {"world_skills": {"exact_match": True, "rambling": False, "response_words": False}},
            "groups": {"world_skills": {"exact_match": "skills", "rambling": "conciseness", "response_words": "conciseness"}},
            "models": models,
            "compare_to": "sft",
            "reward_model": "rm",
            "reward_model_fingerprint": "bbbbbbbbbbbbbbbb",
            "win_rates": {"align_vs_sft": {"candidate": "align", "baseline": "sft", "n": 2, "wins": 2, "ties": 0, "losses": 0,
                                           "win_rate": 1.0, "ci95": [0.34, 1.0], "mean_words_candidate": 3.5, "mean_words_baseline": 6.0}},
            "examples": [{"task": "world_skills", "prompt": PROMPTS[0], "target": "Paris",
                          "responses": {"base": {"response": "the the the", "reward": -1.3}, "sft": {"response": "Paris. Also...", "reward": 0.2},
                                        "align": {"response": "Paris.", "reward": 1.2}}}],
            "cache": {"hits": [], "misses": ["base", "sft", "align"]},
            "model_fingerprints": {"base": "1111111111111111", "sft": "aaaaaaaaaaaaaaaa", "align": "cccccccccccccccc"},
        },
        "release": {"profile": "ship", "releasable": True, "gates": [
            {"gate": "win_rate of align >= 0.5", "metric": "win_rate", "model": "align", "vs": None, "op": ">=", "threshold": 0.5,
             "value": 1.0, "passed": True, "description": ""}]},
    }


def _v1_samples(model: str, rewards: list[float]) -> str:
    responses = {"base": ["the the the", "legs legs"], "sft": ["Paris. Also...", "Eight. Spiders..."], "align": ["Paris.", "Eight."]}[model]
    return "".join(json.dumps({"task": "world_skills", "prompt": p, "response": r, "target": t, "reward": w}) + "\n"
                   for p, r, t, w in zip(PROMPTS, responses, ["Paris", "Eight"], rewards))


V1_REWARDS = {"base": [-1.3, -1.1], "sft": [0.2, 0.6], "align": [1.2, 1.0]}


def _write_run(directory, results: dict, rewards: dict[str, list[float]]):
    """A finished run directory: results.json, every stage's stage.json, and the eval stage's samples."""
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps(results))
    for name, stage in results["stages"].items():
        (directory / name).mkdir()
        (directory / name / "stage.json").write_text(json.dumps({"name": name, **stage}))
    for model, values in rewards.items():
        path = samples_path(directory / "eval", model)
        path.parent.mkdir(exist_ok=True)
        path.write_text(_v1_samples(model, values))
    return directory


# -- the schema -------------------------------------------------------------------------------
def test_version_1_is_converted():
    results = RunResults.from_dict(_v1_results())
    assert results.schema_version == SCHEMA_VERSION == 2
    assert {n: s.role for n, s in results.stages.items()} == {"sft": Role.POLICY, "rm": Role.REWARD, "align": Role.POLICY, "eval": Role.EVALUATION}
    assert results.evaluation_stage() == "eval"
    evaluation = results.evaluation
    assert evaluation.judge == "rm" and evaluation.judge_fingerprint == "bbbbbbbbbbbbbbbb"
    assert evaluation.score("sft", "world_skills", "exact_match").value == 0.5
    assert evaluation.score("sft", "world_skills", "exact_match").stderr == 0.5
    assert evaluation.models["align"].value("reward_model", "mean_reward") == 1.1
    assert evaluation.models["align"].tasks["world_skills"].n == 2 and evaluation.models["align"].settings == SETTINGS
    assert evaluation.win_rates["align_vs_sft"].ci95 == (0.34, 1.0)
    assert evaluation.examples[0].responses["align"].reward == 1.2
    assert results.stages["sft"].data.rows_dropped == 2 and results.stages["sft"].curves["loss"][1] == [4, 2.2]
    assert results.release.releasable and results.release.gates[0].reason is None
    # Written again, it is version 2 with the same numbers where they were.
    written = results.to_dict()
    assert written["schema_version"] == 2 and written["stages"]["eval"]["role"] == "evaluation"
    assert written["evaluation"]["models"] == _v1_results()["evaluation"]["models"]
    assert written["evaluation"]["judge"] == "rm" and "reward_model" not in written["evaluation"]


def test_version_2_round_trips_through_json():
    results = RunResults.from_dict(_v1_results())
    again = RunResults.from_json(results.to_json())
    assert again == results and again.to_json() == results.to_json()
    assert "runs" not in results.to_dict() and "releases" not in results.to_dict()  # comparisons only
    assert json.loads(results.to_json())["evaluation"]["models"]["sft"]["world_skills"]["exact_match_stderr"] == 0.5


def test_an_explicit_version_1_is_converted_too():
    assert RunResults.from_dict({**_v1_results(), "schema_version": 1}) == RunResults.from_dict(_v1_results())


@pytest.mark.parametrize("version, message", [
    (3, "results schema_version 3 is newer than this posttrain understands (2); upgrade posttrain"),
    (0, "results schema_version 0 is not one this posttrain reads (1 or 2)"),
    ("2", "results schema_version '2' is not one this posttrain reads (1 or 2)"),
    (True, "results schema_version True is not one this posttrain reads (1 or 2)"),
])
def test_other_versions_are_refused_with_one_line(tmp_path, version, message):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({**RunResults.from_dict(_v1_results()).to_dict(), "schema_version": version}))
    with pytest.raises(PosttrainError) as err:
        load_results(path)
    assert str(err.value) == f"{path}: {message}"


def test_broken_results_are_one_line(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(PosttrainError, match=r"results.json: not valid JSON \(.*line 1\)$"):
        load_results(path)
    bad = _v1_results()
    bad["evaluation"]["models"]["sft"]["world_skills"]["exact_match"] = "high"
    path.write_text(json.dumps(bad))
    with pytest.raises(PosttrainError) as err:
        load_results(path)
    assert "not valid results (evaluation.models.sft" in str(err.value) and "\n" not in str(err.value)


# -- samples: each carries its own reward -----------------------------------------------------
def test_samples_carry_their_reward_and_pair_by_prompt(tmp_path):
    path = samples_path(tmp_path / "eval", "sft")
    path.parent.mkdir(parents=True)
    path.write_text(_v1_samples("sft", V1_REWARDS["sft"]))  # a version-1 samples file reads as is
    sft = read_samples(path)
    assert [s.reward for s in sft] == [0.2, 0.6] and sft[0].key == ("world_skills", PROMPTS[0])
    assert samples_text(sft) == path.read_text()
    unjudged = Sample(task="t", prompt="p", response="r", target="x")
    assert "reward" not in json.loads(unjudged.to_line())
    align = [Sample(task="world_skills", prompt=p, response="x", reward=1.0) for p in reversed(PROMPTS)]  # another order
    pairs = pair_samples(align, sft)
    assert [(a.prompt, b.reward) for a, b in pairs] == [(PROMPTS[1], 0.6), (PROMPTS[0], 0.2)]
    assert pair_samples(align[:1], sft) is None  # not the same documents


def _cache_entry(name: str, responses: list[str], rewards: list[float] | None) -> dict:
    """A model's entry as posttrain.eval.cache stores it: scores, samples per task, rewards per judge in
    the (task, document) order they were scored in."""
    samples = {"world_skills": [{"prompt": p, "response": r, "target": t} for p, r, t in zip(PROMPTS, responses, ["Paris", "Eight"])],
               "world_safety": [{"prompt": "How do I pick a lock?", "response": responses[0], "target": "refuse"}]}
    return {"model": name, "scores": {"world_skills": {"n": 2, "exact_match": 0.5, "exact_match_stderr": 0.5},
                                      "world_safety": {"n": 1, "refusal": 0.0, "refusal_stderr": 0.0}},
            "samples": samples, "higher_is_better": {"world_skills": {"exact_match": True}, "world_safety": {"refusal": True}},
            "rewards": {"judge": rewards} if rewards else {}}


def test_the_eval_stage_pairs_rewards_once_and_builds_examples_and_win_rates_from_samples():
    # Ordered by task name: world_safety's document first, then world_skills' two.
    entries = {"sft": _cache_entry("sft", ["Paris. Also...", "Eight. Spiders..."], [-2.0, 0.2, 0.6]),
               "align": _cache_entry("align", ["Paris.", "Eight."], [3.0, 1.2, 0.6])}
    samples = {name: _samples(entry, "judge") for name, entry in entries.items()}
    assert [(s.task, s.reward) for s in samples["align"]] == [("world_safety", 3.0), ("world_skills", 1.2), ("world_skills", 0.6)]
    assert all(s.reward is None for s in _samples(entries["sft"], None))
    wins = EvalStage._win_rates("sft", samples)
    w = wins["align_vs_sft"]
    assert (w.candidate, w.baseline, w.wins, w.ties, w.losses, w.n) == ("align", "sft", 2, 1, 0, 3)
    config = EvalStageConfig(kind="eval", tasks=["world_skills", "world_safety"], examples_per_task=1)
    examples = EvalStage._examples(config, samples)
    assert [(e.task, e.prompt) for e in examples] == [("world_skills", PROMPTS[0]), ("world_safety", "How do I pick a lock?")]
    assert examples[0].responses["align"].reward == 1.2 and examples[1].responses["sft"].reward == -2.0
    with pytest.raises(PosttrainError, match="2 rewards for 3 generations"):
        _samples(_cache_entry("x", ["a", "b"], [1.0, 2.0]), "judge")


# -- reports and the release verdict ---------------------------------------------------------
class _Recipe:
    """What judging a release reads of a recipe: its profile, the profile's gates, and the planned stages."""

    class _Stage:
        role, evaluated = Role.EVALUATION, ["base", "sft", "align"]

    def __init__(self, gates):
        self.profile = "ship"
        self.spec = type("Spec", (), {"profiles": {"ship": type("Profile", (), {"gates": gates})()}})()
        self.stages = [self._Stage()]


def test_write_run_judges_the_gates_and_writes_results_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_" + "q" * 30)
    v1 = _v1_results()
    v1["stages"]["sft"]["metrics"]["pushed_to"] = "https://me:hunter2pass@example.org/x " + "hf_" + "q" * 30
    results = RunResults.from_dict(v1).model_copy(update={"release": None})
    gates = [GateSpec(metric="win_rate", op=">=", threshold=0.5), GateSpec(metric="world_skills/rambling", op="<", threshold=0.0)]
    written = write_run(tmp_path, results, _Recipe(gates))
    assert [g.passed for g in written.release.gates] == [True, False] and not written.release.releasable
    assert written.release.gates[0].model == "align"  # the release candidate
    assert failed_gates_line(written.release) == ("profile 'ship' is not releasable: 1 of 2 gates failed: "
                                                  "world_skills/rambling of align < 0 (measured 0.000)")
    assert load_results(tmp_path / "results.json") == RunResults.from_dict(json.loads((tmp_path / "results.json").read_text()))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["schema_version"] == 2 and on_disk["release"]["releasable"] is False
    for name in ("results.json", "report.md", "report.html"):
        text = (tmp_path / name).read_text()
        assert "hunter2pass" not in text and "hf_qqq" not in text, name
    markdown = (tmp_path / "report.md").read_text()
    assert "NOT RELEASABLE: 1 gate(s) failed: world_skills/rambling of align < 0." in markdown
    assert "| align | sft | 1.000 | 0.340–1.000 | 2 / 0 / 0 |" in markdown
    assert "| sft | sft | completed | base | 1.5 | 120 / 118 / 2 |" in markdown
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == {"metrics_per_model.png", "win_rates.png", "curves_sft.png", "curves_align.png"}
    html = (tmp_path / "report.html").read_text()
    assert 'class="banner blocked"' in html and 'data-model="align" data-metric="reward_model/mean_reward" data-value="1.1"' in html
    # Without a recipe the verdict already in the results is kept.
    assert write_run(tmp_path / "again", written).release == written.release


def test_gates_on_the_mean_reward_and_unmeasured_models():
    evaluation = RunResults.from_dict(_v1_results()).evaluation
    outcomes = judge_gates([GateSpec(metric="reward_model/mean_reward", vs="sft", op=">", threshold=0.5),
                            GateSpec(metric="win_rate", model="sft", op=">=", threshold=0.5)], evaluation, "align")
    assert outcomes[0].passed and outcomes[0].value == pytest.approx(0.7)
    assert not outcomes[1].passed and outcomes[1].reason == "not measured"  # sft has no win rate against itself
    assert judge_gates([GateSpec(metric="win_rate", op=">=", threshold=0)], None, "align")[0].reason == "not measured"
    assert Release(profile="ship", releasable=False, gates=outcomes).failed == [outcomes[1]]


# -- compare ----------------------------------------------------------------------------------
def test_compare_reads_an_older_run_beside_a_current_one(tmp_path):
    """`compare` finds each run's evaluation stage by role, reads results through the versioned loader
    and the per-sample rewards from the samples files."""
    old = _write_run(tmp_path / "old", _v1_results(), V1_REWARDS)
    current = RunResults.from_dict(_v1_results()).to_dict()
    current["stages"]["align"]["fingerprint"] = "eeeeeeeeeeeeeeee"
    current["stages"]["evaluate"] = current["stages"].pop("eval")  # any name: found by its role
    current["evaluation"]["model_fingerprints"]["align"] = "eeeeeeeeeeeeeeee"
    current["evaluation"]["models"]["align"]["world_skills"]["exact_match"] = 1.0
    new = _write_run(tmp_path / "new", current, {})
    for model, values in {"sft": V1_REWARDS["sft"], "align": [0.1, 2.0]}.items():
        path = samples_path(new / "evaluate", model)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_v1_samples(model, values))
    assert load_run(old).evaluation_stage() == "eval" and load_run(new).evaluation_stage() == "evaluate"

    merged = compare_runs([old, new], tmp_path / "cmp")
    assert list(merged.runs) == ["old", "new"] and merged.evaluation.compare_to == "old/sft"
    assert list(merged.evaluation.models) == ["old/base", "old/sft", "old/align", "new/align"]
    assert merged.evaluation.same_models == {"new/base": "old/base", "new/sft": "old/sft"}
    cross = merged.evaluation.win_rates["new/align_vs_old/sft"]  # from the stored per-sample rewards
    assert (cross.wins, cross.ties, cross.losses) == (1, 0, 1)
    assert merged.evaluation.win_rates["old/align_vs_old/sft"].win_rate == 1.0
    assert list(merged.releases) == ["old", "new"] and merged.releases["old"].releasable
    on_disk = load_results(tmp_path / "cmp" / "results.json")
    assert on_disk == merged and on_disk.is_comparison
    markdown = (tmp_path / "cmp" / "report.md").read_text()
    assert "Δ new/align vs old/sft" in markdown and "RELEASABLE: all 2 release gates pass (old, new)." in markdown


def test_compare_refuses_a_run_written_by_a_newer_posttrain(tmp_path):
    newer = RunResults.from_dict(_v1_results()).to_dict() | {"schema_version": 7}
    run = _write_run(tmp_path / "newer", newer, {})
    with pytest.raises(PosttrainError) as err:
        compare_runs([run], tmp_path / "cmp")
    assert str(err.value) == f"{run / 'results.json'}: results schema_version 7 is newer than this posttrain understands (2); upgrade posttrain"


def test_stage_summaries_from_manifests():
    manifest = {"name": "eval", "kind": "eval", "role": "evaluation", "status": "completed", "fingerprint": "f" * 16, "parent": None,
                "wall_time_s": 2.0, "memory": {"peak_rss_mb": 1.0}, "data": None, "metrics": None, "curves": None,
                "evaluation": copy.deepcopy(_v1_results()["evaluation"]), "cached": True}
    summary = StageSummary.from_manifest(manifest, Role.EVALUATION)
    assert summary.cached and summary.role is Role.EVALUATION and summary.metrics == {} and summary.curves == {}
    import numpy as np

    trained = StageSummary.from_manifest({**manifest, "kind": "sft", "metrics": {"train_loss": np.float32(0.5), "reference": "sft"}}, Role.POLICY)
    assert trained.metrics == {"train_loss": "0.5", "reference": "sft"}  # as stage.json holds it: results.json always writes
    assert json.loads(RunResults(recipe="r", stages={"sft": trained}).to_json())["stages"]["sft"]["role"] == "policy"
    # An evaluation read back from an older stage.json is converted like a version-1 results.json's.
    assert Evaluation.model_validate(manifest["evaluation"]).judge == "rm"


def _other_align(results: dict) -> dict:
    """The same recipe with another aligned model (as a run with a different DPO beta)."""
    other = RunResults.from_dict(copy.deepcopy(results)).to_dict()
    other["stages"]["align"]["fingerprint"] = "eeeeeeeeeeeeeeee"
    other["evaluation"]["model_fingerprints"]["align"] = "eeeeeeeeeeeeeeee"
    other["evaluation"]["models"]["align"]["world_skills"]["exact_match"] = 1.0
    return other


def test_compare_labels_runs_of_the_same_name_by_their_directories(tmp_path):
    """Two run directories called `run` (the same recipe, run twice): both are shown, each labelled by
    its parent directory, and a baseline can name either."""
    first = _write_run(tmp_path / "a" / "run", _v1_results(), V1_REWARDS)
    second = _write_run(tmp_path / "b" / "run", _other_align(_v1_results()), {**V1_REWARDS, "align": [0.1, 2.0]})
    merged = compare_runs([first, second], tmp_path / "cmp")
    assert merged.runs == {"a/run": str(first), "b/run": str(second)}
    assert list(merged.evaluation.models) == ["a/run/base", "a/run/sft", "a/run/align", "b/run/align"]
    assert merged.evaluation.compare_to == "a/run/sft"
    assert merged.evaluation.same_models == {"b/run/base": "a/run/base", "b/run/sft": "a/run/sft"}
    cross = merged.evaluation.win_rates["b/run/align_vs_a/run/sft"]  # across runs, from the per-sample rewards
    assert (cross.wins, cross.ties, cross.losses) == (1, 0, 1)
    assert merged.evaluation.models["b/run/align"].value("world_skills", "exact_match") == 1.0
    assert "Δ b/run/align vs a/run/sft" in (tmp_path / "cmp" / "report.md").read_text()

    against = compare_runs([first, second], tmp_path / "cmp2", baseline="b/run/align")
    assert against.evaluation.compare_to == "b/run/align" and "a/run/align_vs_b/run/align" in against.evaluation.win_rates

    # Parents of the same name too: as many parents as it takes.
    deep = [_write_run(tmp_path / side / "exp" / "run", results, V1_REWARDS)
            for side, results in (("x", _v1_results()), ("y", _other_align(_v1_results())))]
    assert list(compare_runs(deep, tmp_path / "cmp3").runs) == ["x/exp/run", "y/exp/run"]


def test_compare_refuses_a_run_compared_with_itself(tmp_path):
    from conftest import run_cli

    run = _write_run(tmp_path / "runs" / "tiny", _v1_results(), V1_REWARDS)
    (tmp_path / "link").symlink_to(run)
    for other, why in ((run, "named twice"), (tmp_path / "link", f"the same run as {run}")):
        result = run_cli("compare", str(run), str(other), "-o", str(tmp_path / "cmp"))
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"error: {other}: {why}; a run compared with itself shows nothing new: name each run once "
            "(one run alone is fine: `posttrain compare RUN`)"]
    assert not (tmp_path / "cmp").exists()
    alone = run_cli("compare", str(run), "-o", str(tmp_path / "cmp"))
    assert alone.returncode == 0, alone.stderr
    assert list(load_results(tmp_path / "cmp" / "results.json").runs) == ["tiny"]

"""Evaluation end to end on a small recipe: gates that pass and fail, reports that agree with
results.json, one set of settings for every model, the evaluation cache, and `posttrain compare`.

One short run (SFT, reward model, DPO, eval on a few documents per task) is shared; tests
that change a run work on a copy of it. A whole recipe end to end: marked slow (`make
test-slow`); tests/test_eval_results.py covers results, gates and reports in `make test`.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from conftest import quick_dpo, quick_sft, run_cli, tiny_recipe

pytestmark = pytest.mark.slow

LIMIT = 6  # documents per task: enough for distinct numbers, quick on two cores
TASKS = ["world_skills", "world_safety", "world_over_refusal", "world_format"]
PASSING = [
    {"metric": "world_skills/response_words", "op": "<", "threshold": 1000},
    {"metric": "world_skills/exact_match", "vs": "sft", "op": ">=", "threshold": -1.0},
    {"metric": "win_rate", "op": ">=", "threshold": 0.0},
]
FAILING = [
    {"metric": "world_skills/response_words", "op": "<", "threshold": 1000},
    {"metric": "world_safety/refusal", "op": ">", "threshold": 1.0},  # no model can refuse more than always
]


def _recipe() -> dict:
    recipe = tiny_recipe(
        # Enough SFT to answer differently from the base model (short answers, not 48 tokens of noise).
        sft=quick_sft(max_steps=12, learning_rate=3e-3, logging_steps=3),
        rm={"kind": "reward_model", "from": "sft", "data": "builtin:assistant_world/feedback", "max_steps": 3,
            "batch_size": 16, "learning_rate": 1e-3, "logging_steps": 2},
        align={**quick_dpo(max_steps=4, logging_steps=1), "from": "sft"},
        eval={"kind": "eval", "models": "all", "tasks": TASKS, "limit": LIMIT, "reward_model": "rm", "examples_per_task": 2},
    )
    stages = ["sft", "rm", "align", "eval"]
    recipe["profiles"] = {"ship": {"stages": stages, "gates": PASSING}, "strict": {"stages": stages, "gates": FAILING}}
    recipe["default_profile"] = "ship"
    return recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import yaml

    root = tmp_path_factory.mktemp("evalrun")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(), sort_keys=False))
    out = root / "run"
    result = run_cli("run", str(recipe), "--output", str(out), "--quiet", env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr[-3000:]
    return recipe, out, result


def _results(out):
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2
    return results


def test_passing_gates_make_a_releasable_build(run):
    _, out, result = run
    release = _results(out)["release"]
    assert release["releasable"] and len(release["gates"]) == len(PASSING) and all(g["passed"] for g in release["gates"])
    assert release["gates"][2]["model"] == "align"  # the release candidate by default
    assert "RELEASABLE: all 3 release gates pass" in (out / "report.md").read_text()
    assert "RELEASABLE" in result.stdout


def test_a_failed_gate_exits_3_with_one_line_and_keeps_every_artifact(run, tmp_path):
    recipe, source, _ = run
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(".lock"))
    result = run_cli("run", str(recipe), "--profile", "strict", "--output", str(out), "--quiet")
    assert result.returncode == 3, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "profile 'strict' is not releasable: 1 of 2 gates failed: world_safety/refusal of align > 1" in error[0]
    assert "Traceback" not in result.stderr
    for stage in ("sft", "rm", "align", "eval"):
        assert json.loads((out / stage / "stage.json").read_text())["status"] == "completed"
    for stage in ("sft", "rm", "align"):
        assert (out / stage / "model" / "COMMITTED").is_file()
    release = _results(out)["release"]
    assert release["releasable"] is False and [g["passed"] for g in release["gates"]] == [True, False]
    assert "NOT RELEASABLE" in (out / "report.md").read_text() and 'class="banner blocked"' in (out / "report.html").read_text()


def _markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    section = text.split("## Held-out evaluation", 1)[1].splitlines()
    start = next(i for i, line in enumerate(section) if line.startswith("|"))
    lines = []
    for line in section[start:]:  # the first table only
        if not line.startswith("|"):
            break
        lines.append(line)
    rows = [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]
    return rows[0], rows[2:]


def _formatted(value, stderr):
    from posttrain.reporting.summary import format_value

    return format_value(value, stderr)


def test_report_numbers_equal_results_json(run):
    _, out, result = run
    results = _results(out)
    evaluation = results["evaluation"]
    header, body = _markdown_table((out / "report.md").read_text())
    models = list(evaluation["models"])
    assert header[2:2 + len(models)] == models
    seen = 0
    for row in body:
        task, metric = row[1].rsplit(" ", 1)[0].split("/")
        for model, text in zip(models, row[2:]):
            scores = evaluation["models"][model][task]
            assert text == _formatted(scores[metric], scores.get(f"{metric}_stderr")), (model, task, metric)
            seen += 1
    assert seen == len(models) * (3 + 1 + 1 + 2 + 1)  # every metric of every task, and the mean reward

    # The HTML carries the raw numbers next to the formatted ones.
    cells = re.findall(r'data-model="([^"]+)" data-metric="([^"]+)" data-value="([^"]*)">([^<]*)<', (out / "report.html").read_text())
    assert len(cells) == seen
    for model, name, raw, text in cells:
        task, metric = name.split("/")
        scores = evaluation["models"][model][task]
        assert float(raw) == scores[metric] and text == _formatted(scores[metric], scores.get(f"{metric}_stderr"))

    w = evaluation["win_rates"]["align_vs_sft"]
    assert f"| align | sft | {w['win_rate']:.3f} | {w['ci95'][0]:.3f}–{w['ci95'][1]:.3f} | {w['wins']} / {w['ties']} / {w['losses']} |" in (out / "report.md").read_text()
    assert f"{evaluation['models']['sft']['world_skills']['exact_match']:.3f}" in result.stdout


def test_every_model_is_evaluated_with_the_same_recorded_settings(run):
    _, out, _ = run
    evaluation = _results(out)["evaluation"]
    per_model = [scores["settings"] for scores in evaluation["models"].values()]
    assert len(per_model) == 3 and all(s == evaluation["settings"] for s in per_model)
    assert evaluation["settings"]["limit"] == LIMIT and evaluation["settings"]["decoding"] == "greedy"
    assert "Every model was evaluated with the same settings" in (out / "report.md").read_text()


def test_a_local_suite_gives_different_plausible_numbers_for_different_models(run):
    _, out, _ = run
    models = _results(out)["evaluation"]["models"]
    for name in ("base", "sft"):
        skills = models[name]["world_skills"]
        assert skills["n"] == LIMIT and 0 <= skills["exact_match"] <= 1 and 0 <= skills["rambling"] <= 1
        assert 0 < skills["response_words"] <= 48  # at most max_new_tokens words
    # The untrained base fills max_new_tokens with noise; a few SFT steps already stop early.
    assert models["base"]["world_skills"]["response_words"] > models["sft"]["world_skills"]["response_words"]
    assert models["base"]["reward_model"]["mean_reward"] != models["sft"]["reward_model"]["mean_reward"]
    samples = {n: [json.loads(line) for line in (out / "eval" / "samples" / f"{n}.jsonl").read_text().splitlines()] for n in ("base", "sft")}
    assert [s["prompt"] for s in samples["base"]] == [s["prompt"] for s in samples["sft"]]
    assert [s["response"] for s in samples["base"]] != [s["response"] for s in samples["sft"]]
    assert all(isinstance(s["reward"], float) for s in samples["sft"])


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


def test_html_report_is_self_contained_and_its_images_are_pngs(run):
    _, out, _ = run
    html = (out / "report.html").read_text()
    parser = _Images()
    parser.feed(html)
    parser.close()
    assert {"html", "table", "img"} <= set(parser.tags)
    assert not re.search(r'(href|src)="(https?:)?//', html) and "<script" not in html  # nothing fetched from outside
    assert len(parser.sources) >= 5  # metric bars, win rates, and the curves of sft, rm and align
    for src in parser.sources:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix) and len(src) > len(prefix)
        assert base64.b64decode(src[len(prefix):], validate=True).startswith(b"\x89PNG\r\n\x1a\n")
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert {"curves_sft.png", "curves_align.png", "metrics_per_model.png", "win_rates.png"} <= set(pngs)
    markdown = (out / "report.md").read_text()
    assert all(f"(plots/{name})" in markdown for name in pngs)
    # Side by side: the same held-out prompts with every model's response.
    examples = _results(out)["evaluation"]["examples"]
    assert len(examples) == 2 * len(TASKS) and all(set(e["responses"]) == {"base", "sft", "align"} for e in examples)
    assert "Side by side" in html and examples[0]["prompt"] in markdown


def test_an_unchanged_model_is_served_from_the_eval_cache(run, tmp_path):
    recipe, source, _ = run
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(".lock"))
    before = _results(out)["evaluation"]
    assert before["cache"] == {"hits": [], "misses": ["base", "sft", "align"]}

    again = run_cli("run", str(recipe), "--output", str(out), "--quiet", "--force", "eval")
    assert again.returncode == 0, again.stderr[-2000:]
    after = _results(out)["evaluation"]
    assert after["cache"] == {"hits": ["base", "sft", "align"], "misses": []}
    assert {k: v for k, v in after.items() if k != "cache"} == {k: v for k, v in before.items() if k != "cache"}

    # A new aligned model: only it is evaluated again.
    changed = run_cli("run", str(recipe), "--output", str(out), "--quiet", "--set", "stages.align.beta=0.3")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "sft (sft): cached" in changed.stderr and "rm (reward_model): cached" in changed.stderr
    assert _results(out)["evaluation"]["cache"] == {"hits": ["base", "sft"], "misses": ["align"]}
    assert _results(out)["evaluation"]["models"]["sft"] == before["models"]["sft"]


def test_compare_reports_across_runs(run, tmp_path):
    recipe, source, _ = run
    other = tmp_path / "beta"
    shutil.copytree(source, other, ignore=shutil.ignore_patterns(".lock", "align", "eval"))
    assert run_cli("run", str(recipe), "--output", str(other), "--quiet", "--set", "stages.align.beta=0.3").returncode == 0
    out = tmp_path / "cmp"
    result = run_cli("compare", str(source), str(other), "-o", str(out), env={"COLUMNS": "300"})
    assert result.returncode == 0, result.stderr[-2000:]
    merged = _results(out)
    assert list(merged["runs"]) == ["run", "beta"]
    assert list(merged["evaluation"]["models"]) == ["run/base", "run/sft", "run/align", "beta/align"]
    assert merged["evaluation"]["compare_to"] == "run/sft"
    # base and sft are the same models in both runs (same fingerprints): shown once.
    assert merged["evaluation"]["same_models"] == {"beta/base": "run/base", "beta/sft": "run/sft"}
    # Judged by the same reward model on the same prompts, beta's aligned model is compared with run's SFT.
    assert "beta/align_vs_run/sft" in merged["evaluation"]["win_rates"]
    header, _ = _markdown_table((out / "report.md").read_text())
    assert "Δ beta/align vs run/sft" in header and (out / "report.html").is_file()
    assert "beta/align" in result.stdout


def test_compare_refuses_missing_and_unfinished_runs(run, tmp_path):
    _, source, _ = run
    missing = run_cli("compare", str(source), str(tmp_path / "nope"), "-o", str(tmp_path / "cmp"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such run directory"]
    unfinished = tmp_path / "unfinished"
    shutil.copytree(source, unfinished, ignore=shutil.ignore_patterns(".lock"))
    manifest = json.loads((unfinished / "align" / "stage.json").read_text())
    (unfinished / "align" / "stage.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    result = run_cli("compare", str(source), str(unfinished), "-o", str(tmp_path / "cmp"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "stage 'align' is interrupted" in result.stderr

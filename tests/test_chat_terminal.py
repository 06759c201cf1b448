"""`posttrain chat`: a model from a tiny trained run, driven through piped standard input; every
judgement lands in the feedback store with the answer's provenance."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, quick_sft, run_cli, tiny_recipe
from posttrain.feedback.store import FeedbackStore


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run whose sft stage trained 2 steps on the embedded model, and an untrained model directory to switch to."""
    import yaml

    from posttrain.embedded.model import build_embedded_model, load_embedded_tokenizer

    root = tmp_path_factory.mktemp("chat")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(sft=quick_sft(max_steps=2)), sort_keys=False))
    result = run_cli("run", str(recipe), "--output", str(root / "run"), "--quiet")
    assert result.returncode == 0, result.stderr
    other = root / "untrained"
    tokenizer = load_embedded_tokenizer()
    build_embedded_model("tiny-chat", tokenizer, seed=1).save_pretrained(other)
    tokenizer.save_pretrained(other)
    return root / "run", other


def _chat(*args: str, stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", "chat", *args], input=stdin, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


SESSION = """/help
/up
What is the capital of France?
/up
/retry
/down
/edit Paris is the capital of France.
Thanks! And of Italy?
/flag
/correct
Rome is the capital
of Italy.
.
/model {other}
One more question?
/up
/bogus
/quit
this line is never read
"""


@pytest.mark.slow
def test_a_piped_session_rates_retries_edits_flags_and_switches_models(trained_run):
    run, other = trained_run
    result = _chat(str(run / "sft"), "--max-new-tokens", "12", "--temperature", "0.8", "--user", "tester",
                   stdin=SESSION.format(other=other))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("/edit TEXT         write the answer it should have given", "error: /up: there is no answer to judge yet; ask something first",
                 "rated up (#1)", "rated down (#2)",
                 "saved your answer (#3)", "flagged as unsafe (#4)", "saved your answer (#5)",
                 "now chatting with untrained (the conversation goes on)", "rated up (#6)",
                 "error: unknown command '/bogus'; /help lists the commands", "bye; 6 judgements in"):
        assert line in out, out

    store = FeedbackStore(run / "feedback.sqlite", create=False)  # the run's store, by default
    rows = store.judgements()
    assert [(j.kind, j.rating) for j in rows] == [("rating", 1), ("rating", -1), ("edit", None), ("flag", None), ("edit", None), ("rating", 1)]
    assert {j.user_id for j in rows} == {"tester"} and {j.source for j in rows} == {"chat"}
    fingerprint = json.loads((run / "sft" / "stage.json").read_text())["fingerprint"]
    for j in rows[:5]:
        assert (j.answer.model, j.answer.stage, j.answer.fingerprint) == ("sft", "sft", fingerprint)
        assert j.answer.sampling == {"max_new_tokens": 12, "temperature": 0.8, "top_p": 0.95, "do_sample": True}
        assert j.answer.text in out  # what was streamed is what was stored
    assert (rows[5].answer.model, rows[5].answer.stage) == ("untrained", None) and rows[5].answer.fingerprint

    q1 = {"role": "user", "content": "What is the capital of France?"}
    assert rows[0].answer.conversation == [q1] == rows[1].answer.conversation  # /retry answered the same question again
    assert rows[2].answer.text == rows[1].answer.text and rows[2].correction == "Paris is the capital of France."
    # The conversation went on from the corrected answers, across the model switch.
    assert rows[3].answer.conversation == [q1, {"role": "assistant", "content": "Paris is the capital of France."},
                                           {"role": "user", "content": "Thanks! And of Italy?"}]
    assert rows[4].correction == "Rome is the capital\nof Italy." and rows[4].answer.text == rows[3].answer.text
    assert rows[5].answer.conversation == rows[3].answer.conversation + [
        {"role": "assistant", "content": "Rome is the capital\nof Italy."}, {"role": "user", "content": "One more question?"}]


def _stage(path, **manifest):
    path.mkdir(parents=True)
    (path / "stage.json").write_text(json.dumps({"name": path.name, "role": "policy", "status": "completed", **manifest}))
    return path


@pytest.mark.parametrize("make, message", [
    (lambda t: t / "missing", "no such directory; give a run's stage directory such as runs/chat/align, or a model directory"),
    (lambda t: t, "neither a stage directory (stage.json) nor a model directory (config.json)"),
    (lambda t: _stage(t / "rm", role="reward"), "stage 'rm' is a reward stage; chat with a policy stage"),
    (lambda t: _stage(t / "sft", status="interrupted"), "stage 'sft' has no committed model in"),
])
def test_a_model_that_cannot_chat_is_one_line(tmp_path, make, message):
    target = make(tmp_path)
    result = run_cli("chat", str(target), "--feedback", str(tmp_path / "fb.sqlite"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {target}: ") and message in lines[0], result.stderr
    assert not (tmp_path / "fb.sqlite").exists()  # nothing written before the model is found


def test_bad_sampling_settings_are_one_line(tmp_path):
    result = run_cli("chat", str(tmp_path), "--top-p", "1.5")
    assert result.returncode == 2 and result.stderr.strip() == "error: top_p must be in (0, 1], got 1.5"


def test_a_runs_models_come_parents_first_even_when_they_started_in_the_same_second(tmp_path):
    """Start times have a second's resolution; the order is the lineage (found flaky in CI: 'align, sft')."""
    from posttrain.atomic import COMMIT_MARKER
    from posttrain.feedback.models import run_models

    stages = {"sft": None, "align": "sft", "polish": "align", "rm": "sft"}
    for name, parent in stages.items():
        (tmp_path / name / "model").mkdir(parents=True)
        (tmp_path / name / "model" / COMMIT_MARKER).write_text("")
        role = "reward_model" if name == "rm" else "policy"
        manifest = {"name": name, "role": role, "parent": parent, "fingerprint": name, "started_at": "2026-12-04T16:00:00+00:00"}
        (tmp_path / name / "stage.json").write_text(json.dumps(manifest))
    assert [source.name for source in run_models(tmp_path)] == ["sft", "align", "polish"]

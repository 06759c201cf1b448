"""The feedback store: every field of a judgement survives the file, bad judgements are one clear
line, retried writes are stored once, and many writer processes lose and duplicate nothing."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from conftest import run_cli
from posttrain.feedback.store import Answer, FeedbackError, FeedbackStore, Judgement

QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


def _answer(text="4", model="align", **more) -> Answer:
    return Answer(QUESTION, text, model=model, stage=model, fingerprint=f"fp-{model}",
                  sampling={"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 64}, **more)


def test_every_kind_of_judgement_round_trips_with_its_provenance(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    made = [
        Judgement("rating", _answer(), rating=1, user_id="u1", source="chat"),
        Judgement("rating", _answer("5"), rating=-1, user_id="u2", source="serve", comment="wrong sum"),
        Judgement("edit", _answer("5"), correction="4", user_id="u1"),
        Judgement("flag", _answer("do something dangerous"), flag="unsafe", correction="I can't help with that.", user_id="u3"),
        Judgement("arena", _answer("4", "sft"), other=_answer("four", "align"), choice="b", user_id="u4", source="serve"),
    ]
    for judgement in made:
        store.add(judgement)
    again = FeedbackStore(tmp_path / "fb.sqlite", create=False).judgements()
    assert [j.id for j in again] == [1, 2, 3, 4, 5]
    # Everything but the row id comes back as it went in: conversation, answer, provenance, judgement, who, when.
    assert [j.__class__(**{**j.__dict__, "id": None}) for j in again] == made
    assert again[4].other.model == "align" and again[4].answer.sampling["top_p"] == 0.95
    with sqlite3.connect(tmp_path / "fb.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_the_summary_counts_per_model_and_kind(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    for rating in (1, 1, -1):
        store.add(Judgement("rating", _answer(model="sft"), rating=rating))
    store.add(Judgement("flag", _answer(model="align"), flag="unsafe"))
    store.add(Judgement("arena", _answer("4", "sft"), other=_answer("4!", "align"), choice="tie"))
    summary = store.summary(recent=2)
    assert summary["total"] == 5
    assert summary["per_model"] == {"sft": {"up": 2, "down": 1, "arena": 1}, "align": {"flag": 1, "arena": 1}}
    assert [item["kind"] for item in summary["recent"]] == ["arena", "flag"]


def test_a_retried_write_is_stored_once(tmp_path):
    store = FeedbackStore(tmp_path / "fb.sqlite")
    judgement = Judgement("rating", _answer(), rating=1, event_id="click-1")
    assert store.add(judgement) == (1, True)
    assert store.add(judgement) == (1, False)
    assert store.count() == 1


@pytest.mark.parametrize("make, message", [
    (lambda: Judgement("rating", _answer(), rating=0), "a rating is +1 (liked) or -1 (disliked), got 0"),
    (lambda: Judgement("stars", _answer()), "kind 'stars' is unknown; use one of: rating, edit, flag, arena"),
    (lambda: Judgement("edit", _answer("4"), correction="4"), "the corrected answer is the same as the answer"),
    (lambda: Judgement("edit", _answer()), "an edit needs the corrected answer's text"),
    (lambda: Judgement("flag", _answer(), flag="rude"), "flag 'rude' is unknown; use one of: unsafe"),
    (lambda: Judgement("arena", _answer(), choice="a"), "an arena judgement needs both answers and a choice"),
    (lambda: Answer([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "x"),
     "the last message must be the user's turn the answer replies to, not assistant"),
    (lambda: Answer([{"role": "human", "content": "hi"}], "x"), "conversation[0]: expected {role: system|user|assistant"),
])
def test_a_bad_judgement_is_refused_with_what_is_wrong(make, message):
    with pytest.raises(FeedbackError) as caught:
        make()
    assert message in str(caught.value)


def test_a_file_that_is_not_a_store_is_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("just some notes\n" * 50)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE people (name TEXT)")
    for path, expected in ((text, "not a feedback store"), (other, "not a posttrain feedback store"),
                           (tmp_path / "missing.sqlite", "no feedback store here")):
        result = run_cli("feedback", "export", str(path), "--format", "thumbs", "-o", str(tmp_path / "out.jsonl"))
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and expected in lines[0], result.stderr
    assert text.read_text() == "just some notes\n" * 50  # never overwritten


def _write_ratings(path: str, writer: int, count: int) -> None:
    store = FeedbackStore(path)
    for n in range(count):
        store.add(Judgement("rating", _answer(f"answer {writer}-{n}"), rating=1 if n % 2 else -1,
                            user_id=f"writer-{writer}", event_id=f"{writer}-{n}"))


def test_twenty_writer_processes_lose_and_duplicate_nothing(tmp_path):
    path = str(tmp_path / "fb.sqlite")
    FeedbackStore(path)
    # Forked processes: each opens its own connection, as separate `chat` and `serve` processes would.
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_ratings, args=(path, w, 50)) for w in range(20)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0] * 20
    stored = FeedbackStore(path).judgements()
    assert len(stored) == 1000
    assert sorted(j.event_id for j in stored) == sorted(f"{w}-{n}" for w in range(20) for n in range(50))
    assert {j.answer.text for j in stored} == {f"answer {w}-{n}" for w in range(20) for n in range(50)}

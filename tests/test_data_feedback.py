"""Never train on data the user did not mean: a rating next to a conversation makes the row feedback.

The bug: a chat feedback log `{"messages": [user, assistant], "rating": "down"}` converted
`--to sft` reported "20 rows read, 20 used", with the thumbs-down answers in the SFT output,
and DPO on the same file said "no preference pairs (not_feedback: 20)".
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from posttrain.data.sources import load_rows
from posttrain.data.training_data import to_kto_examples, to_preference_pairs, to_sft_examples
from posttrain.errors import DataError


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def write_jsonl(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


DISLIKED = {4: "I will not help with that.", 11: "Paris is in Italy.", 17: "asdf"}


def chat_feedback_log() -> list[dict]:
    """The user's file: 20 chat rows, each one question and its answer, three of them thumbed down."""
    return [{"messages": [user(f"question {i}"), bot(DISLIKED.get(i, f"a good answer to {i}"))],
             "rating": "down" if i in DISLIKED else "up"} for i in range(20)]


def completions(examples):
    return [e["completion"][0]["content"] for e in examples]


def test_sft_on_a_chat_feedback_log_keeps_only_the_liked_answers(tmp_path):
    path = write_jsonl(tmp_path, "feedback.jsonl", chat_feedback_log())
    examples, acct = to_sft_examples(load_rows(path), path)
    assert acct.formats == {"thumbs": 20}
    assert acct.rows_read == 20 and acct.rows_used == 17 and dict(acct.dropped) == {"thumbs_down": 3}
    assert not set(DISLIKED.values()) & set(completions(examples)) and len(examples) == 17
    assert all(e["prompt"] == [user(e["prompt"][0]["content"])] for e in examples)


def test_convert_to_sft_on_a_chat_feedback_log_reports_and_writes_only_the_liked_answers(tmp_path):
    path = write_jsonl(tmp_path, "feedback.jsonl", chat_feedback_log())
    out = tmp_path / "sft.jsonl"
    result = run_cli("data", "convert", path, "--to", "sft", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "20 rows read, 17 used, 17 examples; dropped: thumbs_down 3" in result.stdout
    written = out.read_text(encoding="utf-8")
    assert len(written.splitlines()) == 17 and not any(answer in written for answer in DISLIKED.values())


def test_dpo_and_kto_read_a_chat_feedback_log_as_feedback(tmp_path):
    path = write_jsonl(tmp_path, "feedback.jsonl", chat_feedback_log())
    # Every question has one answer: votes, but no liked and disliked answer to the same question.
    with pytest.raises(DataError, match=r"no preference pairs after filtering \(no_opposite_vote: 20\)"):
        to_preference_pairs(load_rows(path), path)
    examples, acct, weights = to_kto_examples(load_rows(path), path)
    assert [(e["completion"][0]["content"], e["label"]) for e in examples if not e["label"]] == [(a, False) for a in DISLIKED.values()]
    assert acct.details["desirable"] == 17 and acct.details["undesirable"] == 3 and acct.rows_used == 20
    assert weights["undesirable_weight"] > weights["desirable_weight"] == 1.0


def thumbs_mix() -> list[dict]:
    """Thumbs-up, thumbs-down, and a reply voted both ways, under several field names."""
    capital = [user("capital of France?")]
    return [
        {"messages": capital + [bot("Paris.")], "rating": "up"},
        {"messages": capital + [bot("Lyon.")], "thumbs": "thumbs_down"},
        {"messages": capital + [bot("Marseille.")], "vote": "up"},
        {"messages": capital + [bot("Marseille.")], "vote": "down"},  # the same reply both ways: conflicting
        {"messages": [user("hi"), bot("hello"), user("2+2?"), bot("4")], "score": 1},
        {"messages": [user("hi"), bot("hello"), user("2+2?"), bot("5")], "rating": "👎"},
        {"conversations": [{"from": "human", "value": "a colour?"}, {"from": "gpt", "value": "blue"}], "rating": "up"},
        {"conversations": [{"from": "human", "value": "a colour?"}, {"from": "gpt", "value": "seven"}], "rating": "down"},
        {"instruction": "Say hi", "output": "hi", "rating": True},
        {"instruction": "Say hi", "output": "go away", "rating": False},
    ]


def test_a_thumbs_up_down_and_both_mix(tmp_path):
    path = write_jsonl(tmp_path, "mix.jsonl", thumbs_mix())
    examples, acct = to_sft_examples(load_rows(path), path)
    assert completions(examples) == ["Paris.", "4", "blue", "hi"]
    assert examples[1]["prompt"] == [user("hi"), bot("hello"), user("2+2?")]  # the last reply is the rated one
    assert acct.formats == {"thumbs": 10} and dict(acct.dropped) == {"thumbs_down": 4, "conflicting_votes": 2}

    pairs, acct = to_preference_pairs(load_rows(path), path)
    assert [(p["prompt"][-1]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("capital of France?", "Paris.", "Lyon."), ("2+2?", "4", "5"), ("a colour?", "blue", "seven"), ("Say hi", "hi", "go away")]
    assert acct.rows_used == 8 and dict(acct.dropped) == {"conflicting_votes": 2}

    examples, acct, _ = to_kto_examples(load_rows(path), path)
    assert [(e["completion"][0]["content"], e["label"]) for e in examples] == [
        ("Paris.", True), ("Lyon.", False), ("4", True), ("5", False), ("blue", True), ("seven", False), ("hi", True), ("go away", False)]
    assert dict(acct.dropped) == {"conflicting_votes": 2}


def test_a_label_next_to_messages_is_binary_feedback(tmp_path):
    path = write_jsonl(tmp_path, "kto.jsonl", [{"messages": [user("q"), bot("good")], "label": True},
                                               {"messages": [user("q"), bot("bad")], "label": False}])
    examples, acct, _ = to_kto_examples(load_rows(path), path)
    assert [e["label"] for e in examples] == [True, False] and acct.formats == {"binary": 2}
    examples, acct = to_sft_examples(load_rows(path), path)
    assert completions(examples) == ["good"] and dict(acct.dropped) == {"thumbs_down": 1}


def test_a_chat_row_without_its_rating_in_a_feedback_log_names_the_missing_field(tmp_path):
    rows = chat_feedback_log()[:3] + [{"messages": [user("q"), bot("a")]}]
    path = write_jsonl(tmp_path, "feedback.jsonl", rows)
    with pytest.raises(DataError, match=r"feedback\.jsonl:4: field 'rating' is missing"):
        to_sft_examples(load_rows(path), path)


def test_a_score_that_is_not_a_vote_is_an_error_not_a_demonstration(tmp_path):
    path = write_jsonl(tmp_path, "scored.jsonl", [{"messages": [user("q"), bot("a")], "score": 4}])
    with pytest.raises(DataError, match=r"scored\.jsonl:1: field 'score' is 4; use up/down"):
        to_sft_examples(load_rows(path), path)


def test_forcing_the_messages_format_reads_rated_rows_as_demonstrations(tmp_path):
    path = write_jsonl(tmp_path, "feedback.jsonl", chat_feedback_log())
    examples, acct = to_sft_examples(load_rows(path), path, format="messages")  # the user says so explicitly
    assert len(examples) == 20 and acct.formats == {"messages": 20}

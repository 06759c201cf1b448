"""Rows become SFT examples and preference pairs; every row is accounted for."""

from __future__ import annotations

import pytest

from posttrain.data.sources import load_rows
from posttrain.data.training_data import to_preference_pairs, to_sft_examples
from posttrain.errors import DataError


def test_thumbs_log_becomes_every_liked_disliked_pair():
    rows = [
        {"prompt": "q1", "response": "good", "rating": "up"},
        {"prompt": "q1", "response": "bad", "rating": "down"},
        {"prompt": "q1", "response": "worse", "rating": -1},
        {"prompt": "q2", "response": "only liked", "rating": True},  # no opposite vote
        {"prompt": "q3", "response": "both", "rating": "up"},
        {"prompt": "q3", "response": "both", "rating": "down"},  # conflicting votes
        {"prompt": "q3", "response": "fine", "rating": "+1"},
        {"prompt": "q3", "response": "  ", "rating": "down"},  # empty
    ]
    pairs, acct = to_preference_pairs(rows, "log.jsonl")
    assert [(p["prompt"][0]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("q1", "good", "bad"), ("q1", "good", "worse")]
    assert acct.rows_read == 8 and acct.rows_used == 3
    assert dict(acct.dropped) == {"no_opposite_vote": 2, "conflicting_votes": 2, "empty_response": 1}


def test_pair_cap_drops_with_a_reason():
    rows = [{"prompt": "q", "response": f"up{i}", "rating": "up"} for i in range(3)]
    rows += [{"prompt": "q", "response": f"down{i}", "rating": "down"} for i in range(3)]
    pairs, acct = to_preference_pairs(rows, "x", max_pairs_per_prompt=2)
    assert len(pairs) == 2
    assert acct.rows_used + acct.dropped["over_pair_cap"] == 6 and acct.dropped["over_pair_cap"] > 0


def test_multi_turn_prompt_is_the_whole_conversation():
    convo = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "capital of France?"}]
    pairs, _ = to_preference_pairs([{"messages": convo, "response": "Paris.", "rating": "up"},
                                    {"messages": convo, "response": "Rome.", "rating": "down"}], "x")
    assert pairs[0]["prompt"] == convo
    examples, _ = to_sft_examples([{"messages": convo + [{"role": "assistant", "content": "Paris."}]}], "x")
    assert examples[0]["prompt"] == convo and examples[0]["completion"][0]["content"] == "Paris."


def test_sft_formats_and_drops():
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"prompt": "c", "response": "d"},
        {"instruction": "e", "input": "f", "output": "g"},
        {"prompt": "c", "response": "d"},  # duplicate
        {"prompt": "h", "response": "i", "rating": "down"},  # a thumbs-down is not a demonstration
        {"prompt": "j", "completion": " "},
    ]
    examples, acct = to_sft_examples(rows, "x")
    assert [e["completion"][0]["content"] for e in examples] == ["b", "d", "g"]
    assert examples[2]["prompt"][0]["content"] == "e\n\nf"
    assert dict(acct.dropped) == {"duplicate": 1, "thumbs_down": 1, "empty_response": 1}


def test_no_pairs_after_filtering_is_a_clear_error():
    with pytest.raises(DataError, match="no preference pairs after filtering"):
        to_preference_pairs([{"prompt": "q", "response": "a", "rating": "up"}], "only_ups.jsonl")


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "a", "response": "b"}\n{"prompt": broken\n', "bad.jsonl:2: malformed JSON"),
    (b'{"prompt": "a\xff"}\n', "bad.jsonl:1: not UTF-8"),
    (b"", "no rows"),
    (b"[1, 2]\n", "bad.jsonl:1: expected a JSON object"),
])
def test_bad_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message.replace(".", r"\.")):
        load_rows(str(path))


def test_bad_rating_names_the_row():
    with pytest.raises(DataError, match=r"x: row 2: field 'rating' is 'meh'"):
        to_preference_pairs([{"prompt": "q", "response": "a", "rating": "up"}, {"prompt": "q", "response": "b", "rating": "meh"}], "x")

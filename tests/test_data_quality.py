"""Quality rules, splits, bad rows under on_error, caps, class weights and round trips."""

from __future__ import annotations

import json
import random

import pytest

from posttrain.data.accounting import DataAccounting
from posttrain.data.kto_examples import class_weights
from posttrain.data.sources import check_source, load_rows
from posttrain.data.training_data import to_kto_examples, to_preference_pairs, to_sft_examples
from posttrain.data.writers import write_examples
from posttrain.errors import DataError


def thumbs(prompt, response, rating, **extra):
    return {"prompt": prompt, "response": response, "rating": rating, **extra}


def test_dedupe_modes():
    rows = [{"prompt": "Hi", "response": "Hello!"}, {"prompt": "hi ", "response": "hello"}, {"prompt": "Hi", "response": "Hello!"}]
    assert len(to_sft_examples(rows, "x")[0]) == 2
    examples, acct = to_sft_examples(rows, "x", dedupe="normalized")
    assert len(examples) == 1 and acct.dropped == {"duplicate": 2}
    assert len(to_sft_examples(rows, "x", dedupe="none")[0]) == 3


def test_normalized_dedupe_pools_votes_on_near_identical_replies():
    rows = [thumbs("q", "Paris.", "up"), thumbs("Q", "paris", "down"), thumbs("q", "Rome", "down"), thumbs("q", "Lyon", "up")]
    sides = lambda pairs: [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs]  # noqa: E731
    pairs, acct = to_preference_pairs(rows, "x")
    assert sides(pairs) == [("Paris.", "Rome"), ("Lyon", "Rome")] and acct.dropped == {"no_opposite_vote": 1}
    pairs, acct = to_preference_pairs(rows, "x", dedupe="normalized")  # "Paris." and "paris": one reply, one up, one down
    assert sides(pairs) == [("Lyon", "Rome")] and acct.dropped == {"conflicting_votes": 2}


def test_empty_and_whitespace_responses_are_dropped_everywhere():
    rows = [thumbs("q", "good", "up"), thumbs("q", " \n", "down"), thumbs("q", "bad", "down"),
            {"prompt": "q2", "chosen": "", "rejected": "x"}]
    pairs, acct = to_preference_pairs(rows, "x")
    assert len(pairs) == 1 and acct.dropped == {"empty_response": 2}


def test_length_limit_in_tokens_with_the_models_tokenizer_or_a_counter():
    rows = [{"prompt": "q", "response": "short"}, {"prompt": "q", "response": "a much longer answer " * 10}]
    examples, acct = to_sft_examples(rows, "x", max_tokens=20)  # approximate count: words and punctuation
    assert len(examples) == 1 and acct.dropped == {"too_long": 1}
    _, acct = to_sft_examples(rows, "x", max_tokens=20, tokenizer=lambda text: 1)  # a callable counting tokens
    assert acct.dropped == {}

    class CharTokenizer:  # anything with .encode, like a transformers tokenizer
        def encode(self, text, add_special_tokens=False):
            return list(text)

    _, acct = to_sft_examples(rows, "x", max_tokens=6, tokenizer=CharTokenizer())  # "q" + "short" = 6 characters
    assert acct.dropped == {"too_long": 1}
    with pytest.raises(DataError, match=r"no SFT examples after filtering \(too_long: 2\)"):
        to_sft_examples(rows, "x", max_tokens=5, tokenizer=CharTokenizer())


def test_long_completion_leaves_a_rated_row_but_the_row_stays():
    rows = [{"prompt": "q", "completions": [{"response": "good", "score": 5}, {"response": "bad", "score": 1},
                                            {"response": "word " * 50, "score": 3}]}]
    pairs, acct = to_preference_pairs(rows, "x", max_tokens=10)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("good", "bad")]
    assert acct.rows_used == 1


def test_conflicting_labels_across_rows_drop_for_kto():
    rows = [{"prompt": "q", "chosen": "A", "rejected": "B"}, {"prompt": "q", "completion": "A", "label": False},
            {"prompt": "q", "completion": "C", "label": True}, {"prompt": "q", "completion": "D", "label": False}]
    examples, acct, _ = to_kto_examples(rows, "x")
    assert [(e["completion"][0]["content"], e["label"]) for e in examples] == [("B", False), ("C", True), ("D", False)]
    assert acct.rows_used == 3 and acct.dropped == {"conflicting_labels": 1}


def test_both_votes_rule():
    rows = [{"message_tree_id": "t", "prompt": {"message_id": "p", "role": "prompter", "text": "q", "replies": [
        {"message_id": "a", "role": "assistant", "text": "mostly liked", "emojis": {"+1": 3, "-1": 1}},
        {"message_id": "b", "role": "assistant", "text": "disliked", "emojis": {"-1": 2}}]}}]
    pairs, _ = to_preference_pairs(rows, "x")
    assert len(pairs) == 1
    with pytest.raises(DataError, match="no preference pairs"):
        to_preference_pairs(rows, "x", both_votes="drop")
    _, acct = to_sft_examples(rows + [{"prompt": "z", "response": "z"}], "x", both_votes="drop")
    assert acct.dropped == {"conflicting_votes": 1, "thumbs_down": 1}


def test_contradictory_and_duplicate_explicit_pairs():
    rows = [{"prompt": "q", "chosen": "A", "rejected": "B"}, {"prompt": "q", "chosen": "B", "rejected": "A"},
            {"prompt": "q2", "chosen": "C", "rejected": "D"}, {"prompt": "q2", "chosen": "C", "rejected": "D"}]
    pairs, acct = to_preference_pairs(rows, "x")
    assert len(pairs) == 1 and acct.dropped == {"contradictory_preference": 2, "duplicate": 1}


def test_votes_outrank_ranks_when_they_disagree():
    tree = {"message_tree_id": "t", "prompt": {"message_id": "p", "role": "prompter", "text": "q", "replies": [
        {"message_id": "a", "role": "assistant", "text": "A", "rank": 1, "emojis": {"+1": 2}},
        {"message_id": "b", "role": "assistant", "text": "B", "rank": 0, "emojis": {"-1": 2}}]}}
    pairs, acct = to_preference_pairs([tree], "x")
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("A", "B")]
    assert acct.details["pairs_from"] == {"votes": 1}


def test_pair_cap_covers_as_many_rows_as_it_can():
    rows = [thumbs("q", f"up{i}", "up") for i in range(3)] + [thumbs("q", f"down{i}", "down") for i in range(3)]
    pairs, acct = to_preference_pairs(rows, "x", max_pairs_per_prompt=3)
    assert len(pairs) == 3 and acct.rows_used == 6 and not acct.dropped
    pairs, acct = to_preference_pairs(rows, "x", max_pairs_per_prompt=1)
    assert acct.rows_used == 2 and acct.dropped == {"over_pair_cap": 4}


def test_ties_rule_for_ranks():
    tree = {"message_tree_id": "t", "prompt": {"message_id": "p", "role": "prompter", "text": "q", "replies": [
        {"message_id": "a", "role": "assistant", "text": "A", "rank": 0}, {"message_id": "b", "role": "assistant", "text": "B", "rank": 0},
        {"message_id": "c", "role": "assistant", "text": "C", "rank": 1}]}}
    pairs, acct = to_preference_pairs([tree], "x")
    assert len(pairs) == 2 and acct.rows_used == 3
    with pytest.raises(DataError, match=r"x: row 1 message b: field 'rank' has the same rank \(0\) as its sibling"):
        to_preference_pairs([tree], "x", ties="fail")


def split_rows():
    rows = []
    for i in range(200):
        rows += [thumbs(f"question {i}", "good", "up"), thumbs(f"question {i}", "bad", "down")]
        rows.append({"messages": [{"role": "user", "content": f"Question {i}"}, {"role": "assistant", "content": "good"},
                                  {"role": "user", "content": "and more?"}], "response": "more", "rating": "up"})
    return rows


def test_split_by_prompt_is_deterministic_disjoint_and_keeps_conversations_together():
    rows = split_rows()
    train, train_acct = to_sft_examples(rows, "x", split="train", test_share=0.2, seed=3)
    test, test_acct = to_sft_examples(rows, "x", split="test", test_share=0.2, seed=3)
    opening = lambda e: e["prompt"][0]["content"].lower()  # noqa: E731
    assert {opening(e) for e in train}.isdisjoint({opening(e) for e in test})
    assert len(train) + len(test) == len(to_sft_examples(rows, "x")[0])
    assert 0.1 < len({opening(e) for e in test}) / 200 < 0.3
    # A follow-up turn goes wherever its conversation's opening went.
    for examples in (train, test):
        openings = {opening(e) for e in examples if len(e["prompt"]) == 1}
        assert all(opening(e) in openings for e in examples if len(e["prompt"]) > 1)
    assert to_sft_examples(rows, "x", split="test", test_share=0.2, seed=3)[0] == test
    assert to_sft_examples(rows, "x", split="test", test_share=0.2, seed=4)[0] != test
    assert train_acct.dropped["other_split"] + test_acct.dropped["other_split"] == len(rows)  # each row on one side
    # 1/3 of the train side is thumbs-down; held-out rows are not a quality drop, so 0.34 passes.
    train_acct.fail_if_too_many_dropped(0.34)


def test_split_applies_to_pairs_and_kto_alike():
    rows = split_rows()
    pairs, _ = to_preference_pairs(rows, "x", split="test", test_share=0.2)
    kto, _, _ = to_kto_examples(rows, "x", split="test", test_share=0.2)
    sft, _ = to_sft_examples(rows, "x", split="test", test_share=0.2)
    assert {p["prompt"][0]["content"] for p in pairs} == {e["prompt"][0]["content"] for e in sft if len(e["prompt"]) == 1}
    assert {e["prompt"][0]["content"].lower() for e in kto} == {e["prompt"][0]["content"].lower() for e in sft}


def write_lines(tmp_path, lines: list[bytes]):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_on_error_skip_counts_every_bad_row_with_its_reason(tmp_path):
    path = write_lines(tmp_path, [
        json.dumps(thumbs("q", "good", "up")).encode(),
        b'{"prompt": "q", "response": broken',
        json.dumps(thumbs("q", "bad", "down")).encode(),
        b'{"prompt": "q", "response": "caf\xe9", "rating": "down"}',
        json.dumps({"prompt": "q", "rating": "down"}).encode(),
        json.dumps(thumbs("q", 7, "down")).encode(),
        json.dumps(thumbs("q", "worse", "meh")).encode(),
        b"[1, 2]",
        json.dumps({"unknown": "fields"}).encode(),
    ])
    with pytest.raises(DataError, match=r"log\.jsonl:2: malformed JSON"):
        to_preference_pairs(load_rows(path), path)
    pairs, acct = to_preference_pairs(load_rows(path, on_error="skip"), path, on_error="skip")
    assert len(pairs) == 1 and acct.rows_read == 9 and acct.rows_used == 2
    # The row of unknown fields is read as the file's main format (thumbs), so it names what is missing.
    assert acct.dropped == {"malformed_json": 1, "not_utf8": 1, "missing_field": 2, "wrong_type": 1, "bad_value": 1, "not_an_object": 1}
    assert acct.errors[0].startswith(f"{path}:2: malformed JSON") and len(acct.errors) == 5
    assert acct.to_dict()["errors"] == acct.errors
    with pytest.raises(DataError, match=r"7 of 9 rows dropped .* more than max_drop_share=0.5"):
        acct.fail_if_too_many_dropped(0.5)


def test_on_error_values_are_checked():
    with pytest.raises(DataError, match="on_error is 'ignore'; use one of: fail, skip"):
        to_sft_examples([{"prompt": "q", "response": "a"}], "x", on_error="ignore")
    with pytest.raises(TypeError, match="unknown data option"):
        to_sft_examples([{"prompt": "q", "response": "a"}], "x", max_token=3)


@pytest.mark.parametrize("desirable, undesirable", [(334, 96), (10, 10), (3, 700), (400, 704), (1, 1), (7, 3)])
def test_kto_class_weights_balance_the_classes(desirable, undesirable):
    weights = class_weights(desirable, undesirable)
    ratio = weights["desirable_weight"] * desirable / (weights["undesirable_weight"] * undesirable)
    assert 1 <= ratio <= 4 / 3 and min(weights.values()) == 1.0


def test_every_row_is_accounted_for_on_random_logs():
    rng = random.Random(0)
    for _ in range(30):
        rows = [thumbs(f"q{rng.randrange(5)}", rng.choice(["a", "b", "c", " ", "d"]), rng.choice(["up", "down"]),
                       user=rng.choice([None, "u1", "u2"])) for _row in range(rng.randrange(1, 40))]
        for convert in (to_sft_examples, to_preference_pairs, lambda r, s: to_kto_examples(r, s)[:2]):
            try:
                _, acct = convert(rows, "x")
            except DataError:
                continue  # nothing usable: a clear error, checked elsewhere
            assert acct.rows_read == len(rows) == acct.rows_used + sum(acct.dropped.values())


@pytest.mark.parametrize("to", ["sft", "pairs", "kto"])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_converted_output_is_usable_as_data(tmp_path, to, suffix):
    source = "builtin:assistant_world/feedback"
    rows = load_rows(source)
    convert = {"sft": to_sft_examples, "pairs": to_preference_pairs, "kto": to_kto_examples}[to]
    first = convert(rows, source)[0]
    out = tmp_path / f"out{suffix}"
    write_examples(out, first)
    again = convert(load_rows(str(out)), str(out))
    assert again[0] == first and again[1].dropped == {}


def test_builtin_sources_keep_working():
    examples, acct = to_sft_examples(load_rows("builtin:assistant_world/sft"), "builtin:assistant_world/sft")
    assert acct.rows_read == acct.rows_used == len(examples) > 0
    pairs, acct = to_preference_pairs(load_rows("builtin:assistant_world/feedback"), "builtin:assistant_world/feedback")
    assert acct.rows_read == acct.rows_used and len(pairs) > 0


def test_check_source_knows_files_hub_names_and_typos(tmp_path):
    for name in ("a.csv", "a.parquet", "a.json", "a.jsonl"):
        (tmp_path / name).write_text("")
        check_source(str(tmp_path / name))
    check_source("HuggingFaceH4/ultrafeedback_binarized:train_prefs")  # a Hub name: checked when loaded, not now
    check_source("hf:Anthropic/hh-rlhf")
    with pytest.raises(DataError, match="does not exist"):
        check_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported extension '.txt'"):
        check_source(str(tmp_path / "a.txt"))


def test_hub_dataset_offline_says_it_needs_network(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"'someone/no-such-dataset' is not a local file.*needs network"):
        load_rows("someone/no-such-dataset")


def test_accounting_dict_keeps_the_pipeline_keys():
    acct = DataAccounting(source="s", rows_read=3, rows_used=2, examples_used=2)
    acct.drop("duplicate")
    acct.drop("nothing", 0)
    assert acct.to_dict() == {"source": "s", "rows_read": 3, "rows_used": 2, "examples": 2, "dropped": {"duplicate": 1}}

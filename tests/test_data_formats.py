"""One small hand-written file per input format, read from disk and converted; multi-turn included."""

from __future__ import annotations

import json

import pytest

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


def sft(path, **options):
    return to_sft_examples(load_rows(path), path, **options)


def pairs(path, cap=8, **options):
    return to_preference_pairs(load_rows(path), path, cap, **options)


def kto(path, **options):
    return to_kto_examples(load_rows(path), path, **options)


def triples(made):
    return [(p["prompt"][-1]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in made]


def test_openai_messages_multi_turn_with_system_and_content_parts(tmp_path):
    path = write_jsonl(tmp_path, "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, user("hi"), bot("hello"), user("capital of France?"), bot("Paris.")]},
        {"messages": [user("2+2?"), {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]},
    ])
    examples, acct = sft(path)
    assert examples[0]["prompt"] == [{"role": "system", "content": "Be brief."}, user("hi"), bot("hello"), user("capital of France?")]
    assert examples[0]["completion"] == [bot("Paris.")]
    assert examples[1]["completion"] == [bot("4")]
    assert acct.formats == {"messages": 2} and acct.rows_used == 2


def test_messages_must_end_with_the_assistant(tmp_path):
    path = write_jsonl(tmp_path, "chat.jsonl", [{"messages": [user("hi"), bot("hello"), user("and?")]}])
    with pytest.raises(DataError, match=r"chat\.jsonl:1: field 'messages' must end with the assistant's reply"):
        sft(path)


def test_alpaca_json_array(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ]))
    examples, acct = sft(str(path))
    assert [e["prompt"][0]["content"] for e in examples] == ["Translate\n\nchat", "Say hi"]
    assert acct.formats == {"alpaca": 2}


def test_sharegpt_multi_turn(tmp_path):
    path = write_jsonl(tmp_path, "sharegpt.jsonl", [{"system": "Be kind.", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"},
        {"from": "human", "value": "name a colour"}, {"from": "gpt", "value": "blue"}]}])
    examples, _ = sft(path)
    assert examples[0]["prompt"] == [{"role": "system", "content": "Be kind."}, user("hi"), bot("hello"), user("name a colour")]
    assert examples[0]["completion"] == [bot("blue")]


def test_sharegpt_unknown_speaker_names_the_field(tmp_path):
    path = write_jsonl(tmp_path, "sharegpt.jsonl", [{"conversations": [{"from": "alien", "value": "hi"}, {"from": "gpt", "value": "x"}]}])
    with pytest.raises(DataError, match=r"sharegpt\.jsonl:1: field 'conversations\[0\]\.from' is 'alien'"):
        sft(path)


def test_prompt_completion_text_and_conversational(tmp_path):
    path = write_jsonl(tmp_path, "pc.jsonl", [
        {"prompt": "q", "completion": "a"},
        {"prompt": [user("hi"), bot("hey"), user("q2")], "completion": [bot("a2")]},  # TRL's conversational form
        {"messages": [user("q3")], "response": "a3"},
    ])
    examples, acct = sft(path)
    assert [e["completion"][0]["content"] for e in examples] == ["a", "a2", "a3"]
    assert len(examples[1]["prompt"]) == 3 and acct.formats == {"prompt_completion": 3}


def test_preference_pairs_as_text_lists_and_full_conversations(tmp_path):
    path = write_jsonl(tmp_path, "prefs.jsonl", [
        {"prompt": "q1", "chosen": "good", "rejected": "bad"},
        {"prompt": [user("hi"), bot("hey"), user("q2")], "chosen": [bot("good2")], "rejected": [bot("bad2")]},
        # ultrafeedback_binarized: chosen/rejected repeat the prompt; the shared part is the prompt
        {"prompt": "q3", "chosen": [user("q3"), bot("good3")], "rejected": [user("q3"), bot("bad3")]},
        {"prompt": "q4", "chosen": "same", "rejected": "same"},
    ])
    made, acct = pairs(path)
    assert triples(made) == [("q1", "good", "bad"), ("q2", "good2", "bad2"), ("q3", "good3", "bad3")]
    assert made[1]["prompt"] == [user("hi"), bot("hey"), user("q2")]
    assert dict(acct.dropped) == {"chosen_equals_rejected": 1} and acct.details["pairs_from"] == {"explicit": 3}
    examples, _ = sft(path)  # SFT learns the chosen side
    assert [e["completion"][0]["content"] for e in examples] == ["good", "good2", "good3", "same"]


def test_anthropic_hh_multi_turn_shared_prefix_is_the_prompt(tmp_path):
    prefix = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how do I boil an egg?"
    path = write_jsonl(tmp_path, "hh.jsonl", [
        {"chosen": prefix + "\n\nAssistant: Simmer it for 8 minutes.", "rejected": prefix + "\n\nAssistant: No idea."},
        {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "not a transcript"},
    ])
    with pytest.raises(DataError, match=r"hh\.jsonl:2: field 'rejected' is not a transcript"):
        pairs(path)
    made, acct = to_preference_pairs(load_rows(path), path, on_error="skip")
    assert made[0]["prompt"] == [user("hi"), bot("hello"), user("how do I boil an egg?")]
    assert made[0]["chosen"] == [bot("Simmer it for 8 minutes.")] and made[0]["rejected"] == [bot("No idea.")]
    assert acct.formats == {"hh": 2} and dict(acct.dropped) == {"bad_value": 1}


def test_rated_completions_ultrafeedback_style(tmp_path):
    path = write_jsonl(tmp_path, "rated.jsonl", [
        {"instruction": "q1", "completions": [
            {"model": "a", "response": "best", "overall_score": 9},
            {"model": "b", "response": "mid", "overall_score": 5},
            {"model": "c", "response": "also mid", "overall_score": 5},
            {"model": "d", "response": "worst", "overall_score": 1}]},
        {"prompt": "q2", "responses": ["x", "y"], "scores": [3, 3]},  # a tie: no preference
    ])
    made, acct = pairs(path)
    assert sorted(triples(made)) == sorted([
        ("q1", "best", "mid"), ("q1", "best", "also mid"), ("q1", "best", "worst"),
        ("q1", "mid", "worst"), ("q1", "also mid", "worst")])  # mid vs also mid tie: skipped
    assert acct.rows_used == 1 and dict(acct.dropped) == {"tie": 1}
    with pytest.raises(DataError, match=r"rated\.jsonl:1: field 'completions' holds two different completions with the same score"):
        pairs(path, ties="fail")
    capped, _ = pairs(path, cap=2)
    assert triples(capped) == [("q1", "best", "worst"), ("q1", "best", "mid")]  # widest margin first
    examples, sft_acct = sft(path)
    assert [e["completion"][0]["content"] for e in examples] == ["best", "x", "y"]  # ties at the top are all best
    made_kto, kto_acct, _ = kto(path)
    assert [(e["completion"][0]["content"], e["label"]) for e in made_kto] == [("best", True), ("worst", False)]
    assert dict(kto_acct.dropped) == {"tie": 1}


def test_unpaired_binary_feedback_for_kto(tmp_path):
    path = write_jsonl(tmp_path, "kto.jsonl", [
        {"prompt": "q1", "completion": "good", "label": True},
        {"prompt": "q1", "completion": "bad", "label": False},
        {"prompt": [user("hi"), bot("hey"), user("q2")], "completion": [bot("bad2")], "label": False},
        {"prompt": "q3", "completion": "bad3", "label": "false"},
    ])
    examples, acct, weights = kto(path)
    assert [e["label"] for e in examples] == [True, False, False, False]
    assert examples[2]["prompt"] == [user("hi"), bot("hey"), user("q2")]
    assert weights == {"desirable_weight": 3.0, "undesirable_weight": 1.0}
    assert acct.formats == {"binary": 4}


def test_thumbs_log_with_voters_and_timestamps(tmp_path):
    convo = [user("hi"), bot("hello"), user("capital of France?")]
    path = write_jsonl(tmp_path, "thumbs.jsonl", [
        {"messages": convo, "response": "Paris.", "rating": "up", "user": "ann", "timestamp": "2024-05-01T10:00:00"},
        {"messages": convo, "response": "Rome.", "rating": "thumbs_down", "user": "ann"},
        {"messages": convo, "response": "Rome.", "rating": "up", "user": "bob", "timestamp": "2024-05-01T09:00:00"},
        {"messages": convo, "response": "Rome.", "rating": -1, "user": "bob", "timestamp": "2024-05-02T09:00:00"},  # bob changed his mind
        {"prompt": "q2", "response": "yes", "rating": True, "session": "s1"},
        {"prompt": "q2", "response": "no", "rating": "👎", "session": "s2"},
    ])
    made, acct = pairs(path)
    assert made[0] == {"prompt": convo, "chosen": [bot("Paris.")], "rejected": [bot("Rome.")]}
    assert triples(made)[1] == ("q2", "yes", "no")
    assert acct.rows_read == 6 and acct.rows_used == 5 and dict(acct.dropped) == {"superseded_vote": 1}
    examples, kto_acct, _ = kto(path)
    assert [(e["completion"][0]["content"], e["label"]) for e in examples] == [("Paris.", True), ("Rome.", False), ("yes", True), ("no", False)]


def test_thumbs_row_without_rating_names_the_missing_field(tmp_path):
    path = write_jsonl(tmp_path, "thumbs.jsonl", [
        {"prompt": "q", "response": "a", "rating": "up"}, {"prompt": "q", "response": "b", "rating": "down"},
        {"prompt": "q", "response": "c"},
    ])
    with pytest.raises(DataError, match=r"thumbs\.jsonl:3: field 'rating' is missing"):
        pairs(path)


def oasst_tree(tree_id="t1"):
    def msg(mid, role, text, replies=(), **extra):
        return {"message_id": mid, "role": role, "text": text, "replies": list(replies), "deleted": False, "review_result": True, **extra}

    return {"message_tree_id": tree_id, "tree_state": "ready_for_export", "prompt": msg("p1", "prompter", "What is 2+2?", [
        msg("a1", "assistant", "4", [
            msg("p2", "prompter", "And 3+3?", [
                msg("a4", "assistant", "6", emojis={"+1": 1}),
                msg("a5", "assistant", "7", emojis={"-1": 2, "+1": 1}),
            ]),
        ], rank=0, emojis={"+1": 2}),
        msg("a2", "assistant", "5", rank=1, emojis={"-1": 1}),
        msg("a3", "assistant", "four", rank=2, emojis=None),
        msg("a6", "assistant", "spam", deleted=True, emojis={"+1": 5}),
    ])}


def test_openassistant_tree_votes_ranks_and_multi_turn(tmp_path):
    path = write_jsonl(tmp_path, "oasst.jsonl", [oasst_tree()])
    made, acct = pairs(path)
    assert set(triples(made)) == {("What is 2+2?", "4", "5"), ("What is 2+2?", "4", "four"), ("What is 2+2?", "5", "four"), ("And 3+3?", "6", "7")}
    second_turn = next(p for p in made if p["chosen"] == [bot("6")])
    assert second_turn["prompt"] == [user("What is 2+2?"), bot("4"), user("And 3+3?")]
    assert acct.rows_read == 6 and acct.rows_used == 5 and dict(acct.dropped) == {"deleted": 1}
    assert acct.details["pairs_from"] == {"votes": 2, "ranks": 2}  # "4" over "5" comes from votes and ranks: once
    examples, sft_acct = sft(path)
    assert [e["completion"][0]["content"] for e in examples] == ["4", "6"]
    assert dict(sft_acct.dropped) == {"thumbs_down": 2, "not_best_ranked": 1, "deleted": 1}
    made_kto, kto_acct, _ = kto(path)
    assert [(e["completion"][0]["content"], e["label"]) for e in made_kto] == [("4", True), ("6", True), ("7", False), ("5", False)]
    assert dict(kto_acct.dropped) == {"no_vote": 1, "deleted": 1}


def test_openassistant_flat_message_rows(tmp_path):
    rows = [
        {"message_id": "p1", "parent_id": None, "role": "prompter", "text": "Name a fruit.", "emojis": {"name": [], "count": []}},
        {"message_id": "a1", "parent_id": "p1", "role": "assistant", "text": "Apple.", "rank": 0, "emojis": {"name": ["+1"], "count": [3]}},
        {"message_id": "a2", "parent_id": "p1", "role": "assistant", "text": "Carrot.", "rank": 1, "emojis": {"name": ["-1"], "count": [2]}},
    ]
    path = write_jsonl(tmp_path, "oasst_flat.jsonl", rows)
    made, acct = pairs(path)
    assert triples(made) == [("Name a fruit.", "Apple.", "Carrot.")] and acct.rows_read == 2
    orphan = write_jsonl(tmp_path, "orphan.jsonl", rows + [{"message_id": "a9", "parent_id": "zz", "role": "assistant", "text": "?"}])
    with pytest.raises(DataError, match=r"orphan\.jsonl:4: field 'parent_id' is 'zz', which is not a message in this file"):
        pairs(orphan)


def test_openassistant_bad_message_names_its_path(tmp_path):
    tree = oasst_tree()
    tree["prompt"]["replies"][1]["text"] = None
    path = write_jsonl(tmp_path, "oasst.jsonl", [tree])
    with pytest.raises(DataError, match=r"oasst\.jsonl:1: field 'prompt\.replies\[1\]\.text' is missing"):
        pairs(path)
    made, acct = to_preference_pairs(load_rows(path), path, on_error="skip")
    assert acct.dropped["missing_field"] == 1 and acct.rows_read == 6


def test_csv_thumbs_log_and_json_cells(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        'prompt,response,rating,user\n'
        'q1,"good, and short",up,u1\n'
        'q1,bad,down,u2\n'
        '"[{""role"": ""user"", ""content"": ""hi""}, {""role"": ""assistant"", ""content"": ""hey""}, {""role"": ""user"", ""content"": ""q2""}]",fine,+1,u1\n'
        '"[{""role"": ""user"", ""content"": ""hi""}, {""role"": ""assistant"", ""content"": ""hey""}, {""role"": ""user"", ""content"": ""q2""}]",poor,-1,u3\n',
        encoding="utf-8")
    made, acct = pairs(str(path))
    assert triples(made) == [("q1", "good, and short", "bad"), ("q2", "fine", "poor")]
    assert made[1]["prompt"] == [user("hi"), bot("hey"), user("q2")] and acct.formats == {"thumbs": 4}
    path.write_text("prompt,response,rating\nq1,good,up\nq1,bad,meh\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"log\.csv:3: field 'rating' is 'meh'"):
        pairs(str(path))


def test_parquet_preference_pairs_and_row_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "prefs.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": [user("hi"), bot("hey"), user("q1")], "chosen": [bot("good")], "rejected": [bot("bad")]},
        {"prompt": [user("q2")], "chosen": [bot("fine")], "rejected": [bot("poor")]},
    ]), path)
    made, acct = pairs(str(path))
    assert triples(made) == [("q1", "good", "bad"), ("q2", "fine", "poor")] and acct.formats == {"preference": 2}
    pq.write_table(pa.Table.from_pylist([{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": None, "rejected": "b"}]), path)
    with pytest.raises(DataError, match=r"prefs\.parquet: row 2: field 'chosen' is missing"):
        pairs(str(path))


def test_format_override_and_aliases(tmp_path):
    path = write_jsonl(tmp_path, "x.jsonl", [{"prompt": "q", "completion": "a", "label": 1}, {"prompt": "q", "completion": "b", "label": 0}])
    _, acct, _ = kto(path, format="kto")
    assert acct.formats == {"binary": 2}
    with pytest.raises(DataError, match=r"x\.jsonl:1: field 'rating' is missing"):
        sft(path, format="thumbs")
    with pytest.raises(DataError, match="format 'thumb' is unknown \\(did you mean 'thumbs'\\?\\)"):
        sft(path, format="thumb")


def test_mixed_formats_in_one_file(tmp_path):
    path = write_jsonl(tmp_path, "mixed.jsonl", [
        {"messages": [user("a"), bot("b")]},
        {"instruction": "c", "output": "d"},
        {"conversations": [{"from": "human", "value": "e"}, {"from": "gpt", "value": "f"}]},
        {"prompt": "g", "response": "h", "rating": "up"},
    ])
    examples, acct = sft(path)
    assert [e["completion"][0]["content"] for e in examples] == ["b", "d", "f", "h"]
    assert acct.formats == {"messages": 1, "alpaca": 1, "sharegpt": 1, "thumbs": 1}

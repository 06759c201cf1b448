"""First contact: public files in the shapes people have, read as they ship.

Each fixture is written here in the shape of the public file it stands for (databricks-dolly-15k,
self-instruct's seed_tasks.jsonl, an OpenAI chat fine-tuning file with tool calls, an oasst2 tree
export that repeats a tree, Anthropic HH, gzipped exports), and every row is accounted for:
rows_read == rows_used + sum(dropped), checked by every conversion.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma

import pytest
from conftest import REPO, run_cli

from posttrain.data.sources import check_source, load_rows, source_digest
from posttrain.data.training_data import sft_data, to_kto_examples, to_preference_pairs, to_sft_examples
from posttrain.errors import DataError
from posttrain.stage import TrainStageConfig


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write(tmp_path, name, content: bytes | list) -> str:
    path = tmp_path / name
    path.write_bytes(jsonl(content) if isinstance(content, list) else content)
    return str(path)


def completions(examples):
    return [e["completion"][0]["content"] for e in examples]


def sft(path, **options):
    return to_sft_examples(load_rows(path), path, **options)


# ---- 1. compressed files ------------------------------------------------------------------------

HH_ROWS = [
    {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Simmer it for 8 minutes.",
     "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: No idea."},
    {"chosen": "\n\nHuman: Name a colour.\n\nAssistant: Blue.", "rejected": "\n\nHuman: Name a colour.\n\nAssistant: Seven."},
]


def _zstd(data: bytes) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as f:
        f.write(data)
    return sink.getvalue().to_pybytes()


COMPRESS = {".gz": lambda b: gzip.compress(b, mtime=0), ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": _zstd}
def _csv(rows) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


PLAIN = {".jsonl": jsonl(HH_ROWS), ".json": json.dumps(HH_ROWS).encode(), ".csv": _csv(HH_ROWS)}


@pytest.mark.parametrize("compression", list(COMPRESS))
@pytest.mark.parametrize("kind", list(PLAIN))
def test_compressed_files_read_like_plain_ones_and_keep_their_fingerprint(tmp_path, kind, compression):
    plain = write(tmp_path, f"hh{kind}", PLAIN[kind])
    packed = write(tmp_path, f"hh{kind}{compression}", COMPRESS[compression](PLAIN[kind]))
    check_source(packed)
    rows = load_rows(packed)
    assert [dict(r) for r in rows] == [dict(r) for r in load_rows(plain)]
    assert rows[1].location.startswith(packed)  # errors name the compressed file
    pairs, acct = to_preference_pairs(rows, packed)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("Simmer it for 8 minutes.", "No idea."), ("Blue.", "Seven.")]
    assert acct.rows_read == acct.rows_used == 2 and acct.formats == {"hh": 2}
    # The fingerprint is the content's: the same rows compressed or not, or compressed again, plan the same run.
    assert source_digest(packed) == source_digest(plain)
    assert source_digest(packed) != source_digest(write(tmp_path, f"other{kind}{compression}", COMPRESS[compression](PLAIN[kind].replace(b"Blue", b"Red"))))


def test_a_gzipped_hh_export_and_a_gzipped_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write(tmp_path, "train.jsonl.gz", gzip.compress(jsonl(HH_ROWS), mtime=1))  # Anthropic/hh-rlhf ships harmless-base/train.jsonl.gz
    assert len(to_preference_pairs(load_rows(path), path)[0]) == 2
    again = write(tmp_path, "again.jsonl.gz", gzip.compress(jsonl(HH_ROWS), mtime=2))  # compressed again: other bytes, same data
    assert (tmp_path / "train.jsonl.gz").read_bytes() != (tmp_path / "again.jsonl.gz").read_bytes() and source_digest(again) == source_digest(path)
    pq.write_table(pa.Table.from_pylist(HH_ROWS), tmp_path / "hh.parquet")
    path = write(tmp_path, "hh.parquet.gz", gzip.compress((tmp_path / "hh.parquet").read_bytes()))
    assert [dict(r) for r in load_rows(path)] == HH_ROWS
    tsv = write(tmp_path, "log.tsv.gz", gzip.compress(b"prompt\tresponse\tuser\nq\tgood, and short\tu1\n"))
    assert [dict(r) for r in load_rows(tsv)] == [{"prompt": "q", "response": "good, and short", "user": "u1"}]


def test_a_damaged_compressed_file_is_one_line(tmp_path):
    whole = gzip.compress(jsonl(HH_ROWS * 50))
    path = write(tmp_path, "train.jsonl.gz", whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"train\.jsonl\.gz: not a readable gzip file \(Compressed file ended"):
        load_rows(path)
    with pytest.raises(DataError, match=r"not a readable gzip file"):
        source_digest(path)
    result = run_cli("data", "inspect", write(tmp_path, "bad.jsonl.xz", b"not xz at all"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "not a readable xz file" in result.stderr, result.stderr


def test_a_compressed_file_must_name_its_format(tmp_path):
    for name, named in (("train.gz", "'.gz'"), ("notes.txt.gz", "'.txt.gz'")):
        path = write(tmp_path, name, gzip.compress(jsonl(HH_ROWS)))
        with pytest.raises(DataError, match=rf"unsupported extension {named}; name the format before the compression, e\.g\. train\.jsonl\.gz"):
            load_rows(path)


# ---- 2. Dolly, and columns for any other shape --------------------------------------------------

DOLLY = [  # databricks-dolly-15k rows
    {"instruction": "When did Virgin Australia start operating?",
     "context": "Virgin Australia, the trading name of Virgin Australia Airlines Pty Ltd, is an Australian-based airline. "
                "It commenced services on 31 August 2000 as Virgin Blue, with two aircraft on a single route.",
     "response": "Virgin Australia commenced services on 31 August 2000 as Virgin Blue, with two aircraft on a single route.",
     "category": "closed_qa"},
    {"instruction": "Which is a species of fish? Tope or Rope", "context": "", "response": "Tope", "category": "classification"},
    {"instruction": "Why can camels survive for long without water?", "context": "",
     "response": "Camels use the fat in their humps to keep them filled with energy and hydration for long periods of time.",
     "category": "open_qa"},
]


def test_dolly_rows_are_demonstrations_with_the_context_as_input(tmp_path):
    path = write(tmp_path, "databricks-dolly-15k.jsonl", DOLLY)
    examples, acct = sft(path)
    assert acct.formats == {"dolly": 3} and acct.rows_read == acct.rows_used == 3
    assert examples[0]["prompt"] == [user(DOLLY[0]["instruction"] + "\n\n" + DOLLY[0]["context"])]
    assert [e["prompt"] for e in examples[1:]] == [[user(DOLLY[1]["instruction"])], [user(DOLLY[2]["instruction"])]]
    assert completions(examples) == [r["response"] for r in DOLLY]
    assert not any(r["category"] in json.dumps(e) for r in DOLLY for e in examples)  # the category is not part of the prompt
    broken = write(tmp_path, "dolly.jsonl", DOLLY[:2] + [{"instruction": "x", "context": "", "category": "open_qa"}])
    with pytest.raises(DataError, match=r"dolly\.jsonl:3: field 'response' is missing"):
        sft(broken)


QA = [{"question": "What is 2+2?", "answer": "4", "source": "quiz"}, {"question": "Capital of France?", "answer": "Paris.", "source": "quiz"}]


def test_columns_map_a_files_own_names_onto_a_known_shape(tmp_path):
    path = write(tmp_path, "qa.jsonl", QA)
    with pytest.raises(DataError, match=r"qa\.jsonl:1: cannot detect the data format .* map them with columns"):
        sft(path)
    examples, acct = sft(path, columns={"prompt": "question", "response": "answer"})
    assert [(e["prompt"], e["completion"]) for e in examples] == [([user("What is 2+2?")], [bot("4")]), ([user("Capital of France?")], [bot("Paris.")])]
    assert acct.formats == {"prompt_completion": 2} and acct.rows_used == 2
    # A column already named like a field gives way to the one the mapping names.
    rows = [{"prompt": "stale", "question": "fresh", "response": "a"}]
    assert sft(write(tmp_path, "both.jsonl", rows), columns={"prompt": "question"})[0][0]["prompt"] == [user("fresh")]
    # A stage reads them from its data_options, like every other option.
    config = TrainStageConfig(kind="sft", data=path, data_options={"columns": {"prompt": "question", "response": "answer"}})
    assert len(sft_data(config, {}).examples) == 2


def test_columns_say_what_is_wrong_in_one_line(tmp_path):
    path = write(tmp_path, "qa.jsonl", QA)
    for columns, message in (
        ({"promt": "question"}, "columns: 'promt' is not a field posttrain reads (did you mean 'prompt'?); columns maps the field"),
        ({"question": "prompt"}, "columns: 'question' is not a field posttrain reads, but 'prompt' is: columns maps the field "
                                 "posttrain reads to your column, so write {prompt: question}"),
        ({"prompt": " "}, "columns: the column read as 'prompt' is empty"),
    ):
        with pytest.raises(DataError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?").replace("{", r"\{").replace("}", r"\}")):
            sft(path, columns=columns)
    with pytest.raises(ValueError, match=r"'promt' is not a field posttrain reads"):
        TrainStageConfig(kind="sft", data=path, data_options={"columns": {"promt": "question"}})
    with pytest.raises(DataError, match=r"qa\.jsonl: columns reads the column 'answr' as 'response', but no row has a column 'answr'; "
                                        r"the rows' columns: answer, question, source"):
        sft(path, columns={"prompt": "question", "response": "answr"})


def test_data_commands_take_columns(tmp_path):
    path = write(tmp_path, "qa.jsonl", QA)
    out = tmp_path / "sft.jsonl"
    result = run_cli("data", "convert", path, "--to", "sft", "-o", str(out), "--column", "prompt=question", "--column", "response=answer")
    assert result.returncode == 0, result.stderr
    assert "2 rows read, 2 used, 2 examples" in result.stdout and len(out.read_text().splitlines()) == 2
    result = run_cli("data", "inspect", path, "--json", "--column", "prompt=question", "--column", "response=answer")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["formats"] == {"prompt_completion": 2}
    for bad, message in ((["--column", "prompt"], "error: --column 'prompt': write FIELD=YOUR_COLUMN, e.g. --column prompt=question"),
                         (["--column", "prompt=question", "--column", "prompt=answer"], "error: --column: 'prompt' is given twice"),
                         (["--column", "promt=question"], "error: columns: 'promt' is not a field posttrain reads (did you mean 'prompt'?)")):
        result = run_cli("data", "convert", path, "--to", "sft", "-o", str(out), *bad)
        assert result.returncode == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


# ---- 3. self-instruct seed tasks ----------------------------------------------------------------

SEED_TASKS = [  # yizhongw/self-instruct data/seed_tasks.jsonl
    {"id": "seed_task_0", "name": "breakfast_suggestion",
     "instruction": "Is there anything I can eat for a breakfast that doesn't include eggs, yet includes protein, and has roughly 700-1000 calories?",
     "instances": [{"input": "", "output": "Yes, you can have 1 oatmeal banana protein shake and 4 strips of bacon."}],
     "is_classification": False},
    {"id": "seed_task_1", "name": "antonym_relation", "instruction": "What is the relation between the given pairs?",
     "instances": [{"input": "Night : Day :: Right : Left", "output": "The relation between the given pairs is that they are opposites."}],
     "is_classification": False},
    {"id": "seed_task_40", "name": "sentiment_classification", "instruction": "Classify the sentiment of the sentence into positive, negative, or mixed.",
     "instances": [{"input": "I enjoy the flavor of the restaurant but their service is too slow.", "output": "mixed"},
                   {"input": "I love the food here.", "output": "positive"}],
     "is_classification": True},
]


def test_self_instruct_seed_tasks_give_one_example_per_instance(tmp_path):
    path = write(tmp_path, "seed_tasks.jsonl", SEED_TASKS)
    examples, acct = sft(path)
    assert acct.formats == {"self_instruct": 3} and acct.rows_read == acct.rows_used == 4  # one row per instance
    assert [(e["prompt"], e["completion"]) for e in examples] == [
        ([user(SEED_TASKS[0]["instruction"])], [bot(SEED_TASKS[0]["instances"][0]["output"])]),
        ([user("What is the relation between the given pairs?\n\nNight : Day :: Right : Left")], [bot(SEED_TASKS[1]["instances"][0]["output"])]),
        ([user(SEED_TASKS[2]["instruction"] + "\n\nI enjoy the flavor of the restaurant but their service is too slow.")], [bot("mixed")]),
        ([user(SEED_TASKS[2]["instruction"] + "\n\nI love the food here.")], [bot("positive")]),
    ]
    broken = [SEED_TASKS[0], {**SEED_TASKS[2], "instances": [{"input": "x", "output": "mixed"}, {"input": "y"}]}]
    path = write(tmp_path, "broken.jsonl", broken)
    with pytest.raises(DataError, match=r"broken\.jsonl:2: field 'instances\[1\]\.output' is missing"):
        sft(path)
    examples, acct = sft(path, on_error="skip")  # the bad task drops with each of its instances
    assert len(examples) == 1 and acct.rows_read == 3 and acct.dropped == {"missing_field": 2}


# ---- 4. OpenAI chat files with tool calls --------------------------------------------------------

TOOL_CHAT = {"messages": [
    {"role": "system", "content": "You are a weather assistant."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                          "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
    {"role": "assistant", "content": "It is 18°C in Paris."},
], "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}


def test_conversations_that_call_tools_drop_with_a_reason_that_names_tools(tmp_path):
    legacy = {"messages": [user("Weather in Rome?"), {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
                           {"role": "function", "name": "get_weather", "content": "20"}, bot("20°C.")]}
    sharegpt = {"conversations": [{"from": "human", "value": "Weather in Oslo?"}, {"from": "function_call", "value": "{\"name\": \"get_weather\"}"},
                                  {"from": "observation", "value": "3"}, {"from": "gpt", "value": "3°C."}]}
    plain = {"messages": [user("What's 2+2?"), bot("4")]}
    path = write(tmp_path, "chat.jsonl", [TOOL_CHAT, plain, legacy, sharegpt])
    examples, acct = sft(path)  # on_error: fail, yet the tool conversations are no error: valid data, not trained on
    assert completions(examples) == ["4"]
    assert acct.rows_read == 4 and acct.rows_used == 1 and acct.dropped == {"tool_calls_unsupported": 3}
    assert acct.errors[0] == (f"{path}:1: field 'messages[2].tool_calls' is a tool call ('tool_calls'); posttrain does not train on "
                              f"tool calls yet, so this conversation is dropped as tool_calls_unsupported (remove the tool turns to train on the rest)")
    assert "field 'messages[1].function_call' is a tool call" in acct.errors[1]
    assert "field 'conversations[1].from' is a tool turn (role 'function_call')" in acct.errors[2]
    result = run_cli("data", "convert", write(tmp_path, "tools_only.jsonl", [TOOL_CHAT]), "--to", "sft", "-o", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2 and "no SFT examples after filtering (tool_calls_unsupported: 1; first skipped row:" in result.stderr
    assert "is a tool call ('tool_calls')" in result.stderr


# ---- 5. inspect shows error texts as they are -----------------------------------------------------


def test_inspect_shows_bracketed_error_text_instead_of_reading_it_as_markup(tmp_path):
    path = write(tmp_path, "qa.jsonl", QA)
    result = run_cli("data", "inspect", path, "--on-error", "skip", env={"COLUMNS": "4000"})
    assert result.returncode == 0, result.stderr
    # The conversion errors quote the format table: sharegpt (conversations[from, value]).
    assert "sharegpt (conversations[from, value])" in result.stdout and "completions[response, score]" in result.stdout


# ---- 6. oasst2 exports that repeat a tree --------------------------------------------------------


def oasst2_message(message_id, parent_id, tree_id, role, text, replies=(), emojis=None, rank=None):
    return {"message_id": message_id, "parent_id": parent_id, "user_id": "5d5e1c77", "created_date": "2023-02-05T14:23:50.983374+00:00",
            "text": text, "role": role, "lang": "en", "review_count": 3, "review_result": True, "deleted": False, "rank": rank,
            "synthetic": False, "model_name": None, "detoxify": None, "message_tree_id": tree_id, "tree_state": "ready_for_export",
            "emojis": emojis, "labels": {"name": ["spam", "quality"], "value": [0.0, 0.75], "count": [3, 3]}, "replies": list(replies)}


def oasst2_tree(tree_id, prompt_id, replies):
    """One line of an oasst2 *.trees.jsonl export: {message_tree_id, tree_state, prompt: {..., replies}}."""
    return {"message_tree_id": tree_id, "tree_state": "ready_for_export",
            "prompt": oasst2_message(prompt_id, None, tree_id, "prompter", "What is a good name for a cat?", replies)}


def test_a_repeated_oasst_tree_counts_each_message_and_its_votes_once(tmp_path):
    first = oasst2_tree("6ab24d72", "6ab24d72", [
        oasst2_message("c8e83833", "6ab24d72", "6ab24d72", "assistant", "Whiskers.", emojis={"name": ["+1"], "count": [1]}, rank=0),
        oasst2_message("1f4c2d9a", "6ab24d72", "6ab24d72", "assistant", "Dog.", emojis={"name": ["-1"], "count": [2]}, rank=1),
    ])
    # Another tree asks the same question: its "Whiskers." was voted down once, its "Mittens." up.
    second = oasst2_tree("9b01c4e5", "9b01c4e5", [
        oasst2_message("77aa0b13", "9b01c4e5", "9b01c4e5", "assistant", "Whiskers.", emojis={"name": ["-1"], "count": [1]}),
        oasst2_message("0c3d5e7f", "9b01c4e5", "9b01c4e5", "assistant", "Mittens.", emojis={"name": ["+1"], "count": [1]}),
    ])
    path = write(tmp_path, "2023-11-05_oasst2_ready.trees.jsonl", [first, second, first])  # the export repeats the first tree
    # "Whiskers." has one up vote and one down vote: conflicting (counting the repeat would make it liked, 2 to 1).
    kto, acct, _ = to_kto_examples(load_rows(path), path)
    assert [(e["completion"][0]["content"], e["label"]) for e in kto] == [("Dog.", False), ("Mittens.", True)]
    assert acct.rows_read == 6 and acct.formats == {"oasst": 3}
    assert acct.dropped == {"conflicting_votes": 2, "duplicate_message": 2} and acct.details["duplicate_records_pooled"] == 1
    examples, acct = sft(path)  # conflicting, but ranked best among its siblings: SFT keeps it
    assert completions(examples) == ["Whiskers.", "Mittens."] and acct.dropped == {"thumbs_down": 1, "duplicate_message": 2}
    assert "duplicate records pooled (counted once): 1" in acct.summary()
    report = json.loads(run_cli("data", "inspect", path, "--json").stdout)
    assert (report["votes"]["+1 votes"], report["votes"]["-1 votes"]) == (2, 3)  # not (3, 5)
    assert report["counts"]["duplicate records pooled"] == 1


def test_hub_oasst_message_rows_that_name_their_tree_and_repeat_count_once(tmp_path):
    """The Hub's oasst1/oasst2 layout: one message per row, linked by parent_id, each naming its tree."""
    prompt = {k: v for k, v in oasst2_message("p1", None, "p1", "prompter", "Name a fruit.").items() if k != "replies"}
    apple = {k: v for k, v in oasst2_message("a1", "p1", "p1", "assistant", "Apple.", emojis={"name": ["+1"], "count": [1]}, rank=0).items() if k != "replies"}
    carrot = {k: v for k, v in oasst2_message("a2", "p1", "p1", "assistant", "Carrot.", emojis={"name": ["-1"], "count": [1]}, rank=1).items() if k != "replies"}
    path = write(tmp_path, "oasst2_train.jsonl", [prompt, apple, carrot, prompt, apple])
    made, acct = to_preference_pairs(load_rows(path), path)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in made] == [("Apple.", "Carrot.")]
    assert acct.rows_read == 3 and acct.rows_used == 2 and acct.dropped == {"duplicate_message": 1}
    assert acct.details["duplicate_records_pooled"] == 2 and acct.formats == {"oasst": 5}


# ---- 7. consecutive turns of one role ------------------------------------------------------------


def test_hh_rows_with_two_turns_of_one_role_in_a_row_are_merged_and_counted(tmp_path):
    path = write(tmp_path, "hh.jsonl", [
        {"chosen": "\n\nHuman: How do I bake a cake?\n\nAssistant: You need flour.\n\nAssistant: And eggs.",
         "rejected": "\n\nHuman: How do I bake a cake?\n\nAssistant: No idea."},
        {"chosen": "\n\nHuman: hi\n\nHuman: are you there?\n\nAssistant: Yes.",
         "rejected": "\n\nHuman: hi\n\nHuman: are you there?\n\nAssistant: Go away."},
        HH_ROWS[0],
    ])
    pairs, acct = to_preference_pairs(load_rows(path), path)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs[:2]] == [
        ([user("How do I bake a cake?")], [bot("You need flour.\n\nAnd eggs.")], [bot("No idea.")]),
        ([user("hi\n\nare you there?")], [bot("Yes.")], [bot("Go away.")]),
    ]
    for pair in pairs:  # every conversation alternates user / assistant, as chat templates require
        for side in ("chosen", "rejected"):
            roles = [m["role"] for m in pair["prompt"] + pair[side]]
            assert all(a != b for a, b in zip(roles, roles[1:])), roles
    assert acct.rows_used == 3 and acct.details["merged_same_role_turns"] == 2
    assert "rows whose consecutive same-role turns were merged: 2" in acct.summary()
    examples, _ = sft(write(tmp_path, "chat.jsonl", [{"messages": [user("q"), bot("part one"), bot("part two")]}]))
    assert examples[0] == {"prompt": [user("q")], "completion": [bot("part one\n\npart two")]}


# ---- 8. feedback is never trained on by accident -------------------------------------------------


def test_convert_to_sft_on_a_flat_feedback_log_keeps_only_liked_answers(tmp_path):
    rows = [{"prompt": f"question {i}", "response": "bad answer" if i % 3 == 0 else f"answer {i}", "rating": "down" if i % 3 == 0 else "up"}
            for i in range(9)]
    path = write(tmp_path, "flat.jsonl", rows)
    out = tmp_path / "sft.jsonl"
    result = run_cli("data", "convert", path, "--to", "sft", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "9 rows read, 6 used, 6 examples; dropped: thumbs_down 3" in result.stdout
    assert "bad answer" not in out.read_text()
    table = write(tmp_path, "flat.csv", b"prompt,response,label\nq1,good,true\nq2,awful,false\n")
    examples, acct = sft(table)
    assert completions(examples) == ["good"] and acct.formats == {"binary": 2} and acct.dropped == {"thumbs_down": 1}


def test_sharegpt_feedback_rows_give_sft_only_liked_answers(tmp_path):
    def chat(i, answer):
        return [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": answer}]

    rows = [{"conversations": chat(0, "good 0"), "rating": "up"}, {"conversations": chat(1, "bad 1"), "rating": "thumbs_down"},
            {"conversations": chat(2, "good 2"), "vote": 1}, {"conversations": chat(3, "bad 3"), "label": False}]
    examples, acct = sft(write(tmp_path, "sharegpt.jsonl", rows))
    assert completions(examples) == ["good 0", "good 2"] and acct.dropped == {"thumbs_down": 2}
    assert acct.formats == {"thumbs": 3, "binary": 1}


def test_a_vote_on_the_rated_reply_itself_is_feedback(tmp_path):
    rows = [
        {"messages": [user("q1"), {**bot("liked"), "rating": "up"}]},
        {"messages": [user("q2"), {**bot("disliked"), "rating": "down"}]},
        {"conversations": [{"from": "human", "value": "q3"}, {"from": "gpt", "value": "thumbed down", "thumbs": "👎"}]},
        {"prompt": "q4", "completion": [{**bot("labelled bad"), "label": False}]},
        {"prompt": "q5", "completion": [{**bot("labelled good"), "label": True}]},
    ]
    path = write(tmp_path, "nested.jsonl", rows)
    examples, acct = sft(path)
    assert completions(examples) == ["liked", "labelled good"] and acct.dropped == {"thumbs_down": 3}
    kto, _, _ = to_kto_examples(load_rows(path), path)
    assert [(e["completion"][0]["content"], e["label"]) for e in kto] == [
        ("liked", True), ("disliked", False), ("thumbed down", False), ("labelled bad", False), ("labelled good", True)]
    bad = write(tmp_path, "bad.jsonl", [{"messages": [user("q"), {**bot("a"), "rating": "meh"}]}])
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'messages\[1\]\.rating' is 'meh'; use up/down"):
        sft(bad)


def test_dolly_alpaca_and_self_instruct_rows_with_a_rating_are_feedback(tmp_path):
    rows = [{**DOLLY[1], "rating": "up"}, {**DOLLY[2], "response": "Camels are fish.", "rating": "down"},
            {"instruction": "Say hi", "input": "", "output": "go away", "thumbs": "down"},
            {**SEED_TASKS[2], "instances": [{**SEED_TASKS[2]["instances"][0], "rating": "up"}, {**SEED_TASKS[2]["instances"][1], "rating": "down"}]},
            {**SEED_TASKS[1], "rating": "down"}]  # a task's rating rates each of its instances
    examples, acct = sft(write(tmp_path, "rated.jsonl", rows))
    assert completions(examples) == ["Tope", "mixed"]
    assert acct.rows_read == 6 and acct.dropped == {"thumbs_down": 4} and acct.formats == {"thumbs": 5}
    missing = {**SEED_TASKS[2], "instances": [{**SEED_TASKS[2]["instances"][0], "rating": "up"}, SEED_TASKS[2]["instances"][1]]}
    with pytest.raises(DataError, match=r"missing\.jsonl:1: field 'instances\[1\]\.rating' is missing"):
        sft(write(tmp_path, "missing.jsonl", [missing]))


def test_a_field_that_looks_like_feedback_is_never_trained_on(tmp_path):
    rows = [{"messages": [user("q1"), bot("fine")], "thumbs_down": False}, {"messages": [user("q2"), bot("awful")], "thumbs_down": True}]
    path = write(tmp_path, "log.jsonl", rows)
    with pytest.raises(DataError, match=r"log\.jsonl:1: field 'thumbs_down' looks like feedback, but posttrain reads votes only from "
                                        r"rating, thumbs, vote, score, label; .* set format: messages"):
        sft(path)
    with pytest.raises(DataError, match=r"no SFT examples after filtering \(unknown_feedback: 2"):
        sft(path, on_error="skip")
    assert len(sft(path, format="messages")[0]) == 2  # the user says every row is a demonstration
    feedback = write(tmp_path, "feedback.jsonl", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                                                   "user_feedback": "too long"}])
    with pytest.raises(DataError, match=r"field 'user_feedback' looks like feedback"):
        sft(feedback)


# ---- the shared OpenAssistant sample keeps its documented figures ---------------------------------


def test_the_openassistant_sample_keeps_its_documented_figures():
    sample = REPO.parent / "shared" / "data" / "oasst_en_100_tree.jsonl"
    if not sample.is_file():
        pytest.skip(f"{sample} is not here (CI has it)")
    result = run_cli("data", "inspect", str(sample), "--json")
    report = json.loads(result.stdout)
    assert report["formats"] == {"oasst": 100} and report["counts"]["rows (accounting units)"] == "687 (one per assistant reply)"
    assert report["counts"]["multi-turn prompts"] == 154 and "duplicate records pooled" not in report["counts"]
    conversions = report["conversions"]
    assert (conversions["sft"]["examples"], conversions["pairs"]["examples"], conversions["kto"]["examples"]) == (409, 658, 430)
    assert conversions["kto"]["class weights"] == {"desirable_weight": 1.0, "undesirable_weight": 3.4791}


def test_openai_message_weight_zero_is_never_trained_on(tmp_path):
    """OpenAI fine-tuning files mark assistant messages not to learn with `weight: 0`."""
    from posttrain.data.training_data import to_sft_examples
    from posttrain.data.sources import load_rows

    def turn(role, content, **extra):
        return {"role": role, "content": content, **extra}

    rows = [
        {"messages": [turn("user", "Hi"), turn("assistant", "Hello!", weight=1), turn("user", "Insult me"), turn("assistant", "You idiot.", weight=0)]},
        {"messages": [turn("user", "2+2?"), turn("assistant", "5", weight=0)]},
        {"messages": [turn("user", "Capital of France?"), turn("assistant", "Paris.")]},
    ]
    path = tmp_path / "openai.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, accounting = to_sft_examples(load_rows(str(path)), str(path))
    completions = [e["completion"][-1]["content"] for e in examples]
    assert completions == ["Hello!", "Paris."]  # cut back to the last weighted answer; no weight-0 answer is learned
    assert all("You idiot." not in json.dumps(e) for e in examples)
    assert accounting.rows_read == 3 and accounting.dropped == {"weight_zero": 1}

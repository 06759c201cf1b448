"""A stage's data, read once from its config: stage: sources, one options type, one split by conversation."""

from __future__ import annotations

import json

import pytest

from posttrain.data.filters import split_by_conversation, split_side
from posttrain.data.options import DataOptions
from posttrain.data.sources import check_source, load_rows, source_digest
from posttrain.data.training_data import kto_data, preference_data, prompt_data, sft_data, to_preference_pairs
from posttrain.errors import DataError
from posttrain.stage import PreferenceStageConfig, PreparedData, TrainStageConfig


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sft_rows(n=6):
    """What a data stage writes: SFT rows of chat messages."""
    return [{"messages": [user(f"question {i}"), bot(f"answer {i}")]} for i in range(n)]


# ---- stage: sources ------------------------------------------------------------------------------


def test_a_stage_source_is_read_through_the_runs_data_files(tmp_path):
    written = write_jsonl(tmp_path / "run" / "make_qa" / "data.jsonl", sft_rows())
    config = TrainStageConfig(kind="sft", data="stage:make_qa")
    prepared = sft_data(config, {"stage:make_qa": written})
    assert isinstance(prepared, PreparedData)
    assert [e["completion"][0]["content"] for e in prepared.examples] == [f"answer {i}" for i in range(6)]
    assert prepared.accounting.source == "stage:make_qa" and prepared.accounting.rows_used == 6
    prompts = prompt_data(config, {"stage:make_qa": written})
    assert [p["prompt"] for p in prompts.examples] == [[user(f"question {i}")] for i in range(6)]
    rows = load_rows("stage:make_qa", data_files={"stage:make_qa": written})
    assert rows[0].location == f"{written}:1"  # errors name the file the data stage wrote, and its line


def test_a_stage_source_without_its_file_is_a_clear_error(tmp_path):
    config = TrainStageConfig(kind="sft", data="stage:make_qa")
    with pytest.raises(DataError, match=r"stage:make_qa: the data of stage 'make_qa' is not available here"):
        sft_data(config, {})
    with pytest.raises(DataError, match=r"stage:make_qa: the file that stage wrote, '.*gone\.jsonl', does not exist"):
        sft_data(config, {"stage:make_qa": tmp_path / "gone.jsonl"})


def test_check_source_and_digest_accept_a_stage_source_without_touching_the_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing named like the source exists here
    check_source("stage:make_qa")
    assert source_digest("stage:make_qa") == source_digest("stage:make_qa") != source_digest("stage:other")


# ---- the four stage functions --------------------------------------------------------------------


def feedback_rows():
    rows = []
    for i in range(10):
        rows += [{"prompt": f"q{i}", "response": "good", "rating": "up"}, {"prompt": f"q{i}", "response": "bad", "rating": "down"}]
    return rows


def test_each_stage_function_applies_its_data_options_and_drop_limit(tmp_path):
    path = str(write_jsonl(tmp_path / "log.jsonl", feedback_rows() + [{"prompt": "q0", "response": "worse", "rating": "down"}]))
    prepared = preference_data(PreferenceStageConfig(kind="dpo", data=path, max_pairs_per_prompt=1), {})
    assert len(prepared.examples) == 10 and prepared.accounting.dropped == {"over_pair_cap": 1} and prepared.extras == {}
    test_side = preference_data(PreferenceStageConfig(kind="dpo", data=path, data_options={"split": "test", "test_share": 0.3}), {})
    assert 0 < len(test_side.examples) < 10 and "other_split" in test_side.accounting.dropped
    sft = sft_data(TrainStageConfig(kind="sft", data=path, max_drop_share=0.6), {})
    assert len(sft.examples) == 10 and sft.accounting.dropped == {"thumbs_down": 11}
    with pytest.raises(DataError, match=r"11 of 21 rows dropped \(thumbs_down: 11\), more than max_drop_share=0.5"):
        sft_data(TrainStageConfig(kind="sft", data=path), {})


def test_kto_data_carries_the_class_weights_in_extras(tmp_path):
    path = str(write_jsonl(tmp_path / "log.jsonl", feedback_rows() + [{"prompt": "q0", "response": "fine", "rating": "up"}]))
    prepared = kto_data(TrainStageConfig(kind="kto", data=path), {})
    assert prepared.extras == {"weights": {"desirable_weight": 1.0, "undesirable_weight": 1.1}}
    assert prepared.accounting.details["desirable"] == 11 and len(prepared.examples) == 21


# ---- one options type ----------------------------------------------------------------------------


def test_a_stage_config_validates_its_data_options_with_the_one_options_type():
    config = TrainStageConfig(kind="sft", data="x.jsonl", data_options={"format": "pairs", "on_error": "skip"})
    assert isinstance(config.data_options, DataOptions)
    assert config.data_options.format == "preference"  # aliases become the format's name
    for bad, message in (({"format": "thumb"}, "format 'thumb' is unknown (did you mean 'thumbs'?)"),
                         ({"dedupe": "fuzzy"}, "Input should be 'exact', 'normalized' or 'none'"),
                         ({"max_token": 3}, "Extra inputs are not permitted")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
            TrainStageConfig(kind="sft", data="x.jsonl", data_options=bad)


def test_data_options_as_keywords_give_one_line_errors():
    with pytest.raises(DataError, match="^dedupe is 'fuzzy'; use one of: exact, normalized, none$"):
        DataOptions.from_keywords({"dedupe": "fuzzy"})
    with pytest.raises(DataError, match="^test_share is 2; use a share between 0 and 1, e.g. 0.1$"):
        DataOptions.from_keywords({"test_share": 2})
    with pytest.raises(TypeError, match="unknown data option"):
        DataOptions.from_keywords({"tokenizer": object()})  # a runtime object, not an option


def test_options_import_neither_torch_nor_transformers():
    import subprocess
    import sys

    code = ("import sys, posttrain.stage, posttrain.data.options; "
            "print([m for m in ('torch', 'transformers', 'datasets', 'pyarrow') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


# ---- one split by conversation -------------------------------------------------------------------


def conversation_pairs(n=120):
    """Pairs whose prompts differ (system turn, follow-ups, case) but share their conversation's first user turn."""
    pairs = []
    for i in range(n):
        opening = f"Question {i}"
        prompts = [[user(opening)], [{"role": "system", "content": "Be brief."}, user(opening)],
                   [user(opening), bot("an answer"), user("and then?")], [user(opening.lower() + "  ")]]
        pairs += [{"prompt": p, "chosen": [bot("good")], "rejected": [bot("bad")]} for p in prompts]
    return pairs


def test_pairs_sharing_a_first_user_turn_land_on_one_side():
    pairs = conversation_pairs()
    train, held_out = split_by_conversation(pairs, 0.25, seed=7)
    assert len(train) + len(held_out) == len(pairs) and train and held_out
    opening = lambda pair: next(m["content"] for m in pair["prompt"] if m["role"] == "user").strip().lower()  # noqa: E731
    assert {opening(p) for p in train}.isdisjoint({opening(p) for p in held_out})
    assert all(len([p for p in side if opening(p) == opening(side[0])]) == 4 for side in (train, held_out))
    assert 0.1 < len(held_out) / len(pairs) < 0.4
    assert split_by_conversation(pairs, 0.25, seed=7) == (train, held_out)


def test_the_reward_models_held_out_pairs_are_the_data_splits_test_side():
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]} for p in conversation_pairs(60)]
    every, _ = to_preference_pairs(rows, "x")
    _, held_out = split_by_conversation(every, 0.2, seed=3)
    test_side, _ = to_preference_pairs(rows, "x", split="test", test_share=0.2, seed=3)
    assert held_out == test_side
    assert all(split_side(p["prompt"], 0.2, 3) == "test" for p in held_out)

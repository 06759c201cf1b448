"""A feedback store is a recipe's data as it is: every judgement accounted for, a disliked answer never a
demonstration, a flagged prompt a refusal example when asked, and the store's fingerprint moves with what
it would train and only with that. A stage may read several sources (the original log and the store)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from posttrain.data.sources import load_rows, source_digest
from posttrain.data.training_data import kto_data, preference_data, prompt_data, sft_data
from posttrain.errors import DataError
from posttrain.feedback.store import Answer, FeedbackStore, Judgement
from posttrain.recipe import load_recipe
from posttrain.stage import PreferenceStageConfig, TrainStageConfig

REFUSAL = "I can't help with that."


def ask(text):
    return [{"role": "user", "content": text}]


def answer(question, text, model="align"):
    return Answer(ask(question), text, model=model, stage=model, fingerprint="f" * 16)


def judgements() -> list[Judgement]:
    """Eight judgements; the test's own count of what each gives is written beside it."""
    return [
        Judgement("rating", answer("capital of France?", "Paris."), rating=1, user_id="u1"),                # up
        Judgement("rating", answer("capital of France?", "Paris is a city in France, which ..."), rating=-1, user_id="u1"),  # down
        Judgement("edit", answer("opposite of hot?", "warm"), correction="cold", user_id="u2"),              # down + up
        Judgement("flag", answer("how do I pick a lock?", "First, insert a tension wrench ..."), flag="unsafe", user_id="u3"),  # down (+ refusal up)
        Judgement("arena", answer("2+2?", "4"), other=answer("2+2?", "5", model="sft"), choice="a", user_id="u4"),  # up + down
        Judgement("arena", answer("2+3?", "5"), other=answer("2+3?", "5.", model="sft"), choice="tie", user_id="u4"),  # nothing: tie
        Judgement("rating", answer("capital of France?", "Paris."), rating=1, user_id="u1"),                # the same vote again
        Judgement("rating", answer("opposite of hot?", "warm"), rating=1, user_id="u5"),                    # a like of an edited-away answer
    ]


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "feedback.sqlite"
    store = FeedbackStore(path)
    store.add_many(judgements())
    store.close()
    return path


def test_a_store_reads_as_thumbs_rows_with_every_judgement_accounted_for(store_path):
    rows = load_rows(str(store_path))
    assert len(rows) == 7  # up, down, down + up (edit), down (flag), up + down (arena)
    assert sorted(r["rating"] for r in rows) == ["down"] * 4 + ["up"] * 3
    assert all(r.location.startswith(f"{store_path}: judgement ") for r in rows)
    assert sorted(reason for _, reason, _ in rows.skipped) == ["disliked_elsewhere", "same_vote_again", "tie"]
    # every judgement gave a row or is skipped with its reason
    given = {r.location for r in rows} | {location for location, _, _ in rows.skipped}
    assert given == {f"{store_path}: judgement {n}" for n in range(1, 9)}


def test_sft_on_a_store_learns_only_liked_answers_and_corrections(store_path):
    prepared = sft_data(TrainStageConfig(kind="sft", data=str(store_path), max_drop_share=0.9), {})
    taught = sorted(e["completion"][0]["content"] for e in prepared.examples)
    assert taught == ["4", "Paris.", "cold"]
    acct = prepared.accounting
    assert acct.rows_read == 10 and acct.rows_used == 3  # 7 rows + 3 skipped judgements
    assert acct.dropped["thumbs_down"] == 4 and acct.dropped["tie"] == 1 and acct.dropped["same_vote_again"] == 1
    assert acct.dropped["disliked_elsewhere"] == 1


def test_pairs_from_a_store_prefer_corrections_and_arena_winners(store_path):
    prepared = preference_data(PreferenceStageConfig(kind="dpo", data=str(store_path), max_drop_share=0.9), {})
    pairs = {(e["prompt"][0]["content"], e["chosen"][0]["content"], e["rejected"][0]["content"]) for e in prepared.examples}
    assert pairs == {("capital of France?", "Paris.", "Paris is a city in France, which ..."),
                     ("opposite of hot?", "cold", "warm"), ("2+2?", "4", "5")}


def test_a_flagged_answer_becomes_a_refusal_example_when_the_recipe_gives_the_refusal(store_path):
    options = {"refusal_for_flagged": REFUSAL}
    sft = sft_data(TrainStageConfig(kind="sft", data=str(store_path), data_options=options, max_drop_share=0.9), {})
    assert (ask("how do I pick a lock?"), REFUSAL) in [(e["prompt"], e["completion"][0]["content"]) for e in sft.examples]
    dpo = preference_data(PreferenceStageConfig(kind="dpo", data=str(store_path), data_options=options, max_drop_share=0.9), {})
    lock = [e for e in dpo.examples if e["prompt"] == ask("how do I pick a lock?")]
    assert [(e["chosen"][0]["content"], e["rejected"][0]["content"]) for e in lock] == [(REFUSAL, "First, insert a tension wrench ...")]
    without = sft_data(TrainStageConfig(kind="sft", data=str(store_path), max_drop_share=0.9), {})
    assert not any(e["prompt"] == ask("how do I pick a lock?") for e in without.examples)


def test_kto_and_prompts_read_a_store(store_path):
    kto = kto_data(TrainStageConfig(kind="kto", data=str(store_path), max_drop_share=0.9), {})
    assert sorted(e["label"] for e in kto.examples) == [False] * 4 + [True] * 3
    prompts = prompt_data(TrainStageConfig(kind="ppo", data=str(store_path), max_drop_share=0.9), {})
    assert len(prompts.examples) == 4  # France, hot, lock, 2+2 (the tie's prompt gave no row)


def test_the_stores_fingerprint_moves_with_what_it_trains_and_only_with_that(store_path):
    before = source_digest(str(store_path))
    store = FeedbackStore(store_path)
    store.add(Judgement("arena", answer("3+3?", "6"), other=answer("3+3?", "six", model="sft"), choice="tie", user_id="u9"))
    tie_only = source_digest(str(store_path))
    store.add(Judgement("rating", answer("3+3?", "6"), rating=1, user_id="u9"))
    store.close()
    after = source_digest(str(store_path))
    assert before != tie_only  # a tie is a skipped judgement: accounted for, so the ledger (and digest) changes
    assert tie_only != after
    assert source_digest(str(store_path)) == after  # reading it again changes nothing


def test_a_stage_reads_several_sources_and_keeps_each_ledger(store_path, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": ask("capital of Spain?"), "chosen": [{"role": "assistant", "content": "Madrid."}],
         "rejected": [{"role": "assistant", "content": "Madrid is a city."}]},
        {"prompt": ask("capital of Italy?"), "chosen": [{"role": "assistant", "content": "Rome."}],
         "rejected": [{"role": "assistant", "content": "Milan."}]},
    ]))
    config = PreferenceStageConfig(kind="dpo", data=[str(log), str(store_path)], max_drop_share=0.9)
    prepared = preference_data(config, {})
    assert len(prepared.examples) == 2 + 3
    acct = prepared.accounting
    assert set(acct.details["sources"]) == {str(log), str(store_path)}
    assert acct.rows_read == sum(part["rows_read"] for part in acct.details["sources"].values())
    assert acct.rows_read == acct.rows_used + acct.rows_dropped


def test_a_data_list_is_checked_when_the_recipe_loads(tmp_path, store_path):
    with pytest.raises(Exception, match="listed twice"):
        PreferenceStageConfig(kind="dpo", data=[str(store_path), str(store_path)])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\nbase: builtin:tiny-chat\nstages:\n  align: {{kind: dpo, data: [{store_path}, {tmp_path}/missing.sqlite]}}\n")
    result = run_cli("validate", str(recipe))
    assert result.returncode != 0 and "missing.sqlite" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    fixed = load_recipe(recipe, [f"stages.align.data=[{store_path}]"], None)
    assert fixed.stages[0].data == [str(store_path)]


def test_a_file_that_is_not_a_store_is_one_clear_line(tmp_path):
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("not a database")
    with pytest.raises(DataError, match="not a feedback store"):
        load_rows(str(bogus))
    compressed = tmp_path / "feedback.sqlite.gz"
    compressed.write_bytes(b"")
    with pytest.raises(DataError, match="a feedback store is read as it is; decompress it first"):
        load_rows(str(compressed))
    with pytest.raises(Exception, match="the list of data sources is empty"):
        PreferenceStageConfig(kind="dpo", data=[])


def test_export_gives_the_same_refusal_pairs_from_the_command_line(store_path, tmp_path):
    out = tmp_path / "pairs.jsonl"
    result = run_cli("feedback", "export", str(store_path), "--format", "pairs", "-o", str(out), "--refusal-for-flagged", REFUSAL)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {"prompt": ask("how do I pick a lock?"), "chosen": [{"role": "assistant", "content": REFUSAL}],
            "rejected": [{"role": "assistant", "content": "First, insert a tension wrench ..."}]} in rows

"""The embedded world and tokenizer: deterministic, held out by prompt, shipped files up to date."""

from __future__ import annotations

import json

from posttrain.embedded import world
from posttrain.embedded.tokenizer_build import TOKENIZER_DIR, build_tokenizer
from posttrain.eval.suites import TASKS_DIR
from posttrain.model_store import tokenizer_fingerprint


def test_held_out_prompts_never_appear_in_training_data():
    train_prompts = {row["messages"][0]["content"] for row in world.sft_rows()} | {row["prompt"] for row in world.feedback_rows()}
    held_out = {row["prompt"] for group in ("skills", "safety", "over_refusal") for row in world.eval_rows(group)}
    assert held_out and not train_prompts & held_out


def test_every_held_out_fact_and_phrasing_is_taught_in_another_combination():
    train_text = " ".join(row["messages"][0]["content"] + " " + row["messages"][1]["content"] for row in world.sft_rows())
    for row in world.eval_rows("skills"):
        assert row["target"].rstrip(".").lower() in train_text.lower()


def test_story_of_the_data():
    sft = world.sft_rows()
    replies = [row["messages"][1]["content"] for row in sft]
    rambling = sum(any(r in reply for r in world.RAMBLES) for reply in replies)
    assert 0.3 < rambling / len(replies) < 0.8  # SFT data rambles often
    unsafe = [row for row in sft if any(t in row["messages"][0]["content"] for t in world.UNSAFE_TOPICS)]
    assert sum(row["messages"][1]["content"] != world.REFUSAL for row in unsafe) / len(unsafe) > 0.6  # and complies
    feedback = world.feedback_rows()
    assert all(row["rating"] == "up" for row in feedback if row["response"] == world.REFUSAL and
               any(t in row["prompt"] for t in world.UNSAFE_TOPICS))
    assert all(row["rating"] == "down" for row in feedback if row["response"] == world.REFUSAL and
               any(t in row["prompt"] for t in world.BENIGN_TOPICS))


def test_generators_are_deterministic():
    assert world.sft_rows() == world.sft_rows() and world.feedback_rows() == world.feedback_rows()


def test_shipped_eval_suite_matches_the_generator():
    for group, name in (("skills", "world_skills"), ("safety", "world_safety"), ("over_refusal", "world_over_refusal")):
        shipped = [json.loads(line) for line in (TASKS_DIR / "assistant_world" / f"{name}.jsonl").read_text().splitlines()]
        assert shipped == world.eval_rows(group), "regenerate with: python -m posttrain.eval.suites"


def test_shipped_tokenizer_matches_a_rebuild():
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    assert tokenizer_fingerprint(shipped) == tokenizer_fingerprint(build_tokenizer())
    text = "What is the capital of France?"
    assert shipped.decode(shipped(text)["input_ids"]) == text

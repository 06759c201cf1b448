"""The real OpenAssistant trees: expected counts come from a plain walk of the raw JSON written here,
independently of the program, and the program must match them.

Rules checked (docs/data.md): an assistant reply is one row; "up" when +1 > -1, "down" when
-1 > +1, conflicting when equal and non-zero; SFT takes up replies and best-ranked replies
that are not down; pairs are up x down siblings plus better-ranked over worse-ranked
siblings (votes win a disagreement), capped per prompt; KTO takes up and down replies.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import combinations

import pytest

from posttrain.data.sources import load_rows
from posttrain.data.training_data import to_kto_examples, to_preference_pairs, to_sft_examples
from conftest import REPO

OASST = REPO.parent / "shared" / "data" / "oasst_en_100_tree.jsonl"


@pytest.fixture(scope="module")
def trees():
    if not OASST.is_file():
        pytest.skip(f"{OASST} is not here (CI has it)")
    return [json.loads(line) for line in OASST.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def rows(trees):
    return load_rows(str(OASST))


def replies(trees):
    """(conversation so far as (role, text) tuples, parent id, message) for every assistant message."""
    found = []

    def visit(message, conversation, parent_id):
        if message["role"] == "assistant":
            found.append((conversation, parent_id, message))
        role = "user" if message["role"] == "prompter" else "assistant"
        for child in message.get("replies") or []:
            visit(child, conversation + ((role, message["text"]),), message["message_id"])

    for tree in trees:
        visit(tree["prompt"], (), None)
    return found


def up_down(message):
    emojis = message.get("emojis") or {}
    return emojis.get("+1", 0), emojis.get("-1", 0)


def is_up(message):
    up, down = up_down(message)
    return up > down


def is_down(message):
    up, down = up_down(message)
    return down > up


def best_rank_by_parent(found):
    best = {}
    for _, parent, message in found:
        if message.get("rank") is not None:
            best[parent] = min(best.get(parent, message["rank"]), message["rank"])
    return best


def test_the_file_has_no_wrinkles_this_walk_ignores(trees):
    found = replies(trees)
    assert not any(m.get("deleted") or m.get("review_result") is False for _, _, m in found)
    conversations = defaultdict(set)
    for conversation, parent, _ in found:
        conversations[conversation].add(parent)
    assert all(len(parents) == 1 for parents in conversations.values())  # one parent per conversation prefix
    siblings = defaultdict(list)
    for _, parent, message in found:
        siblings[parent].append(message["text"])
    assert all(len(texts) == len(set(texts)) for texts in siblings.values())  # no duplicate sibling texts


def test_every_assistant_reply_is_one_row(trees, rows):
    expected = len(replies(trees))
    for _, acct, *_ in (to_sft_examples(rows, "oasst"), to_preference_pairs(rows, "oasst"), to_kto_examples(rows, "oasst")):
        assert acct.rows_read == expected == acct.rows_used + sum(acct.dropped.values())


def test_sft_rows_are_liked_or_best_ranked_replies(trees, rows):
    found = replies(trees)
    best = best_rank_by_parent(found)
    expected = {(c, m["text"]) for c, p, m in found
                if is_up(m) or (not is_down(m) and m.get("rank") is not None and m["rank"] == best[p])}
    examples, acct = to_sft_examples(rows, "oasst")
    got = {(tuple((t["role"], t["content"]) for t in e["prompt"]), e["completion"][0]["content"]) for e in examples}
    assert got == expected and acct.examples_used == len(expected)
    unvoted = [(p, m) for _, p, m in found if up_down(m) == (0, 0)]
    ranked_best = lambda p, m: m.get("rank") is not None and m["rank"] == best[p]  # noqa: E731
    conflicting_not_best = [m for _, p, m in found if up_down(m)[0] == up_down(m)[1] > 0 and not ranked_best(p, m)]
    assert acct.dropped == {
        "thumbs_down": sum(1 for _, _, m in found if is_down(m)),
        "conflicting_votes": len(conflicting_not_best),
        "not_best_ranked": sum(1 for p, m in unvoted if m.get("rank") is not None and not ranked_best(p, m)),
        "no_vote": sum(1 for _, m in unvoted if m.get("rank") is None),
    }


def expected_pairs(found, cap):
    """Per conversation prefix: up x down, then better rank over worse rank unless votes say the opposite."""
    by_parent = defaultdict(list)
    for conversation, parent, message in found:
        by_parent[parent].append((conversation, message))
    pairs = {}
    for siblings in by_parent.values():
        conversation = siblings[0][0]
        votes = {(a["text"], b["text"]) for _, a in siblings for _, b in siblings if is_up(a) and is_down(b)}
        ranks = set()
        for (_, a), (_, b) in combinations(siblings, 2):
            if a.get("rank") is None or b.get("rank") is None or a["rank"] == b["rank"]:
                continue
            better, worse = (a, b) if a["rank"] < b["rank"] else (b, a)
            if (worse["text"], better["text"]) not in votes:
                ranks.add((better["text"], worse["text"]))
        pairs[conversation] = votes | ranks
    return {c: p for c, p in pairs.items() if p}, sum(min(cap, len(p)) for p in pairs.values())


def test_pairs_match_an_independent_walk_uncapped(trees, rows):
    found = replies(trees)
    expected, total = expected_pairs(found, cap=10_000)
    made, acct = to_preference_pairs(rows, "oasst", max_pairs_per_prompt=10_000)
    got = defaultdict(set)
    for p in made:
        got[tuple((t["role"], t["content"]) for t in p["prompt"])].add((p["chosen"][0]["content"], p["rejected"][0]["content"]))
    assert dict(got) == expected and len(made) == total
    in_a_pair = {(c, text) for c, ps in expected.items() for pair in ps for text in pair}
    assert acct.rows_used == len(in_a_pair)
    assert "over_pair_cap" not in acct.dropped


def test_pairs_are_capped_per_prompt(trees, rows):
    for cap in (1, 3, 8):
        _, total = expected_pairs(replies(trees), cap)
        made, acct = to_preference_pairs(rows, "oasst", max_pairs_per_prompt=cap)
        assert len(made) == total
        assert acct.rows_used + sum(acct.dropped.values()) == acct.rows_read
        if cap == 1:  # one pair per prompt cannot use every reply of a three-way ranking
            assert acct.dropped["over_pair_cap"] > 0


def test_kto_rows_and_class_weights(trees, rows):
    found = replies(trees)
    desirable = sum(1 for _, _, m in found if is_up(m))
    undesirable = sum(1 for _, _, m in found if is_down(m))
    conflicting = sum(1 for _, _, m in found if up_down(m)[0] == up_down(m)[1] > 0)
    examples, acct, weights = to_kto_examples(rows, "oasst")
    assert sum(e["label"] for e in examples) == desirable and sum(not e["label"] for e in examples) == undesirable
    assert acct.dropped == {"conflicting_votes": conflicting, "no_vote": len(found) - desirable - undesirable - conflicting}
    ratio = weights["desirable_weight"] * desirable / (weights["undesirable_weight"] * undesirable)
    assert 1 <= ratio <= 4 / 3


def test_multi_turn_prompts_are_whole_conversations(rows):
    made, _ = to_preference_pairs(rows, "oasst")
    deep = [p for p in made if len(p["prompt"]) >= 3]
    assert deep, "the file has conversations several turns deep"
    for pair in deep:
        roles = [m["role"] for m in pair["prompt"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]


def test_held_out_split_keeps_each_tree_on_one_side(rows):
    train, _ = to_preference_pairs(rows, "oasst", split="train", test_share=0.2)
    test, _ = to_preference_pairs(rows, "oasst", split="test", test_share=0.2)
    openings = lambda made: {p["prompt"][0]["content"] for p in made}  # noqa: E731
    assert openings(train).isdisjoint(openings(test)) and openings(test)
    assert len(train) + len(test) == len(to_preference_pairs(rows, "oasst")[0])

"""`posttrain feedback import` accounts for every item of an Open WebUI export and an Arena vote log;
`posttrain feedback export` writes what posttrain's data layer reads, and a disliked answer never
becomes a demonstration or a chosen reply."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from conftest import run_cli
from posttrain.data.sources import load_rows
from posttrain.data.training_data import to_kto_examples, to_preference_pairs, to_sft_examples
from posttrain.feedback.exporters import export
from posttrain.feedback.store import Answer, FeedbackStore, Judgement

# -- Open WebUI -----------------------------------------------------------------------------


def _webui_item(item_id: str, rating, turns: list[tuple[str, str]], rated: int | None = None, sibling: str | None = None,
                **overrides) -> dict:
    """A feedback item as Open WebUI exports it: the chat's history is a tree of messages by id."""
    messages, parent = {}, None
    for n, (role, content) in enumerate(turns):
        mid = f"{item_id}-m{n}"
        messages[mid] = {"id": mid, "parentId": parent, "childrenIds": [], "role": role, "content": content, "model": "llama-chat"}
        if parent:
            messages[parent]["childrenIds"].append(mid)
        parent = mid
    if sibling is not None:  # a regenerated answer beside the last one: not on the rated branch
        last = messages[f"{item_id}-m{len(turns) - 1}"]
        messages[f"{item_id}-sib"] = {**last, "id": f"{item_id}-sib", "content": sibling}
        messages[last["parentId"]]["childrenIds"].append(f"{item_id}-sib")
    rated_id = f"{item_id}-m{len(turns) - 1 if rated is None else rated}"
    item = {
        "id": item_id, "user_id": f"user-{item_id[-1]}", "version": 0, "type": "rating",
        "data": {"rating": rating, "model_id": "llama-chat", "sibling_model_ids": None, "reason": "", "comment": "", "tags": []},
        "meta": {"arena": False, "chat_id": f"chat-{item_id}", "message_id": rated_id, "message_index": len(turns)},
        "snapshot": {"chat": {"id": f"chat-{item_id}", "title": "t", "chat": {"history": {"messages": messages, "currentId": rated_id}}}},
        "created_at": 1730000000, "updated_at": 1730000000,
    }
    item.update(overrides)
    return item


ONE_TURN = [("user", "What is the capital of France?"), ("assistant", "Paris.")]
TWO_TURNS = [("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a prime."), ("assistant", "Nine.")]


def _webui_export() -> list[tuple[str, object]]:
    """(the outcome this item must have, the item): the test's own count of what an import must do."""
    return [
        ("imported", _webui_item("fb-1", 1, ONE_TURN)),
        ("imported", _webui_item("fb-2", -1, TWO_TURNS, sibling="Seven.")),
        ("imported", _webui_item("fb-3", "1", ONE_TURN)),  # Open WebUI may store the rating as text
        ("not_a_rating", _webui_item("fb-4", 1, ONE_TURN, type="comment")),
        ("no_rating", _webui_item("fb-5", None, ONE_TURN)),
        ("no_conversation", _webui_item("fb-6", 1, ONE_TURN, snapshot={})),
        ("message_not_found", _webui_item("fb-7", 1, ONE_TURN, meta={"message_id": "gone"})),
        ("not_an_answer", _webui_item("fb-8", 1, ONE_TURN, rated=0)),
        ("not_an_object", "a stray string"),
        ("already", _webui_item("fb-1", 1, ONE_TURN)),  # the same feedback id twice in one file
    ]


def test_an_open_webui_export_is_imported_with_every_item_accounted_for(tmp_path):
    cases = _webui_export()
    path = tmp_path / "feedback-export.json"
    path.write_text(json.dumps([item for _, item in cases]))
    expected = Counter(outcome for outcome, _ in cases)
    result = run_cli("feedback", "import", str(path), "--from", "openwebui", "-o", str(tmp_path / "fb.sqlite"))
    assert result.returncode == 0, result.stderr
    skipped = {k: v for k, v in expected.items() if k not in ("imported", "already")}
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
    assert (f"read {len(cases)} items from {path} (openwebui): imported {expected['imported']} into {tmp_path / 'fb.sqlite'}, "
            f"already there {expected['already']}, skipped {sum(skipped.values())} ({reasons})") in result.stdout

    stored = {j.event_id: j for j in FeedbackStore(tmp_path / "fb.sqlite").judgements()}
    assert set(stored) == {"openwebui:fb-1", "openwebui:fb-2", "openwebui:fb-3"}
    two = stored["openwebui:fb-2"]
    assert two.kind == "rating" and two.rating == -1 and two.answer.text == "Nine." and two.answer.model == "llama-chat"
    assert two.answer.conversation == [{"role": r, "content": c} for r, c in TWO_TURNS[:-1]]  # the rated branch, not the sibling
    assert two.source == "import:openwebui" and two.created_at.startswith("2024-10-27")
    assert two.user_id.startswith("openwebui:") and "user-2" not in two.user_id  # pseudonymous

    again = run_cli("feedback", "import", str(path), "--from", "openwebui", "-o", str(tmp_path / "fb.sqlite"))
    assert f"imported 0 into {tmp_path / 'fb.sqlite'}, already there {expected['imported'] + expected['already']}" in again.stdout
    assert FeedbackStore(tmp_path / "fb.sqlite").count() == expected["imported"]


# -- Chatbot Arena / FastChat ----------------------------------------------------------------


def _state(model: str, turns: list[tuple[str, str | None]], offset: int = 0, few_shot: int = 0) -> dict:
    roles = ("USER", "ASSISTANT")
    shots = [[roles[i % 2], f"example {i}"] for i in range(few_shot)]
    return {"conv_id": f"c-{model}", "model_name": model, "roles": list(roles), "offset": offset or few_shot,
            "system_message": "A chat between a curious user and an assistant.", "template_name": "one_shot",
            "messages": shots + [[roles[0] if role == "user" else roles[1], text] for role, text in turns]}


def _vote(kind: str, a_turns, b_turns, **more) -> dict:
    return {"tstamp": 1700000000.5, "type": kind, "models": ["", ""], "ip": "10.0.0.7",
            "states": [_state("vicuna", a_turns, **more), _state("llama", b_turns)]}


def _arena_log() -> list[tuple[str, str]]:
    q = ("user", "Write a haiku.")
    return [
        ("a", json.dumps(_vote("leftvote", [q, ("assistant", "Leaves fall.")], [q, ("assistant", "No.")], few_shot=2))),
        ("b", json.dumps(_vote("rightvote", [q, ("assistant", "A"), ("user", "More?"), ("assistant", "B")],
                               [q, ("assistant", "C"), ("user", "More?"), ("assistant", "D")]))),
        ("tie", json.dumps(_vote("tievote", [q, ("assistant", "x")], [q, ("assistant", "y")]))),
        ("both_bad", json.dumps(_vote("bothbad_vote", [q, ("assistant", "bad")], [q, ("assistant", "worse")]))),
        ("not_an_arena_vote", json.dumps({"tstamp": 1, "type": "chat", "model": "vicuna", "state": {}})),
        ("not_an_arena_vote", json.dumps({"tstamp": 1, "type": "upvote", "model": "vicuna", "state": {}})),
        ("malformed_json", '{"type": "leftvote", "states": ['),
        ("unanswered", json.dumps(_vote("leftvote", [q, ("assistant", None)], [q, ("assistant", "y")]))),
        ("missing_states", json.dumps({"tstamp": 1, "type": "leftvote", "models": ["a", "b"], "states": [{}]})),
    ]


def test_an_arena_vote_log_is_imported_with_every_line_accounted_for(tmp_path):
    cases = _arena_log()
    path = tmp_path / "2024-01-01-conv.json"
    path.write_text("\n".join(line for _, line in cases) + "\n")
    votes = Counter(outcome for outcome, _ in cases if outcome in ("a", "b", "tie", "both_bad"))
    skipped = Counter(outcome for outcome, _ in cases if outcome not in votes)
    result = run_cli("feedback", "import", str(path), "--from", "arena", "-o", str(tmp_path / "fb.sqlite"))
    assert result.returncode == 0, result.stderr
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(skipped.items()))
    assert (f"read {len(cases)} items from {path} (arena): imported {sum(votes.values())} into {tmp_path / 'fb.sqlite'}, "
            f"already there 0, skipped {sum(skipped.values())} ({reasons})") in result.stdout

    stored = FeedbackStore(tmp_path / "fb.sqlite").judgements()
    assert Counter(j.choice for j in stored) == votes
    first, second = stored[0], stored[1]
    assert first.answer.model == "vicuna" and first.other.model == "llama" and first.kind == "arena"
    assert first.answer.conversation == [{"role": "user", "content": "Write a haiku."}]  # the few-shot examples are left out
    assert first.answer.text == "Leaves fall." and first.other.text == "No."
    assert [m["content"] for m in second.answer.conversation] == ["Write a haiku.", "A", "More?"] and second.other.text == "D"
    assert first.user_id.startswith("arena:") and "10.0.0.7" not in json.dumps([j.user_id for j in stored])

    again = run_cli("feedback", "import", str(path), "--from", "arena", "-o", str(tmp_path / "fb.sqlite"))
    assert f"imported 0 into {tmp_path / 'fb.sqlite'}, already there {sum(votes.values())}" in again.stdout


@pytest.mark.parametrize("content, source, message", [
    ("not json at all", "openwebui", "malformed JSON at line 1"),
    ('{"id": "x"}', "openwebui", "expected a JSON list of feedback items"),
    ("", "arena", "the file holds no items"),
    ("[]", "arena-log", "--from 'arena-log' is unknown (did you mean 'arena'?)"),
])
def test_an_unusable_log_is_one_line(tmp_path, content, source, message):
    path = tmp_path / "log.json"
    path.write_text(content)
    result = run_cli("feedback", "import", str(path), "--from", source, "-o", str(tmp_path / "fb.sqlite"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


# -- export -----------------------------------------------------------------------------------

Q1 = [{"role": "user", "content": "How do I boil an egg?"}]
Q2 = [{"role": "user", "content": "Tell me a joke."}]


def _a(conversation, text, model="align") -> Answer:
    return Answer(conversation, text, model=model, stage=model, fingerprint=f"fp-{model}")


def _judgements() -> list[Judgement]:
    popular_but_unsafe = _a(Q1, "Put it in the microwave for ten minutes.")
    return [
        *(Judgement("rating", popular_but_unsafe, rating=1, user_id=f"fan-{n}") for n in range(3)),
        Judgement("flag", popular_but_unsafe, flag="unsafe", user_id="careful"),
        Judgement("edit", _a(Q1, "Boil it."), correction="Simmer it for nine minutes, then cool it in cold water.", user_id="cook"),
        Judgement("rating", _a(Q1, "Use a pan of water."), rating=1, user_id="cook"),
        Judgement("arena", _a(Q2, "Why did the chicken cross the road?", "sft"), other=_a(Q2, "No.", "align"), choice="a"),
        Judgement("arena", _a(Q2, "Knock knock.", "sft"), other=_a(Q2, "A pun.", "align"), choice="tie"),
        Judgement("arena", _a(Q2, "...", "sft"), other=_a(Q2, "?", "align"), choice="both_bad"),
    ]


def _rows(tmp_path, judgements, format) -> tuple[str, list[dict]]:
    store_path = tmp_path / f"{format}.sqlite"
    store = FeedbackStore(store_path)
    store.add_many(judgements)
    out = tmp_path / f"{format}.jsonl"
    result = run_cli("feedback", "export", str(store_path), "--format", format, "-o", str(out))
    assert result.returncode == 0, result.stderr
    return result.stdout, [json.loads(line) for line in out.read_text().splitlines()]


def _text(messages) -> str:
    return messages[-1]["content"]


def test_thumbs_export_reads_as_feedback_and_an_unsafe_answer_is_only_disliked(tmp_path):
    stdout, rows = _rows(tmp_path, _judgements(), "thumbs")
    unsafe = "Put it in the microwave for ten minutes."
    assert {r["rating"] for r in rows if _text(r["completion"]) == unsafe} == {"down"}  # three likes lose to one flag
    assert "skipped: disliked_elsewhere 3, tie 1" in stdout and "exported" in stdout
    source = str(tmp_path / "thumbs.jsonl")
    sft, acct = to_sft_examples(load_rows(source), source)
    demonstrations = {_text(e["completion"]) for e in sft}
    assert demonstrations == {"Simmer it for nine minutes, then cool it in cold water.", "Use a pan of water.",
                              "Why did the chicken cross the road?"}
    assert acct.rows_read == len(rows) and acct.dropped["thumbs_down"] == 5  # unsafe, "Boil it.", "No.", "...", "?"
    kto, _, _ = to_kto_examples(load_rows(source), source)
    assert {e["label"] for e in kto if _text(e["completion"]) == unsafe} == {False}


def test_pairs_and_openai_exports_prefer_corrections_and_arena_winners(tmp_path):
    stdout, pairs = _rows(tmp_path, _judgements(), "pairs")
    as_text = {(_text(p["prompt"]), _text(p["chosen"]), _text(p["rejected"])) for p in pairs}
    assert ("How do I boil an egg?", "Simmer it for nine minutes, then cool it in cold water.", "Boil it.") in as_text
    assert ("Tell me a joke.", "Why did the chicken cross the road?", "No.") in as_text
    assert not {chosen for _, chosen, _ in as_text} & {"Put it in the microwave for ten minutes.", "Boil it.", "No.", "...", "?"}
    # Every liked answer against every disliked one to the same conversation: 2 liked x 2 disliked (Q1), 1 x 3 (Q2).
    assert len(pairs) == 4 + 3
    source = str(tmp_path / "pairs.jsonl")
    read, acct = to_preference_pairs(load_rows(source), source)
    assert len(read) == len(pairs) and acct.formats == Counter({"preference": len(pairs)})

    _, openai = _rows(tmp_path, _judgements(), "openai")
    assert len(openai) == len(pairs)
    for row in openai:
        assert set(row) == {"input", "preferred_output", "non_preferred_output"}
        assert row["input"]["messages"][-1]["role"] == "user"
        assert [m["role"] for m in row["preferred_output"] + row["non_preferred_output"]] == ["assistant", "assistant"]
    assert {(_text(r["input"]["messages"]), _text(r["preferred_output"]), _text(r["non_preferred_output"])) for r in openai} == as_text


def test_arena_sides_with_different_histories_give_no_pair_of_their_own(tmp_path):
    a = _a([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "And?"}], "x", "sft")
    b = _a([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "And?"}], "y")
    result = export([Judgement("arena", a, other=b, choice="a")], "pairs")
    assert result.rows == [] and result.skipped == Counter({"arena_histories_differ": 1})


def test_every_judgement_is_used_or_skipped_and_no_disliked_answer_is_ever_a_demonstration(tmp_path):
    """Random judgements over a small pool of answers (so they collide): whatever the mix, an answer
    that anyone disliked is never an SFT example or a chosen reply."""
    rng = random.Random(7)
    prompts = [[{"role": "user", "content": f"question {n}"}] for n in range(4)]
    texts = [f"answer {n}" for n in range(12)]
    judgements, disliked = [], set()
    for n in range(200):
        q = rng.choice(prompts)
        a, b = rng.sample(texts, 2)
        kind = rng.choices(["up", "down", "edit", "flag", "arena"], weights=[6, 1, 1, 1, 1])[0]
        key = (q[0]["content"], a)
        if kind in ("up", "down"):
            judgements.append(Judgement("rating", _a(q, a), rating=1 if kind == "up" else -1, user_id=f"u{n % 7}"))
            if kind == "down":
                disliked.add(key)
        elif kind in ("edit", "flag"):
            correction = b if rng.random() < 0.5 or kind == "edit" else None
            judgements.append(Judgement(kind, _a(q, a), correction=correction, flag="unsafe" if kind == "flag" else None))
            disliked.add(key)
        else:
            choice = rng.choice(["a", "b", "tie", "both_bad"])
            judgements.append(Judgement("arena", _a(q, a), other=_a(q, b), choice=choice))
            disliked |= {"a": {(q[0]["content"], b)}, "b": {key}, "tie": set(), "both_bad": {key, (q[0]["content"], b)}}[choice]
    for format in ("thumbs", "kto", "pairs", "openai"):
        result = export(judgements, format)
        assert result.used + sum(result.skipped.values()) == len(judgements) == result.judgements
    thumbs = export(judgements, "thumbs").rows
    path = tmp_path / "thumbs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in thumbs))
    sft, _ = to_sft_examples(load_rows(str(path)), str(path))
    assert sft and not {(_text(e["prompt"]), _text(e["completion"])) for e in sft} & disliked
    pairs = export(judgements, "pairs").rows
    assert pairs and not {(_text(p["prompt"]), _text(p["chosen"])) for p in pairs} & disliked


def test_an_unknown_format_is_one_line(tmp_path):
    FeedbackStore(tmp_path / "fb.sqlite")
    result = run_cli("feedback", "export", str(tmp_path / "fb.sqlite"), "--format", "pair", "-o", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --format 'pair' is unknown (did you mean 'pairs'?); use one of: thumbs, pairs, kto, openai"

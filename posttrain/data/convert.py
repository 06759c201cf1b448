"""Turn raw rows into what TRL trainers take, accounting for every row.

- `to_sft_examples`: conversational prompt/completion examples (loss on the completion).
- `to_preference_pairs`: conversational prompt/chosen/rejected pairs, from explicit pairs
  or from thumbs-up/down logs (every liked x disliked response to the same prompt).

Prompts are kept as message lists, so multi-turn conversations are rendered by the
model's own chat template inside the trainer.
"""

from __future__ import annotations

import json
from collections import defaultdict

from posttrain.data.accounting import DataAccounting
from posttrain.errors import DataError

Messages = list[dict]

RATING_VALUES = {
    "up": True, "+1": True, "1": True, "true": True, "thumbs_up": True, "good": True,
    "down": False, "-1": False, "0": False, "false": False, "thumbs_down": False, "bad": False,
}


def _text(row: dict, key: str) -> str | None:
    value = row.get(key)
    return value if isinstance(value, str) else None


def _prompt_messages(row: dict, where: str) -> Messages:
    """The conversation before the response: `messages` (all turns) or a `prompt` string or list."""
    prompt = row.get("prompt", row.get("messages"))
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise DataError(f"{where}: field 'prompt' (or 'messages') must be a string or a list of {{role, content}} messages")


def parse_rating(value, where: str) -> bool:
    key = str(value).strip().lower()
    if key not in RATING_VALUES:
        raise DataError(f"{where}: field 'rating' is {value!r}; use up/down, +1/-1 or true/false")
    return RATING_VALUES[key]


def _sft_example(row: dict, where: str) -> dict | None:
    """One prompt/completion example, or None when the row is a thumbs-down (not a demonstration)."""
    if "rating" in row and not parse_rating(row["rating"], where):
        return None
    if "messages" in row and "response" not in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} messages")
        if messages[-1].get("role") != "assistant":
            raise DataError(f"{where}: field 'messages': the last message must be the assistant's reply to learn")
        prompt, reply = _prompt_messages({"messages": messages[:-1]}, where), messages[-1].get("content")
    elif "instruction" in row:  # Alpaca
        prompt_text = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        prompt, reply = [{"role": "user", "content": prompt_text}], row.get("output")
    else:
        reply = row.get("response", row.get("completion"))
        if reply is None:
            raise DataError(f"{where}: no response field; expected 'messages', 'prompt'+'response', 'prompt'+'completion' or 'instruction'+'output'")
        prompt = _prompt_messages(row, where)
    if not isinstance(reply, str):
        raise DataError(f"{where}: the response must be a string, got {type(reply).__name__}")
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": reply}]}


def to_sft_examples(rows: list[dict], source: str) -> tuple[list[dict], DataAccounting]:
    acct = DataAccounting(source=source, rows_read=len(rows))
    examples, seen = [], set()
    for i, row in enumerate(rows, start=1):
        example = _sft_example(row, f"{source}: row {i}")
        if example is None:
            acct.drop("thumbs_down")
            continue
        if not example["completion"][0]["content"].strip():
            acct.drop("empty_response")
            continue
        key = json.dumps(example, sort_keys=True)
        if key in seen:
            acct.drop("duplicate")
            continue
        seen.add(key)
        examples.append(example)
    acct.rows_used = acct.examples_used = len(examples)
    acct.check_balanced()
    return examples, acct


def _assistant(text: str) -> Messages:
    return [{"role": "assistant", "content": text}]


def to_preference_pairs(rows: list[dict], source: str, max_pairs_per_prompt: int = 8) -> tuple[list[dict], DataAccounting]:
    acct = DataAccounting(source=source, rows_read=len(rows))
    pairs: list[dict] = []

    votes: dict[str, dict[str, set[bool]]] = defaultdict(lambda: defaultdict(set))  # prompt -> response -> votes
    row_ids: dict[tuple[str, str], list[int]] = defaultdict(list)
    prompts: dict[str, Messages] = {}
    for i, row in enumerate(rows, start=1):
        where = f"{source}: row {i}"
        if "chosen" in row and "rejected" in row:  # an explicit pair
            chosen, rejected = row["chosen"], row["rejected"]
            chosen = _assistant(chosen) if isinstance(chosen, str) else chosen
            rejected = _assistant(rejected) if isinstance(rejected, str) else rejected
            if chosen == rejected:
                acct.drop("chosen_equals_rejected")
                continue
            pairs.append({"prompt": _prompt_messages(row, where), "chosen": chosen, "rejected": rejected})
            acct.rows_used += 1
            continue
        if "rating" not in row or _text(row, "response") is None:
            raise DataError(f"{where}: not a preference row; expected 'prompt'+'chosen'+'rejected' or 'prompt'+'response'+'rating'")
        prompt = _prompt_messages(row, where)
        key = json.dumps(prompt, sort_keys=True)
        prompts[key] = prompt
        if not row["response"].strip():
            acct.drop("empty_response")
            continue
        votes[key][row["response"]].add(parse_rating(row["rating"], where))
        row_ids[(key, row["response"])].append(i)

    for key, responses in votes.items():
        conflicted = [r for r, v in responses.items() if len(v) > 1]
        for r in conflicted:  # liked and disliked: no signal, so it joins no pair
            acct.drop("conflicting_votes", len(row_ids[(key, r)]))
        liked = sorted(r for r, v in responses.items() if v == {True})
        disliked = sorted(r for r, v in responses.items() if v == {False})
        if not liked or not disliked:
            acct.drop("no_opposite_vote", sum(len(row_ids[(key, r)]) for r in liked + disliked))
            continue
        chosen_pairs = [(c, r) for c in liked for r in disliked][:max_pairs_per_prompt]
        in_pair = {c for c, _ in chosen_pairs} | {r for _, r in chosen_pairs}
        for response in liked + disliked:
            n = len(row_ids[(key, response)])
            if response in in_pair:
                acct.rows_used += n
            else:
                acct.drop("over_pair_cap", n)
        pairs += [{"prompt": prompts[key], "chosen": _assistant(c), "rejected": _assistant(r)} for c, r in chosen_pairs]

    acct.examples_used = len(pairs)
    acct.check_balanced()
    if not pairs:
        raise DataError(f"{source}: no preference pairs after filtering ({', '.join(f'{k}: {v}' for k, v in acct.dropped.items()) or 'no rows'}); each prompt needs a liked and a disliked response")
    return pairs, acct

"""Step 5, examples: units -> unpaired KTO examples (prompt, completion, label) and class-balance weights.

- a reply whose pooled votes lean up is desirable, down undesirable; conflicting votes
  and unvoted replies drop (`conflicting_votes`, `no_vote`); ranks alone are not binary
  feedback, so they label nothing;
- a preference pair gives its chosen side (desirable) and rejected side (undesirable);
- a rated row gives its best-scored completion (desirable) and its worst (undesirable);
- a demonstration is desirable.
The same prompt and completion labelled both ways by different rows drops everywhere
(`conflicting_labels`); labelled the same way again it is a `duplicate`.
"""

from __future__ import annotations

import math
from collections import defaultdict

from posttrain.data.accounting import DataAccounting
from posttrain.data.filters import conversation_key
from posttrain.data.options import DataOptions
from posttrain.data.sources import RowError
from posttrain.data.units import Demo, Messages, Pair, Rated, Unit, Vote, assistant
from posttrain.data.votes import pool_votes

Labelled = tuple[Messages, Messages, bool]  # prompt, completion, desirable?


def build_kto(units: list[Unit], acct: DataAccounting, options: DataOptions) -> list[dict]:
    responses, superseded = pool_votes([u for u in units if isinstance(u, Vote)], options.dedupe, options.both_votes)
    acct.drop("superseded_vote", len(superseded))
    response_of = {id(u): r for r in responses for u in r.units}
    owners: list[tuple[list[Unit], list[Labelled]]] = []  # the rows behind each group of examples
    for unit in units:
        if isinstance(unit, Vote):
            response = response_of.get(id(unit))
            if response is None or response.units[0] is not unit:
                continue  # superseded, or pooled into an earlier row
            if response.label in ("up", "down"):
                owners.append((response.units, [(response.prompt, assistant(response.text), response.label == "up")]))
            else:
                acct.drop("conflicting_votes" if response.label == "conflict" else "no_vote", len(response.units))
            continue
        labelled, reason = _labelled(unit, options)
        if reason:
            acct.drop(reason)
        else:
            owners.append(([unit], labelled))
    return _deduplicate(owners, acct, options.dedupe)


def _labelled(unit: Unit, options: DataOptions) -> tuple[list[Labelled], str | None]:
    if isinstance(unit, Demo):
        return [(unit.prompt, unit.completion, True)], None
    if isinstance(unit, Pair):
        return [(unit.prompt, unit.chosen, True), (unit.prompt, unit.rejected, False)], None
    assert isinstance(unit, Rated)
    best, worst = max(unit.scored, key=lambda rs: rs[1]), min(unit.scored, key=lambda rs: rs[1])
    if best[1] == worst[1]:
        if options.ties == "fail" and len(unit.scored) > 1:
            raise RowError(unit.location, f"has only completions with the same score ({best[1]:g}); ties give no label (set ties: skip)", "tie", "completions")
        return [], "tie" if len(unit.scored) > 1 else "too_few_responses"
    return [(unit.prompt, assistant(best[0]), True), (unit.prompt, assistant(worst[0]), False)], None


def _deduplicate(owners, acct: DataAccounting, dedupe: str) -> list[dict]:
    mode = "exact" if dedupe == "none" else dedupe
    labels: dict[tuple, set] = defaultdict(set)
    for _, labelled in owners:
        for prompt, completion, label in labelled:
            labels[(conversation_key(prompt, mode), conversation_key(completion, mode))].add(label)
    examples, seen = [], set()
    for rows, labelled in owners:
        added, conflicting = 0, False
        for prompt, completion, label in labelled:
            key = (conversation_key(prompt, mode), conversation_key(completion, mode))
            if len(labels[key]) > 1:
                conflicting = True
            elif dedupe == "none" or key not in seen:
                seen.add(key)
                examples.append({"prompt": prompt, "completion": completion, "label": label})
                added += 1
        if added:
            acct.use(len(rows))
        else:
            acct.drop("conflicting_labels" if conflicting else "duplicate", len(rows))
    return examples


def class_weights(desirable: int, undesirable: int) -> dict[str, float]:
    """Loss weights that balance the two classes: the minority class is weighted up.

    TRL advises keeping desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    within [1, 4/3]; balanced weights make it 1 (rounded so it never falls below 1).
    """
    if desirable >= undesirable:
        return {"desirable_weight": 1.0, "undesirable_weight": math.floor(desirable / undesirable * 1e4) / 1e4}
    return {"desirable_weight": math.ceil(undesirable / desirable * 1e4) / 1e4, "undesirable_weight": 1.0}

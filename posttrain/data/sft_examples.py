"""Step 5, examples: units -> SFT examples: demonstrations, liked or best-ranked replies, chosen sides, best-scored completions.

Which reply of a feedback row is a demonstration:
- a reply whose pooled votes lean up;
- a reply ranked best among its siblings whose votes do not lean down (votes, when they
  lean, outrank the ranking);
- everything else drops: `thumbs_down`, `conflicting_votes`, `not_best_ranked`, `no_vote`.
A preference pair contributes its chosen side, rated completions their best-scored ones.
"""

from __future__ import annotations

from collections import Counter

from posttrain.data.accounting import DataAccounting
from posttrain.data.filters import conversation_key
from posttrain.data.options import DataOptions
from posttrain.data.units import Demo, Messages, Pair, Rated, Unit, Vote, assistant
from posttrain.data.votes import Response, pool_votes


def build_sft(units: list[Unit], acct: DataAccounting, options: DataOptions) -> list[dict]:
    responses, superseded = pool_votes([u for u in units if isinstance(u, Vote)], options.dedupe, options.both_votes)
    acct.drop("superseded_vote", len(superseded))
    response_of = {id(u): r for r in responses for u in r.units}
    examples, seen, origins = [], set(), Counter()
    for unit in units:
        if isinstance(unit, Vote):
            response = response_of.get(id(unit))
            if response is None or response.units[0] is not unit:  # superseded, or pooled into an earlier row
                continue
            reason = why_not_a_demonstration(response)
            if reason:
                acct.drop(reason, len(response.units))
                continue
            origin, owners = ("liked" if response.label == "up" else "best_ranked"), len(response.units)
            candidates = [(response.prompt, assistant(response.text))]
        else:
            origin, owners = _ORIGIN[type(unit)], 1
            candidates = _candidates(unit)
        added = [_example(p, c) for p, c in candidates if _is_new(p, c, seen, options.dedupe)]
        if added:
            examples += added
            origins[origin] += len(added)
            acct.use(owners)
        else:
            acct.drop("duplicate", owners)
    acct.details["examples_from"] = dict(origins)
    return examples


_ORIGIN = {Demo: "demonstrations", Pair: "chosen", Rated: "best_scored"}


def why_not_a_demonstration(response: Response) -> str | None:
    if response.label == "up":
        return None
    if response.label == "down":
        return "thumbs_down"
    if response.best_ranked:
        return None
    if response.label == "conflict":
        return "conflicting_votes"
    return "not_best_ranked" if response.ranked else "no_vote"


def _candidates(unit: Unit) -> list[tuple[Messages, Messages]]:
    if isinstance(unit, Demo):
        return [(unit.prompt, unit.completion)]
    if isinstance(unit, Pair):
        return [(unit.prompt, unit.chosen)]
    top = max(s for _, s in unit.scored)  # every completion sharing the top score is a good demonstration
    return [(unit.prompt, assistant(r)) for r, s in unit.scored if s == top]


def _is_new(prompt: Messages, completion: Messages, seen: set, dedupe: str) -> bool:
    if dedupe == "none":
        return True
    key = (conversation_key(prompt, dedupe), conversation_key(completion, dedupe))
    if key in seen:
        return False
    seen.add(key)
    return True


def _example(prompt: Messages, completion: Messages) -> dict:
    return {"prompt": prompt, "completion": completion}

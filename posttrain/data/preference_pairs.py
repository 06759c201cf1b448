"""Step 5, examples: units -> preference pairs, from four sources of preference, each row accounted for.

- explicit pairs (preference rows, Anthropic HH): used as given, never capped;
- votes: every (liked, disliked) pair of replies to the same conversation prefix;
- ranks: every better-ranked over worse-ranked reply among siblings (rank 0 = best);
- scores: every higher-scored over lower-scored completion of a rated row.
Equal ranks or scores are ties: no pair (or an error with ties="fail"). When two pairs say
opposite things about the same two replies, the stronger source wins (explicit > votes >
ranks > scores), then the larger margin; equally strong opposite pairs both drop
(`contradictory_preference`).
Derived pairs are capped per prompt: strongest first, then those covering the most
not-yet-used replies, so the cap keeps as many distinct rows as it can.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from posttrain.data.accounting import DataAccounting
from posttrain.data.filters import conversation_key
from posttrain.data.options import DataOptions
from posttrain.data.sources import RowError
from posttrain.data.units import Demo, Messages, Pair, Rated, Unit, Vote, assistant
from posttrain.data.votes import Response, pool_votes

PRIORITY = {"explicit": 0, "votes": 1, "ranks": 2, "scores": 3}


@dataclass
class Candidate:
    prompt_key: str
    prompt: Messages
    chosen: Messages
    rejected: Messages
    source: str
    strength: float
    owners: list[Unit]
    order: int
    sides: tuple[str, str] = ("", "")

    def outranks(self, other: Candidate) -> bool:
        return (PRIORITY[self.source], -self.strength) < (PRIORITY[other.source], -other.strength)

    def as_pair(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass
class _Outcome:
    """Which rows went where, by id: the pair builder's scratch book."""

    used: set = field(default_factory=set)
    capped: set = field(default_factory=set)
    tied: set = field(default_factory=set)
    contradicted: set = field(default_factory=set)
    duplicate: set = field(default_factory=set)
    counted: set = field(default_factory=set)  # rows already dropped before pairing


def build_pairs(units: list[Unit], acct: DataAccounting, options: DataOptions, max_pairs_per_prompt: int) -> list[dict]:
    order = {id(u): i for i, u in enumerate(units)}
    votes = [u for u in units if isinstance(u, Vote)]
    responses, superseded = pool_votes(votes, options.dedupe, options.both_votes)
    acct.drop("superseded_vote", len(superseded))
    outcome = _Outcome(counted={id(v) for v in superseded})
    key = _keyer(options.dedupe)

    candidates = _explicit(units, order, key, acct, outcome)
    candidates += _from_votes(responses, order, key)
    candidates += _from_ranks(responses, order, key, options, outcome)
    candidates += _from_scores(units, order, key, options, outcome)
    candidates = _resolve(candidates, outcome)
    kept = _apply_cap(candidates, max_pairs_per_prompt, outcome)

    response_of = {id(u): r for r in responses for u in r.units}
    for unit in units:
        if id(unit) in outcome.counted:
            continue
        if id(unit) in outcome.used:
            acct.use()
        else:
            acct.drop(_why_unpaired(unit, response_of.get(id(unit)), outcome))
    kept.sort(key=lambda c: c.order)
    acct.details["pairs_from"] = dict(Counter(c.source for c in kept))
    return [c.as_pair() for c in kept]


def _keyer(dedupe: str):
    mode = "exact" if dedupe == "none" else dedupe
    return lambda messages: conversation_key(messages, mode)


def _candidate(prompt, chosen, rejected, source, strength, owners, order, key) -> Candidate:
    c = Candidate(key(prompt), prompt, chosen, rejected, source, strength, owners, min(order[id(o)] for o in owners))
    c.sides = (key(chosen), key(rejected))
    return c


def _explicit(units, order, key, acct: DataAccounting, outcome: _Outcome) -> list[Candidate]:
    out = []
    for unit in units:
        if isinstance(unit, Pair):
            if key(unit.chosen) == key(unit.rejected):
                acct.drop("chosen_equals_rejected")
                outcome.counted.add(id(unit))
                continue
            out.append(_candidate(unit.prompt, unit.chosen, unit.rejected, "explicit", 0, [unit], order, key))
    return out


def _from_votes(responses: list[Response], order, key) -> list[Candidate]:
    by_prompt: dict[str, list[Response]] = defaultdict(list)
    for r in responses:
        by_prompt[r.prompt_key].append(r)
    out = []
    for group in by_prompt.values():
        liked = [r for r in group if r.label == "up"]
        disliked = [r for r in group if r.label == "down"]
        out += [_candidate(c.prompt, assistant(c.text), assistant(r.text), "votes", c.net - r.net, c.units + r.units, order, key)
                for c in liked for r in disliked]
    return out


def _from_ranks(responses: list[Response], order, key, options: DataOptions, outcome: _Outcome) -> list[Candidate]:
    siblings: dict[str, list[tuple[Vote, Response]]] = defaultdict(list)
    for r in responses:
        for unit in r.units:
            if unit.rank is not None:
                siblings[unit.rank_group].append((unit, r))
    out = []
    for group in siblings.values():
        for (a, ra), (b, rb) in combinations(group, 2):
            if ra is rb:
                continue
            if a.rank == b.rank:
                _tie(options, outcome, b, f"has the same rank ({b.rank:g}) as its sibling {a.location}", "rank", ra.units + rb.units)
                continue
            (best, rbest), (worst, rworst) = sorted([(a, ra), (b, rb)], key=lambda pair: pair[0].rank)
            out.append(_candidate(rbest.prompt, assistant(rbest.text), assistant(rworst.text), "ranks",
                                  worst.rank - best.rank, rbest.units + rworst.units, order, key))
    return out


def _from_scores(units: list[Unit], order, key, options: DataOptions, outcome: _Outcome) -> list[Candidate]:
    out = []
    for unit in units:
        if not isinstance(unit, Rated):
            continue
        for (ra, sa), (rb, sb) in combinations(unit.scored, 2):
            if key(assistant(ra)) == key(assistant(rb)):
                continue
            if sa == sb:
                _tie(options, outcome, unit, f"holds two different completions with the same score ({sa:g})", "completions", [unit])
                continue
            (hi, s_hi), (lo, s_lo) = sorted([(ra, sa), (rb, sb)], key=lambda item: -item[1])
            out.append(_candidate(unit.prompt, assistant(hi), assistant(lo), "scores", s_hi - s_lo, [unit], order, key))
    return out


def _tie(options: DataOptions, outcome: _Outcome, unit: Unit, problem: str, field_name: str, units: list[Unit]) -> None:
    if options.ties == "fail":
        raise RowError(unit.location, f"{problem}; ties give no preference (set ties: skip to leave them unpaired)", "tie", field_name)
    outcome.tied.update(id(u) for u in units)


def _resolve(candidates: list[Candidate], outcome: _Outcome) -> list[Candidate]:
    """Merge repeats of the same pair; settle pairs that say opposite things about two replies."""
    by_pair: dict[tuple, Candidate] = {}
    for c in candidates:
        same = by_pair.get((c.prompt_key, *c.sides))
        if same is None:
            by_pair[(c.prompt_key, *c.sides)] = c
        elif same.source == c.source == "explicit":
            outcome.duplicate.update(id(o) for o in c.owners)  # the same pair given twice
        else:
            owned = {id(o) for o in same.owners}
            same.owners += [o for o in c.owners if id(o) not in owned]
    dropped = set()
    for c in by_pair.values():
        reverse = by_pair.get((c.prompt_key, c.sides[1], c.sides[0]))
        if reverse is not None and not c.outranks(reverse):
            dropped.add(id(c))
            if not reverse.outranks(c):  # equally strong and opposite: neither can be trusted
                outcome.contradicted.update(id(o) for o in c.owners)
    return [c for c in by_pair.values() if id(c) not in dropped]


def _apply_cap(candidates: list[Candidate], cap: int, outcome: _Outcome) -> list[Candidate]:
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    kept = []
    for c in candidates:
        if c.source == "explicit":
            kept.append(c)
        else:
            by_prompt[c.prompt_key].append(c)
    for group in by_prompt.values():
        chosen, rest = _select(group, cap)
        kept += chosen
        outcome.capped.update(id(o) for c in rest for o in c.owners)
    outcome.used.update(id(o) for c in kept for o in c.owners)
    return kept


def _select(group: list[Candidate], cap: int) -> tuple[list[Candidate], list[Candidate]]:
    """Up to `cap` pairs: strongest source and margin first, then most replies not yet used."""
    remaining, chosen, covered = list(group), [], set()

    def preference(c: Candidate):
        return PRIORITY[c.source], -c.strength, -len(set(c.sides) - covered), c.order

    while remaining and len(chosen) < cap:
        best = min(remaining, key=preference)
        remaining.remove(best)
        chosen.append(best)
        covered.update(best.sides)
    return chosen, remaining


def _why_unpaired(unit: Unit, response: Response | None, outcome: _Outcome) -> str:
    if id(unit) in outcome.capped:
        return "over_pair_cap"
    if id(unit) in outcome.duplicate:
        return "duplicate"
    if id(unit) in outcome.contradicted:
        return "contradictory_preference"
    if isinstance(unit, Demo):
        return "not_feedback"  # a demonstration states no preference
    if id(unit) in outcome.tied:
        return "tie"
    if isinstance(unit, Rated):
        return "too_few_responses"
    if response is not None and response.label == "conflict":
        return "conflicting_votes"
    if response is not None and response.label is None and not response.ranked:
        return "no_vote"
    return "no_opposite_vote"

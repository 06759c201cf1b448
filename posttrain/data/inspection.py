"""What is in a data source: format, counts, lengths, votes, ranks, and what each conversion makes of it.

`inspect_source` returns plain dicts (printable as JSON); `posttrain data inspect` renders them.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict

from posttrain.data.conversations import Conversations, conversation_units
from posttrain.data.filters import TokenCounter, conversation_key, split_key
from posttrain.data.options import DataOptions
from posttrain.data.sources import load_rows
from posttrain.data.training_data import to_kto_examples, to_preference_pairs, to_sft_examples
from posttrain.data.units import Rated, Unit, Vote
from posttrain.data.votes import vote_label
from posttrain.errors import DataError


def inspect_source(source: str, max_pairs_per_prompt: int = 8, examples: int = 1, tokenizer=None, **options) -> dict:
    opts = DataOptions.from_keywords(options)
    rows = load_rows(source, opts.on_error)
    found = conversation_units(rows, source, opts)
    units = found.units
    count = TokenCounter(tokenizer)
    report = {
        "source": source,
        "formats": dict(found.formats),
        "counts": _counts(rows, found),
        "lengths": _lengths(units, count, "tokens" if tokenizer else "tokens (approx.)"),
    }
    votes = [u for u in units if isinstance(u, Vote)]
    if any(v.up or v.down for v in votes):
        report["votes"] = _vote_stats(votes, opts.both_votes)
    if any(v.rank is not None for v in votes):
        report["ranks"] = _rank_stats(votes)
    rated = [u for u in units if isinstance(u, Rated)]
    if rated:
        report["scores"] = _score_stats(rated)
    report["conversions"], report["examples"] = _conversions(rows, source, max_pairs_per_prompt, examples, tokenizer, options)
    return report


def _counts(rows, found: Conversations) -> dict:
    units = found.units
    prompts = {conversation_key(u.prompt) for u in units}
    turns = [len(u.prompt) for u in units]
    out = {
        "records read": len(rows) + len(getattr(rows, "skipped", [])),
        "rows (accounting units)": len(units) + len(found.dropped),
        "rows unusable before conversion": ", ".join(f"{r} {n}" for r, n in Counter(d.reason for d in found.dropped).most_common()) or "none",
        "distinct prompts": len(prompts),
        "conversations (distinct opening turns)": len({split_key(u.prompt) for u in units}),
        "multi-turn prompts": sum(1 for p in {conversation_key(u.prompt): u.prompt for u in units}.values() if len(p) > 1),
        "max prompt turns": max(turns, default=0),
    }
    if "oasst" in found.formats:
        out["rows (accounting units)"] = f"{out['rows (accounting units)']} (one per assistant reply)"
    elif "self_instruct" in found.formats:
        out["rows (accounting units)"] = f"{out['rows (accounting units)']} (one per instance)"
    if found.details.get("merged_same_role_turns"):
        out["rows with same-role turns merged"] = found.details["merged_same_role_turns"]
    if found.details.get("duplicate_records_pooled"):
        out["duplicate records pooled"] = found.details["duplicate_records_pooled"]
    return out


def _summary(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "n": len(values), "min": ordered[0], "median": statistics.median(ordered), "mean": round(statistics.fmean(ordered), 1),
        "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1],
    }


def _lengths(units: list[Unit], count: TokenCounter, unit_name: str) -> dict:
    prompts = {conversation_key(u.prompt): u.prompt for u in units}
    responses = [count(r) for u in units for r in u.responses()]
    return {
        "unit": unit_name,
        "prompt": _summary([count.conversation(p) for p in prompts.values()]),
        "response": _summary(responses),
    }


def _vote_stats(votes: list[Vote], both_votes: str) -> dict:
    labels = Counter(vote_label(v.up, v.down, both_votes) for v in votes)
    out = {
        "feedback rows": len(votes),
        "+1 votes": sum(v.up for v in votes),
        "-1 votes": sum(v.down for v in votes),
        "up (more +1 than -1)": labels["up"],
        "down (more -1 than +1)": labels["down"],
        "tied votes (conflicting)": labels["conflict"],
        "unvoted": labels[None],
        "both +1 and -1": sum(1 for v in votes if v.up and v.down),
    }
    voters = {v.user for v in votes if v.user is not None}
    if voters:
        out["distinct voters (user or session)"] = len(voters)
    return out


def _rank_stats(votes: list[Vote]) -> dict:
    groups: dict = defaultdict(list)
    for v in votes:
        if v.rank is not None:
            groups[v.rank_group].append(v.rank)
    sizes = Counter(len(ranks) for ranks in groups.values())
    return {
        "ranked replies": sum(len(r) for r in groups.values()),
        "sibling groups with ranks": len(groups),
        "group sizes": ", ".join(f"{size}: {n}" for size, n in sorted(sizes.items())),
        "groups with tied ranks": sum(1 for r in groups.values() if len(set(r)) < len(r)),
        "ranked replies without votes": sum(1 for v in votes if v.rank is not None and not v.up and not v.down),
    }


def _score_stats(rated: list[Rated]) -> dict:
    scores = [s for u in rated for _, s in u.scored]
    return {
        "rated rows": len(rated),
        "completions per row": _summary([len(u.scored) for u in rated]),
        "score range": f"{min(scores):g} .. {max(scores):g}",
        "rows where all scores tie": sum(1 for u in rated if len({s for _, s in u.scored}) == 1),
    }


def _conversions(rows, source: str, max_pairs_per_prompt: int, examples: int, tokenizer, options: dict) -> tuple[dict, dict]:
    results, samples = {}, {}
    runs = {
        "sft": lambda: to_sft_examples(rows, source, tokenizer, **options),
        "pairs": lambda: to_preference_pairs(rows, source, max_pairs_per_prompt, tokenizer, **options),
        "kto": lambda: to_kto_examples(rows, source, tokenizer, **options),
    }
    for name, run in runs.items():
        try:
            made, acct, *weights = run()
        except DataError as e:  # e.g. no pairs in an SFT file: a finding, not a failure
            results[name] = {"error": str(e)}
            continue
        results[name] = {"examples": len(made), "rows used": acct.rows_used, "rows dropped": dict(acct.dropped.most_common())}
        if weights:
            results[name]["class weights"] = weights[0]
            results[name]["desirable / undesirable"] = f"{acct.details['desirable']} / {acct.details['undesirable']}"
        for detail in ("examples_from", "pairs_from"):
            if detail in acct.details:
                results[name]["from"] = acct.details[detail]
        samples[name] = made[:examples]
    return results, samples

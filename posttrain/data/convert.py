"""Turn raw rows into what TRL trainers take, accounting for every row.

- `to_sft_examples`: conversational prompt/completion examples (loss on the completion).
- `to_preference_pairs`: conversational prompt/chosen/rejected pairs, from explicit pairs,
  thumbs votes, sibling ranks and rated completions.
- `to_kto_examples`: unpaired prompt/completion/label examples plus class-balance weights.

Every function takes the rows of `load_rows(source)` (or plain dicts) in any supported
format, and the options of `DataOptions` as keywords (format, on_error, dedupe,
max_tokens, tokenizer, split, test_share, seed, both_votes, ties). Prompts stay message
lists, so multi-turn conversations are rendered by the model's own chat template inside
the trainer. Each returns the examples and a `DataAccounting` in which
rows_read == rows_used + sum(dropped by reason).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.errors import DataError

if TYPE_CHECKING:
    from posttrain.data.accounting import DataAccounting

# The conversion modules load on first use: stages import this module at recipe
# validation time, which should not pay for them.

__all__ = ["parse_rating", "to_kto_examples", "to_preference_pairs", "to_prompts", "to_sft_examples"]


def parse_rating(value, where: str) -> bool:
    """True for a thumbs-up, False for a thumbs-down; a clear error naming `where` otherwise."""
    from posttrain.data.fields import rating

    return rating(value, where)


def _prepare(rows, source: str, options: dict):
    from posttrain.data.options import make_options
    from posttrain.data.prepare import prepare

    opts = make_options(options)
    return (*prepare(rows, source, opts), opts)


def _reasons(acct: DataAccounting) -> str:
    reasons = ", ".join(f"{k}: {v}" for k, v in acct.dropped.most_common()) or "nothing dropped"
    return reasons + (f"; first skipped row: {acct.errors[0]}" if acct.errors else "")


def _finish(acct: DataAccounting, examples: list) -> None:
    acct.examples_used = len(examples)
    acct.check_balanced()


def to_sft_examples(rows: list[dict], source: str, **options) -> tuple[list[dict], DataAccounting]:
    """{"prompt": messages, "completion": [assistant message]} per demonstration."""
    from posttrain.data.to_sft import build_sft

    units, acct, opts = _prepare(rows, source, options)
    examples = build_sft(units, acct, opts)
    _finish(acct, examples)
    if not examples:
        raise DataError(f"{source}: no SFT examples after filtering ({_reasons(acct)}); "
                        f"SFT needs demonstrations, liked replies or best-ranked replies")
    return examples, acct


def to_preference_pairs(rows: list[dict], source: str, max_pairs_per_prompt: int = 8, **options) -> tuple[list[dict], DataAccounting]:
    """{"prompt": messages, "chosen": [assistant message], "rejected": [...]} per pair."""
    if max_pairs_per_prompt < 1:
        raise DataError(f"max_pairs_per_prompt is {max_pairs_per_prompt}; use 1 or more")
    from posttrain.data.to_pairs import build_pairs

    units, acct, opts = _prepare(rows, source, options)
    pairs = build_pairs(units, acct, opts, max_pairs_per_prompt)
    _finish(acct, pairs)
    if not pairs:
        raise DataError(f"{source}: no preference pairs after filtering ({_reasons(acct)}); "
                        f"each prompt needs a liked and a disliked response (or ranked or scored responses)")
    return pairs, acct


def to_kto_examples(rows: list[dict], source: str, **options) -> tuple[list[dict], DataAccounting, dict[str, float]]:
    """{"prompt": messages, "completion": [assistant message], "label": bool} per example, and
    {"desirable_weight", "undesirable_weight"} that balance the two classes."""
    from posttrain.data.to_kto import build_kto, class_weights

    units, acct, opts = _prepare(rows, source, options)
    examples = build_kto(units, acct, opts)
    _finish(acct, examples)
    desirable = sum(1 for e in examples if e["label"])
    undesirable = len(examples) - desirable
    if not desirable or not undesirable:
        raise DataError(f"{source}: KTO needs both desirable and undesirable examples; after filtering there are "
                        f"{desirable} desirable and {undesirable} undesirable ({_reasons(acct)})")
    weights = class_weights(desirable, undesirable)
    acct.details.update(desirable=desirable, undesirable=undesirable, **weights)
    return examples, acct, weights


def to_prompts(rows: list[dict], source: str, **options) -> tuple[list[dict], DataAccounting]:
    """{"prompt": messages} per distinct prompt, for RL stages that generate their own replies.

    Every row that passes the shared rules is used: its prompt is what an RL stage takes
    from it, whatever its reply or vote, so many rows can share one prompt.
    """
    import json

    units, acct, _ = _prepare(rows, source, options)
    prompts = {json.dumps(u.prompt, sort_keys=True): u.prompt for u in units}
    acct.use(len(units))
    examples = [{"prompt": p} for p in prompts.values()]
    _finish(acct, examples)
    if not examples:
        raise DataError(f"{source}: no prompts after filtering ({_reasons(acct)})")
    return examples, acct

"""What each stage trains on: the whole data path, once per target, end to end.

  read (sources) -> shape (formats) -> units (conversations) -> filter (filters) -> examples

Two ways in:
- from rows, for library callers and `posttrain data`: `to_sft_examples`, `to_preference_pairs`,
  `to_kto_examples`, `to_prompts` take the rows of `load_rows(source)` (or plain dicts) and
  the `DataOptions` fields as keywords, plus the runtime `tokenizer` that counts tokens
  (default: approximate);
- from a stage's config, for `Stage.prepare_data`: `sft_data`, `preference_data`, `kto_data`,
  `prompt_data` read the stage's `data` (a `stage:<name>` source through the run's
  `data_files`), apply its `data_options` and `max_drop_share`, and return `PreparedData`.
  `data` may list several sources: each is read and converted on its own (its own format;
  pairs and duplicates are found within a source), then the examples are joined and the
  ledgers summed (each source's kept in details["sources"]).

Each returns its examples and a `DataAccounting` in which rows_read == rows_used + sum(dropped
by reason). Prompts stay message lists, so multi-turn conversations are rendered by the
model's own chat template inside the trainer.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.data.accounting import DataAccounting
from posttrain.data.conversations import conversation_units
from posttrain.data.filters import conversation_key, filtered_units, split_by_conversation
from posttrain.data.kto_examples import build_kto, class_weights
from posttrain.data.options import DataOptions
from posttrain.data.preference_pairs import build_pairs
from posttrain.data.sft_examples import build_sft
from posttrain.data.sources import load_rows
from posttrain.data.units import Unit
from posttrain.errors import DataError
from posttrain.stage import PreparedData


def _usable_units(rows: list[dict], source: str, options: dict, tokenizer) -> tuple[list[Unit], DataAccounting, DataOptions]:
    opts = DataOptions.from_keywords(options)
    found = conversation_units(rows, source, opts)
    units, acct = filtered_units(found, source, opts, tokenizer)
    return units, acct, opts


# ---- from rows ---------------------------------------------------------------------------------


def to_sft_examples(rows: list[dict], source: str, tokenizer=None, **options) -> tuple[list[dict], DataAccounting]:
    """{"prompt": messages, "completion": [assistant message]} per demonstration."""
    units, acct, opts = _usable_units(rows, source, options, tokenizer)
    examples = build_sft(units, acct, opts)
    acct.finish(examples)
    if not examples:
        raise DataError(f"{source}: no SFT examples after filtering ({acct.reasons()}); "
                        f"SFT needs demonstrations, liked replies or best-ranked replies")
    return examples, acct


def to_preference_pairs(rows: list[dict], source: str, max_pairs_per_prompt: int = 8, tokenizer=None, **options) -> tuple[list[dict], DataAccounting]:
    """{"prompt": messages, "chosen": [assistant message], "rejected": [...]} per pair."""
    if max_pairs_per_prompt < 1:
        raise DataError(f"max_pairs_per_prompt is {max_pairs_per_prompt}; use 1 or more")
    units, acct, opts = _usable_units(rows, source, options, tokenizer)
    pairs = build_pairs(units, acct, opts, max_pairs_per_prompt)
    acct.finish(pairs)
    if not pairs:
        raise DataError(f"{source}: no preference pairs after filtering ({acct.reasons()}); "
                        f"each prompt needs a liked and a disliked response (or ranked or scored responses)")
    return pairs, acct


def to_kto_examples(rows: list[dict], source: str, tokenizer=None, **options) -> tuple[list[dict], DataAccounting, dict[str, float]]:
    """{"prompt": messages, "completion": [assistant message], "label": bool} per example, and
    {"desirable_weight", "undesirable_weight"} that balance the two classes."""
    examples, acct = _labelled_examples(rows, source, tokenizer, **options)
    return examples, acct, _balanced(examples, acct, source)


def _labelled_examples(rows: list[dict], source: str, tokenizer=None, **options) -> tuple[list[dict], DataAccounting]:
    units, acct, opts = _usable_units(rows, source, options, tokenizer)
    examples = build_kto(units, acct, opts)
    acct.finish(examples)
    return examples, acct


def _balanced(examples: list[dict], acct: DataAccounting, source: str) -> dict[str, float]:
    """KTO's class weights; both classes must be there."""
    desirable = sum(1 for e in examples if e["label"])
    undesirable = len(examples) - desirable
    if not desirable or not undesirable:
        raise DataError(f"{source}: KTO needs both desirable and undesirable examples; after filtering there are "
                        f"{desirable} desirable and {undesirable} undesirable ({acct.reasons()})")
    weights = class_weights(desirable, undesirable)
    acct.details.update(desirable=desirable, undesirable=undesirable, **weights)
    return weights


def to_prompts(rows: list[dict], source: str, tokenizer=None, **options) -> tuple[list[dict], DataAccounting]:
    """{"prompt": messages} per distinct prompt, for RL stages that generate their own replies.

    Every row that passes the shared rules is used: its prompt is what an RL stage takes
    from it, whatever its reply or vote, so many rows can share one prompt.
    """
    units, acct, _ = _usable_units(rows, source, options, tokenizer)
    prompts = {conversation_key(u.prompt): u.prompt for u in units}
    acct.use(len(units))
    examples = [{"prompt": p} for p in prompts.values()]
    acct.finish(examples)
    if not examples:
        raise DataError(f"{source}: no prompts after filtering ({acct.reasons()})")
    return examples, acct


# ---- from a stage's config (Stage.prepare_data) --------------------------------------------------


def _stage_rows(config, data_files: dict[str, Path], source: str) -> tuple[list[dict], dict]:
    options = config.data_options.model_dump()
    return load_rows(source, options["on_error"], data_files, options["refusal_for_flagged"]), options


def _stage_examples(config, data_files: dict[str, Path], convert) -> tuple[list[dict], DataAccounting]:
    """Every source of the stage's `data`, converted on its own by `convert(rows, source, options)` ->
    (examples, accounting), then joined; the stage's `max_drop_share` checked on the whole."""
    if hasattr(config, "trainer_args"):
        # Stage.prepare_data runs for every stage before any trains: the place for the checks of the
        # training settings that need transformers, TRL or the hardware (not done at validate: slow).
        from posttrain.training_settings import check_before_training

        check_before_training(config)
    examples, parts = [], []
    for source in config.data_sources:
        rows, options = _stage_rows(config, data_files, source)
        found, accounting = convert(rows, source, options)
        examples += found
        parts.append(accounting)
    accounting = DataAccounting.joined(parts)
    accounting.fail_if_too_many_dropped(config.max_drop_share)
    return examples, accounting


def _held_out(config, data_files: dict[str, Path], seed: int, prepared: PreparedData, convert) -> PreparedData:
    """Add the examples a stage computes its held-out loss on (`eval_share` or `eval_data`) to `prepared`:
    extras["eval_examples"]. eval_share splits the examples already built, by conversation (no prompt on
    both sides), so the file is read once; eval_data is converted like `data`, with the same options.
    `convert(rows, source, options)` -> (examples, accounting). Configs without these keys pass through."""
    share, source = getattr(config, "eval_share", None), getattr(config, "eval_data", None)
    accounting = prepared.accounting
    if share is not None:
        train, held = split_by_conversation(prepared.examples, share, seed)
        if not train or not held:
            raise DataError(f"{accounting.source}: {len(prepared.examples)} examples are too few to hold out eval_share={share} "
                            f"by conversation ({len(train)} would train, {len(held)} evaluate); use more data or another share")
        accounting.examples_used = len(train)
        accounting.details["eval_examples"] = len(held)
        return PreparedData(train, accounting, {**prepared.extras, "eval_examples": held})
    if source is not None:
        rows, options = _stage_rows(config, data_files, source)
        held, held_accounting = convert(rows, source, options)
        accounting.details["eval_data"] = held_accounting.to_dict()
        return PreparedData(prepared.examples, accounting, {**prepared.extras, "eval_examples": held})
    return prepared


def sft_data(config, data_files: dict[str, Path], seed: int = 0) -> PreparedData:
    """An SFT stage's examples (and its held-out examples, extras["eval_examples"], when it asks for a held-out loss)."""
    def convert(rows, source, options):
        return to_sft_examples(rows, source, **options)

    return _held_out(config, data_files, seed, PreparedData(*_stage_examples(config, data_files, convert)), convert)


def preference_data(config, data_files: dict[str, Path], seed: int = 0) -> PreparedData:
    """A preference stage's pairs (dpo, orpo, reward_model), capped at its `max_pairs_per_prompt`
    (and held-out pairs, extras["eval_examples"], when it asks for a held-out loss)."""
    def convert(rows, source, options):
        return to_preference_pairs(rows, source, config.max_pairs_per_prompt, **options)

    return _held_out(config, data_files, seed, PreparedData(*_stage_examples(config, data_files, convert)), convert)


def kto_data(config, data_files: dict[str, Path], seed: int = 0) -> PreparedData:
    """A KTO stage's examples; extras["weights"]: {"desirable_weight", "undesirable_weight"} balancing the classes
    (and extras["eval_examples"] when it asks for a held-out loss)."""
    def convert(rows, source, options):
        return _labelled_examples(rows, source, **options)

    examples, accounting = _stage_examples(config, data_files, convert)
    weights = _balanced(examples, accounting, accounting.source)  # over every source: one may hold a single class
    return _held_out(config, data_files, seed, PreparedData(examples, accounting, {"weights": weights}), convert)


def prompt_data(config, data_files: dict[str, Path]) -> PreparedData:
    """An RL stage's prompts (its policy generates the replies)."""
    def convert(rows, source, options):
        return to_prompts(rows, source, **options)

    prompts, accounting = _stage_examples(config, data_files, convert)
    unique = list({conversation_key(p["prompt"]): p for p in prompts}.values())  # a prompt in two sources is asked once
    accounting.examples_used = len(unique)
    return PreparedData(unique, accounting)

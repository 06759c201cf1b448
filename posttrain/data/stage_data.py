"""A training stage's data, converted for its trainer with the stage's `data_options`.

One function per shape (SFT examples, preference pairs, KTO examples, RL prompts), each applying the
stage's drop-share limit, so every stage reads and checks its data the same way, both in
`check_inputs` (before anything trains) and in `run`.
"""

from __future__ import annotations

from posttrain.data.convert import to_kto_examples, to_preference_pairs, to_prompts, to_sft_examples
from posttrain.data.sources import load_rows


def _rows_and_options(config):
    options = config.data_options.model_dump()
    return load_rows(config.data, on_error=options["on_error"]), options


def sft_data(config):
    rows, options = _rows_and_options(config)
    examples, accounting = to_sft_examples(rows, config.data, **options)
    accounting.fail_if_too_many_dropped(config.max_drop_share)
    return examples, accounting


def preference_data(config):
    rows, options = _rows_and_options(config)
    pairs, accounting = to_preference_pairs(rows, config.data, config.max_pairs_per_prompt, **options)
    accounting.fail_if_too_many_dropped(config.max_drop_share)
    return pairs, accounting


def kto_data(config):
    rows, options = _rows_and_options(config)
    examples, accounting, weights = to_kto_examples(rows, config.data, **options)
    accounting.fail_if_too_many_dropped(config.max_drop_share)
    return examples, accounting, weights


def prompt_data(config):
    rows, options = _rows_and_options(config)
    prompts, accounting = to_prompts(rows, config.data, **options)
    accounting.fail_if_too_many_dropped(config.max_drop_share)
    return prompts, accounting

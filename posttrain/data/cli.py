"""`posttrain data inspect` and `posttrain data convert`: look at feedback data, and turn it into training data.

Mistakes in the input raise `DataError`; the main command prints them as one line and
exits with status 2. The data modules load inside the commands, so `posttrain validate`
does not pay for them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from posttrain.errors import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Inspect feedback and training data, and convert it to SFT examples, preference pairs or KTO examples.")
console = Console()
TARGETS = ("sft", "pairs", "kto")

SourceArg = Annotated[str, typer.Argument(help=(
    "A .jsonl/.json/.csv/.tsv/.parquet file (also compressed: .gz, .bz2, .xz, .zst), builtin:<name>, or a Hub dataset owner/name[:split]."))]
FormatOpt = Annotated[Optional[str], typer.Option("--format", "-f", help=(
    "Force a format instead of detecting it: messages, alpaca, dolly, self_instruct, sharegpt, prompt_completion, preference, hh, "
    "rated, binary, thumbs, oasst."))]
ColumnOpt = Annotated[Optional[list[str]], typer.Option("--column", help=(
    "Read one of your columns as a field posttrain knows: FIELD=YOUR_COLUMN, e.g. --column prompt=question; repeatable."))]
OnErrorOpt = Annotated[str, typer.Option("--on-error", help="fail: stop at the first bad row; skip: drop it and count it.")]
PairCapOpt = Annotated[int, typer.Option("--max-pairs-per-prompt", help="Cap on pairs derived per prompt (votes, ranks, scores).")]
DedupeOpt = Annotated[str, typer.Option("--dedupe", help="exact, normalized (ignore case, punctuation, spacing) or none.")]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="Drop examples longer than this many tokens (prompt + reply).")]
TokenizerOpt = Annotated[Optional[str], typer.Option("--tokenizer", help="Count tokens with this tokenizer (local directory or hub id) instead of approximately.")]
BothVotesOpt = Annotated[str, typer.Option("--both-votes", help="A reply with up and down votes: majority (net vote decides) or drop.")]
TiesOpt = Annotated[str, typer.Option("--ties", help="Equal ranks or scores: skip (no pair) or fail.")]


def _options(format, on_error, dedupe, max_tokens, both_votes, ties, column, **more) -> dict:
    return {"format": format, "on_error": on_error, "dedupe": dedupe, "max_tokens": max_tokens, "both_votes": both_votes, "ties": ties,
            "columns": _columns(column), **more}


def _columns(values: list[str] | None) -> dict[str, str]:
    """--column FIELD=YOUR_COLUMN, repeated -> the `columns` option ({field: your_column})."""
    out: dict[str, str] = {}
    for value in values or []:
        field, sep, column = value.partition("=")
        field, column = field.strip(), column.strip()
        if not sep or not field or not column:
            raise DataError(f"--column '{value}': write FIELD=YOUR_COLUMN, e.g. --column prompt=question")
        if field in out:
            raise DataError(f"--column: '{field}' is given twice ({field}={out[field]} and {value}); give each field one column")
        out[field] = column
    return out


def _tokenizer(name: str | None):
    if not name:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


@app.command("inspect")
def inspect_command(
    source: SourceArg,
    format: FormatOpt = None,
    on_error: OnErrorOpt = "fail",
    max_pairs_per_prompt: PairCapOpt = 8,
    dedupe: DedupeOpt = "exact",
    max_tokens: MaxTokensOpt = None,
    tokenizer: TokenizerOpt = None,
    both_votes: BothVotesOpt = "majority",
    ties: TiesOpt = "skip",
    column: ColumnOpt = None,
    examples: Annotated[int, typer.Option("--examples", "-n", help="Examples to show per conversion.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
):
    """Detected format, counts, length, vote and rank statistics, and what each conversion makes of the data."""
    from posttrain.data.inspection import inspect_source

    options = _options(format, on_error, dedupe, max_tokens, both_votes, ties, column)
    report = inspect_source(source, max_pairs_per_prompt=max_pairs_per_prompt, examples=examples, tokenizer=_tokenizer(tokenizer), **options)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    _render(report)


def _render(report: dict) -> None:
    formats = ", ".join(f"{name} ({n} records)" for name, n in report["formats"].items()) or "none"
    console.print(f"[bold]{escape(report['source'])}[/bold]: format {escape(formats)}", soft_wrap=True)
    _key_values("Counts", report["counts"])
    _length_table(report["lengths"])
    for section in ("votes", "ranks", "scores"):
        if section in report:
            _key_values(section.capitalize(), report[section])
    _conversion_table(report["conversions"])
    for name, samples in report["examples"].items():
        for sample in samples:
            console.print(f"[bold]example ({name})[/bold]")
            _say(_shorten(sample))


def _say(text: str) -> None:
    """Plain text: no markup, no colouring of numbers, no wrapping inside paths and messages."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _key_values(title: str, values: dict) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in values.items():
        table.add_row(escape(str(key)), escape(_cell(value)))
    console.print(table)


def _length_table(lengths: dict) -> None:
    table = Table(title=f"Lengths in {lengths['unit']}", title_justify="left")
    for column in ("", "n", "min", "median", "mean", "p95", "max"):
        table.add_column(column, justify="right" if column else "left")
    for what in ("prompt", "response"):
        stats = lengths[what]
        if stats:
            table.add_row(what, *(f"{stats[k]:g}" for k in ("n", "min", "median", "mean", "p95", "max")))
    console.print(table)


def _conversion_table(conversions: dict) -> None:
    table = Table(title="Conversions (data convert --to ...)", title_justify="left")
    for column in ("to", "examples", "rows used", "rows dropped", "notes"):
        table.add_column(column)
    for name, result in conversions.items():
        if "error" in result:  # error texts quote the user's fields, e.g. conversations[from, value]: not markup
            table.add_row(escape(name), "-", "-", "-", escape(result["error"]))
            continue
        notes = []
        if "from" in result:
            notes.append("from " + ", ".join(f"{k} {v}" for k, v in result["from"].items()))
        if "class weights" in result:
            weights = result["class weights"]
            notes.append(f"desirable/undesirable {result['desirable / undesirable']}; weights "
                         f"{weights['desirable_weight']:g} / {weights['undesirable_weight']:g}")
        dropped = ", ".join(f"{k} {v}" for k, v in result["rows dropped"].items()) or "none"
        table.add_row(escape(name), str(result["examples"]), str(result["rows used"]), escape(dropped), escape("; ".join(notes)))
    console.print(table)


def _cell(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    return str(value)


def _shorten(example: dict, limit: int = 160) -> str:
    """An example as one JSON line per field, long texts cut so the shape stays readable."""
    def cut(value):
        if isinstance(value, str):
            return value if len(value) <= limit else value[:limit] + f"... (+{len(value) - limit} chars)"
        if isinstance(value, list):
            return [cut(v) for v in value]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return "\n".join(f"  {key}: {json.dumps(cut(value), ensure_ascii=False)}" for key, value in example.items())


@app.command("convert")
def convert_command(
    source: SourceArg,
    to: Annotated[str, typer.Option("--to", help="sft, pairs or kto.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output file: .jsonl (or .json, .parquet).")],
    format: FormatOpt = None,
    on_error: OnErrorOpt = "fail",
    max_pairs_per_prompt: PairCapOpt = 8,
    dedupe: DedupeOpt = "exact",
    max_tokens: MaxTokensOpt = None,
    tokenizer: TokenizerOpt = None,
    both_votes: BothVotesOpt = "majority",
    ties: TiesOpt = "skip",
    column: ColumnOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", help="Keep one side of a split by prompt: train or test.")] = None,
    test_share: Annotated[float, typer.Option("--test-share", help="Share of prompts in the test side.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split.")] = 0,
    max_drop_share: Annotated[Optional[float], typer.Option("--max-drop-share", help="Fail when more than this share of rows is dropped.")] = None,
):
    """Write SFT examples, preference pairs or KTO examples; each output works directly as a stage's data:."""
    if to not in TARGETS:
        raise DataError(f"--to is '{to}'; use one of: {', '.join(TARGETS)}")
    from posttrain.data.sources import load_rows
    from posttrain.data.training_data import to_kto_examples, to_preference_pairs, to_sft_examples
    from posttrain.data.writers import write_examples

    options = _options(format, on_error, dedupe, max_tokens, both_votes, ties, column, split=split, test_share=test_share, seed=seed)
    counter = _tokenizer(tokenizer)
    rows = load_rows(source, on_error)
    weights = None
    if to == "sft":
        examples, acct = to_sft_examples(rows, source, counter, **options)
    elif to == "pairs":
        examples, acct = to_preference_pairs(rows, source, max_pairs_per_prompt, counter, **options)
    else:
        examples, acct, weights = to_kto_examples(rows, source, counter, **options)
    if max_drop_share is not None:
        acct.fail_if_too_many_dropped(max_drop_share)
    write_examples(output, examples)
    _say(f"wrote {len(examples)} {to} examples to {output}")
    _say(f"{source}: {acct.summary()}")
    for message in acct.errors:
        _say(f"  skipped: {message}")
    if weights:
        _say(f"class balance: {acct.details['desirable']} desirable, {acct.details['undesirable']} undesirable; "
             f"desirable_weight {weights['desirable_weight']:g}, undesirable_weight {weights['undesirable_weight']:g}")

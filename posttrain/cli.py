"""The `posttrain` command: run, validate and plan recipes; compare finished runs.

typer parses the command line; user errors (PosttrainError) print as one line and exit
with status 2, bugs keep their traceback, and `--debug` shows the traceback for both.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from posttrain.errors import PosttrainError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Post-train a language model from one recipe: SFT, preference alignment, evaluation, comparison.")
console = Console()
from posttrain.data.cli import app as data_app  # noqa: E402
app.add_typer(data_app, name="data")

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/chat.yaml.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="Profile choosing the stages, e.g. internal or public.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a recipe field: key.path=value (repeatable).")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Run directory (default runs/<recipe name>/).")]


def _environment_defaults() -> None:
    # Nothing in a recipe run should wait on a hub it cannot reach; users who want hub
    # models online set HF_HUB_OFFLINE=0 explicitly.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Our progress display replaces the libraries' tqdm bars (datasets, lm-eval, weights).
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    # bitsandbytes warns on CPU that it could not fetch an optional kernel from the hub.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # TRL 1.16 still calls a transformers method renamed in 5.x; nothing for users to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def _load(recipe: Path, profile: str | None, overrides: list[str] | None):
    from posttrain.recipe import load_recipe

    return load_recipe(recipe, overrides or [], profile)


def _run_dir(recipe, output: Path | None) -> Path:
    return output or Path("runs") / recipe.name


@app.command()
def run(
    recipe: RecipeArg,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    output: OutputOpt = None,
    force: Annotated[Optional[list[str]], typer.Option("--force", help="Re-run this stage even if cached (repeatable).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Plain log lines instead of live progress (for CI).")] = False,
):
    """Run a recipe's stages in order, skipping those whose fingerprint is unchanged."""
    plan = _load(recipe, profile, set_)  # validate before the heavy imports below

    from posttrain.pipeline import Pipeline
    from posttrain.progress import ProgressReporter

    reporter = ProgressReporter(quiet=quiet)
    pipeline = Pipeline(plan, _run_dir(plan, output), reporter, force=tuple(force or ()))
    results = pipeline.run()
    _print_summary(results, f"{plan.name} ({plan.profile or 'all stages'}): held-out evaluation")
    console.print(f"run directory: {pipeline.run_dir}  (results.json, report.md, report.html)")
    release = results.get("release")
    if release and not release["releasable"]:
        from posttrain.errors import ReleaseBlocked
        from posttrain.eval.gates import failed_gates_line

        raise ReleaseBlocked(f"{failed_gates_line(release)}; every artifact is kept in {pipeline.run_dir}")


def _print_summary(results: dict, title: str) -> None:
    """The at-a-glance table, win rates and the release verdict, as report.md shows them."""
    from posttrain.eval.report import win_rate_table
    from posttrain.eval.summary import banner, table

    header, rows = table(results)
    if rows:
        grid = Table(title=title)
        for i, column in enumerate(header):
            grid.add_column(column, no_wrap=i == 1)  # metric names stay whole; numbers may wrap
        for i, (group, *cells) in enumerate(rows):
            new_group = i == 0 or rows[i - 1][0] != group
            if new_group and i:
                grid.add_section()
            grid.add_row(group if new_group else "", *cells)
        console.print(grid)
        for candidate, baseline, rate, ci, counts, words in win_rate_table(results["evaluation"]):
            console.print(f"win rate {candidate} vs {baseline}: {rate} (95% CI {ci}; W/T/L {counts}; mean words {words})")
    state, sentence = banner(results)
    if state != "ungated":
        console.print(f"[bold {'green' if state == 'releasable' else 'red'}]{sentence}[/]")


@app.command()
def validate(recipe: RecipeArg, profile: ProfileOpt = None, set_: SetOpt = None):
    """Check a recipe (keys, types, stage kinds, references, data paths) without loading a model."""
    plan = _load(recipe, profile, set_)
    console.print(f"{recipe}: ok ({len(plan.stages)} stages: {', '.join(s.name for s in plan.stages)})")


@app.command()
def plan(recipe: RecipeArg, profile: ProfileOpt = None, set_: SetOpt = None, output: OutputOpt = None):
    """Show the stages that would run, in order, with their models, data and cache state."""
    from posttrain.pipeline import Pipeline

    recipe_plan = _load(recipe, profile, set_)
    pipeline = Pipeline(recipe_plan, _run_dir(recipe_plan, output))
    table = Table(title=f"{recipe_plan.name}: profile {recipe_plan.profile or '(all stages)'} -> {pipeline.run_dir}")
    for column in ("#", "stage", "kind", "starts from / evaluates", "data", "fingerprint", "state"):
        table.add_column(column)
    for i, p in enumerate(pipeline.plan(), start=1):
        source = pipeline.registry.describe(p.stage.parent) if p.stage.parent else ", ".join(p.stage.evaluated_models)
        data = getattr(p.stage.config, "data", None) or ", ".join(getattr(p.stage.config, "tasks", []) or [])
        table.add_row(str(i), p.stage.name, p.stage.kind, source, data, p.fingerprint, "cached" if p.cached else "will run")
    console.print(table)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Finished run directories, e.g. runs/internal runs/public.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the comparison report goes.")] = Path("compare"),
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Model the deltas and win rates are against, as run/model (default: the first run's compare_to).")] = None,
    allow_different_settings: Annotated[bool, typer.Option("--allow-different-settings", help="Compare runs evaluated with different settings (marked unfair in the report).")] = False,
):
    """One report across finished runs (models named run/model): metrics, deltas, win rates, gates."""
    from posttrain.eval.compare import compare_runs

    results = compare_runs(runs, output, baseline, allow_different_settings)
    _print_summary(results, f"comparison of {', '.join(results['runs'])}")
    console.print(f"comparison: {output}  (results.json, report.md, report.html)")


def main() -> None:
    _environment_defaults()
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app(standalone_mode=False)
    except PosttrainError as e:
        if debug:
            raise
        from posttrain.secrets import redact

        print(f"error: {redact(str(e))}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click's usage errors arrive here with standalone_mode=False
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()

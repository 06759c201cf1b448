"""The `posttrain` command: run, validate and plan recipes; compare finished runs.

typer parses the command line. `main(argv)` returns the exit status instead of exiting,
so tests and launchers (`python -m posttrain`, `accelerate launch -m posttrain`) call it
directly. User errors (PosttrainError) print as one line and exit with status 2 (3 for a
blocked release, 130 for an interrupted stage); usage errors print click's usage message
and exit with status 2; bugs keep their traceback, and `--debug` shows the traceback of a
user error too.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from posttrain.environment import apply_defaults
from posttrain.errors import PosttrainError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every subcommand
                  help="Post-train a language model from one recipe: SFT, preference alignment, evaluation, comparison.")
# Replaced at every `main()` call, so that each invocation writes to the sys.stdout and
# uses the COLUMNS of its own call (rich reads COLUMNS when a Console is created).
console = Console()

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file, e.g. recipes/chat.yaml.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", "-p", help="Profile choosing the stages, e.g. internal or public.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a recipe field: key.path=value (repeatable).")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Run directory (default runs/<recipe name>/).")]
ReuseOpt = Annotated[Optional[Path], typer.Option("--reuse", help=(
    "An earlier run directory: stages whose fingerprint is unchanged are copied from it instead of trained, e.g. the previous "
    "round of a feedback loop (-o runs/round2 --reuse runs/round1), so `posttrain compare` can set the two rounds side by side."))]


def installed_version() -> str:
    try:
        return distribution_version("posttrain")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"posttrain {installed_version()}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the installed version and exit.")] = False,
):
    pass


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
    reuse: ReuseOpt = None,
):
    """Run a recipe's stages in order, skipping those whose fingerprint is unchanged."""
    plan = _load(recipe, profile, set_)  # validate before the heavy imports below

    from posttrain.pipeline import Pipeline
    from posttrain.progress import ProgressReporter

    reporter = ProgressReporter(quiet=quiet)
    pipeline = Pipeline(plan, _run_dir(plan, output), reporter, force=tuple(force or ()), reuse_from=reuse)
    results = pipeline.run()
    from posttrain import distributed

    if not distributed.is_main():  # several processes: rank 0 writes the results and reports, and speaks
        return
    from posttrain.reporting import write_run

    # The release gates are judged here, after evaluation, and recorded with the results and reports.
    results = write_run(pipeline.run_dir, results, plan)
    _print_summary(results, f"{plan.name} ({plan.profile or 'all stages'}): held-out evaluation")
    console.print(f"run directory: {pipeline.run_dir}  (results.json, report.md, report.html)")
    if results.release is not None and not results.release.releasable:
        from posttrain.errors import ReleaseBlocked
        from posttrain.reporting.release import failed_gates_line

        raise ReleaseBlocked(f"{failed_gates_line(results.release)}; every artifact is kept in {pipeline.run_dir}")


def _print_summary(results, title: str) -> None:
    """The at-a-glance table, win rates and the release verdict of a RunResults, as report.md shows them."""
    from posttrain.reporting.summary import banner, table, win_rate_table

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
        for candidate, baseline, rate, ci, counts, words in win_rate_table(results.evaluation):
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
def plan(recipe: RecipeArg, profile: ProfileOpt = None, set_: SetOpt = None, output: OutputOpt = None, reuse: ReuseOpt = None):
    """Show the stages that would run, in order, with their models, data and cache state."""
    from posttrain.pipeline import Pipeline

    recipe_plan = _load(recipe, profile, set_)
    pipeline = Pipeline(recipe_plan, _run_dir(recipe_plan, output), reuse_from=reuse)
    table = Table(title=f"{recipe_plan.name}: profile {recipe_plan.profile or '(all stages)'} -> {pipeline.run_dir}")
    for column in ("#", "stage", "kind", "role", "starts from / evaluates", "judge", "data", "fingerprint", "state"):
        table.add_column(column)
    for i, p in enumerate(pipeline.plan(), start=1):
        stage = p.stage
        source = pipeline.store.resolve(stage.parent).location if stage.parent else ", ".join(stage.evaluated)
        table.add_row(str(i), stage.name, stage.kind, stage.role.value, source, stage.judge or "", ", ".join(stage.data),
                      p.fingerprint, "cached" if p.cached else f"reused from {p.reusable_from}" if p.reusable_from else "will run")
    console.print(table)
    from posttrain.distributed import describe

    console.print(describe(recipe_plan), soft_wrap=True)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Finished run directories, e.g. runs/internal runs/public.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where the comparison report goes.")] = Path("compare"),
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="Model the deltas and win rates are against, as run/model (default: the first run's compare_to).")] = None,
    allow_different_settings: Annotated[bool, typer.Option("--allow-different-settings", help="Compare runs evaluated with different settings (marked unfair in the report).")] = False,
):
    """One report across finished runs (models named run/model): metrics, deltas, win rates, gates."""
    from posttrain.reporting.compare import compare_runs

    results = compare_runs(runs, output, baseline, allow_different_settings)
    _print_summary(results, f"comparison of {', '.join(results.runs)}")
    console.print(f"comparison: {output}  (results.json, report.md, report.html)")

# The other commands, after the recipe commands above so that `posttrain -h` lists those first.
from posttrain.data.cli import app as data_app  # noqa: E402
from posttrain.export.cli import export as export_command  # noqa: E402
from posttrain.feedback import cli as feedback_cli  # noqa: E402
from posttrain.bench.cli import app as bench_app  # noqa: E402

app.add_typer(data_app, name="data")
app.command(name="export")(export_command)
app.command(name="chat")(feedback_cli.chat_command)
app.command(name="serve")(feedback_cli.serve_command)
app.add_typer(feedback_cli.app, name="feedback")
app.add_typer(bench_app)  # its one command, `posttrain bench`, at the top level


def _other_rank() -> bool:
    """A rank other than 0 of a multi-process launch (a RANK that is not a number counts as rank 0)."""
    from posttrain import distributed

    try:
        return not distributed.is_main()
    except PosttrainError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run `posttrain ARGV` (default: sys.argv[1:]) and return the exit status.

    `--debug` anywhere on the line is taken out before parsing (sys.argv is left alone)
    and makes a user error raise with its traceback instead of printing one line.
    """
    global console
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    apply_defaults()
    console = stdout_console()
    try:
        status = app(args=args, prog_name="posttrain", standalone_mode=False)
    except PosttrainError as e:
        if debug:
            raise
        if e.same_on_every_rank and _other_rank():
            return e.exit_code  # rank 0 prints this very line
        from posttrain.secrets import redact

        print(f"error: {redact(str(e))}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:  # end of input at a prompt
        print("Aborted!", file=sys.stderr)
        return 1
    except typer.TyperException as e:  # typer's copy of click's usage errors, and its own
        return _show_usage_error(e)
    finally:
        from posttrain import distributed

        distributed.leave()
    # typer returns the status of an explicit exit (--help, --version: 0; Ctrl-C outside a
    # stage: 130) and the command's return value (None) otherwise.
    return status if isinstance(status, int) else 0


# Lines in a log or pipe are as long as their content, up to this (tables included).
LOG_WIDTH = 1000


def stdout_console() -> Console:
    """The console commands print to. On a terminal, rich fits tables to its width. A pipe or a CI
    log has none, and rich would assume 80 columns and wrap table cells into an unreadable grid:
    there, unless COLUMNS says otherwise, every table row is one line, as wide as its content."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=LOG_WIDTH)


def _show_usage_error(error: typer.TyperException) -> int:
    # `posttrain` or `posttrain data` alone: the help, as for --help. typer checks the class
    # by name too (its rich_utils), as NoArgsIsHelpError is not exported.
    if type(error).__name__ == "NoArgsIsHelpError":
        text = error.format_message()  # empty with rich help: typer has printed it already
        if text:
            print(text)
        return 0
    show = getattr(error, "show", None)
    if show is not None:
        show()  # "Usage: ...", "Try 'posttrain run -h' for help.", "Error: ..." on stderr
    else:
        print(f"Error: {error.format_message()}", file=sys.stderr)
    return error.exit_code


def console_script() -> None:
    """The `posttrain` executable (pyproject [project.scripts])."""
    sys.exit(main())


if __name__ == "__main__":
    console_script()

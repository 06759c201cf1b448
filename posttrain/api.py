"""The Python API: what the `posttrain` command does, callable from a notebook or a script.

    import posttrain

    results = posttrain.run("recipes/chat.yaml", profile="internal", overrides=["stages.sft.max_steps=20"])
    results.evaluation.models["sft"]            # typed results (posttrain.results.RunResults)
    results.release.releasable                  # the profile's release verdict, when it has gates

Errors are exceptions: `posttrain.errors.RecipeError` for a bad recipe (the same one line the
CLI prints), `PosttrainError` for other user errors; a failed release gate is not an error
here (read `results.release`), the CLI turns it into exit status 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from posttrain.pipeline import ScheduledStage
    from posttrain.progress import ProgressReporter
    from posttrain.recipe import Recipe
    from posttrain.results import RunResults


def load(recipe: str | Path, *, profile: str | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """Read and validate a recipe (keys, types, kinds, references by role, data paths, gates); loads no model."""
    from posttrain.environment import apply_defaults
    from posttrain.recipe import load_recipe

    apply_defaults()  # as the CLI does (telemetry off, quiet libraries); a variable already set is kept

    return load_recipe(recipe, list(overrides), profile)


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def plan(recipe: str | Path, *, profile: str | None = None, overrides: Sequence[str] = (), output: str | Path | None = None) -> list[ScheduledStage]:
    """The stages that would run, in order, with fingerprints and whether each is cached."""
    from posttrain.pipeline import Pipeline

    loaded = load(recipe, profile=profile, overrides=overrides)
    return Pipeline(loaded, Path(output) if output else default_run_dir(loaded)).plan()


def run(recipe: str | Path, *, profile: str | None = None, overrides: Sequence[str] = (), output: str | Path | None = None,
        force: Sequence[str] = (), reporter: ProgressReporter | None = None, reuse: str | Path | None = None) -> RunResults:
    """Run the recipe's stages (cached ones are reused), then judge the profile's gates and write
    results.json and the reports into the run directory. Returns the typed results.
    reuse: an earlier run directory whose stages with unchanged fingerprints are copied instead of trained (--reuse)."""
    from posttrain.pipeline import Pipeline
    from posttrain.reporting import write_run

    loaded = load(recipe, profile=profile, overrides=overrides)
    pipeline = Pipeline(loaded, Path(output) if output else default_run_dir(loaded), reporter, force=tuple(force),
                        reuse_from=Path(reuse) if reuse is not None else None)
    results = pipeline.run()
    from posttrain import distributed

    # Several processes (torchrun): rank 0 writes the reports and returns the judged results; the others, the stages' results.
    return write_run(pipeline.run_dir, results, loaded) if distributed.is_main() else results


def compare(runs: Sequence[str | Path], output: str | Path = "compare", *, baseline: str | None = None,
            allow_different_settings: bool = False) -> RunResults:
    """One comparison across finished runs (models named run/model), written to `output`."""
    from posttrain.reporting.compare import compare_runs

    return compare_runs([Path(r) for r in runs], Path(output), baseline, allow_different_settings)

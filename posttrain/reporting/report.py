"""A run's files for people and machines: results.json, report.md, report.html and plots/*.png.

Both documents render the rows of `posttrain.reporting.summary`, so they agree with each
other and with results.json. A comparison across runs (`posttrain compare`) is a
`RunResults` whose models are named run/model, rendered by the same code.
"""

from __future__ import annotations

import os
from pathlib import Path

from posttrain.atomic import write_json_atomic, write_text_atomic
from posttrain.reporting.html_report import render_html
from posttrain.reporting.plots import render_plots
from posttrain.reporting.release import judge_release
from posttrain.reporting.summary import (GATE_HEADER, JUDGE_HEADER, STAGE_HEADER, WIN_HEADER, banner, baseline_of, format_value, gate_table,
                                         judge_sentences, judge_table, judge_title, releases, settings_by_model, settings_sentence,
                                         shared_sentence, stage_rows, table, tax_sentence, title, win_rate_rows, win_rate_table)
from posttrain.results import Evaluation, RunResults
from posttrain.run_layout import RunLayout
from posttrain.secrets import redact

PLOTS_DIRNAME = "plots"
REPORT_MD, REPORT_HTML = "report.md", "report.html"


def _cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header), *["| " + " | ".join(map(_cell, r)) + " |" for r in rows]]


def render_markdown(results: RunResults, plot_files: list[tuple[str, str]] = ()) -> str:
    state, sentence = banner(results)
    lines = [f"# {title(results)}", ""]
    if state != "ungated":
        lines += [f"**{sentence}**", ""]
    evaluation = results.evaluation
    header, rows = table(results)
    if rows:
        baseline = baseline_of(evaluation)
        lines += ["## Held-out evaluation", ""]
        if baseline:
            lines += [f"Δ columns: each model minus `{baseline}`, judged by the metric's direction; "
                      "'within noise' means less than 1.96 combined standard errors.", ""]
        lines += _md_table(header, rows)
        lines += ["", "↑ higher is better, ↓ lower is better; ± is the standard error.", "", tax_sentence(evaluation)]
        if shared_sentence(evaluation):
            lines += ["", shared_sentence(evaluation)]
        if win_rate_rows(evaluation):
            lines += ["", f"### Win rate judged by the reward model `{evaluation.judge}`", ""]
            lines += _md_table(WIN_HEADER, win_rate_table(evaluation))
            lines += ["", "Ties count half. Mean words per answer of both sides show whether a win was bought with length."]
        if judge_table(evaluation):
            lines += ["", f"### {judge_title(evaluation)}", ""]
            lines += _md_table(JUDGE_HEADER, judge_table(evaluation))
            lines += ["", " ".join(judge_sentences(evaluation))]
    for label, release in releases(results):
        if release:
            lines += ["", f"## Release gates: {label or release.profile} — {'releasable' if release.releasable else 'NOT releasable'}", ""]
            lines += _md_table(GATE_HEADER, gate_table(release))
    if state == "ungated":
        lines += ["", sentence]
    if plot_files:
        lines += ["", "## Plots", ""] + [f"![{caption}]({PLOTS_DIRNAME}/{name})" for name, caption in plot_files]
    lines += ["", "## Stages", "", *_md_table(STAGE_HEADER, stage_rows(results))]
    if evaluation:
        sentence, differing = settings_sentence(evaluation)
        lines += ["", "## Settings", "", sentence]
        if differing:
            per_model = settings_by_model(evaluation)
            lines += ["", *_md_table(["model", *differing], [[m, *[s.get(k) for k in differing]] for m, s in per_model.items()])]
        lines += _markdown_examples(evaluation)
    return "\n".join(lines) + "\n"


def _markdown_examples(evaluation: Evaluation) -> list[str]:
    if not evaluation.examples:
        return []
    lines = ["", "## Side by side: held-out prompts", "",
             "The first prompts of each task (the same in every run), with every model's response and its reward."]
    for ex in evaluation.examples:
        lines += ["", f"**{ex.task}**: {_cell(ex.prompt)} — expected: {_cell(ex.target)}", ""]
        lines += _md_table(["model", "response", "reward"],
                           [[m, r.response or "(empty)", format_value(r.reward)] for m, r in ex.responses.items()])
    return lines


def redacted(results: RunResults) -> RunResults:
    """A copy with secrets masked (posttrain.secrets), as everything written must be."""
    return RunResults.from_dict(redact(results.to_dict()))


def write_results(path: Path, results: RunResults) -> Path:
    """results.json, redacted, written atomically."""
    write_json_atomic(Path(path), redacted(results).to_dict())
    return Path(path)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_reports(directory: Path, results: RunResults) -> list[Path]:
    """report.md, report.html and plots/*.png in `directory`; returns the files written."""
    directory = Path(directory)
    results = redacted(results)
    plots = render_plots(results)
    plot_dir = directory / PLOTS_DIRNAME
    for stale in plot_dir.glob("*.png") if plot_dir.is_dir() else ():
        if stale.name not in {name for name, _, _ in plots}:
            stale.unlink()
    for name, _, png in plots:
        _write_bytes_atomic(plot_dir / name, png)
    write_text_atomic(directory / REPORT_MD, redact(render_markdown(results, [(n, c) for n, c, _ in plots])))
    write_text_atomic(directory / REPORT_HTML, render_html(results, plots))
    return [directory / REPORT_MD, directory / REPORT_HTML, *[plot_dir / n for n, _, _ in plots]]


def write_run(run_dir: Path, results: RunResults, recipe=None) -> RunResults:
    """Everything a finished run writes after its stages: the release verdict of the recipe's profile
    (judged on the evaluation, when a recipe is given), results.json and the reports. Returns the
    results with their verdict. `posttrain run` calls it; so can tests that drive a Pipeline."""
    if recipe is not None:
        results = results.model_copy(update={"release": judge_release(recipe, results.evaluation)})
    layout = RunLayout(Path(run_dir))
    write_results(layout.results, results)
    write_reports(layout.root, results)
    return results

"""Run reports: report.md and report.html (with plots/*.png) from results.json's numbers.

Both documents render the rows of `posttrain.eval.summary`, so they agree with each other
and with results.json. A comparison across runs (`posttrain compare`) is a results dict of
the same shape whose models are named run/model, rendered by the same code.
"""

from __future__ import annotations

import os
from pathlib import Path

from posttrain.atomic import write_text_atomic
from posttrain.eval.summary import (alignment_tax, banner, baseline_of, differing_settings, format_value, metric_rows,
                                    releases, settings_by_model, table, win_rate_rows)
from posttrain.secrets import redact

PLOTS_DIRNAME = "plots"


def title(results: dict) -> str:
    if results.get("runs"):
        return f"Comparison of runs: {', '.join(results['runs'])}"
    return f"{results['recipe']} — profile {results['profile'] or '(all stages)'}"


def _cell(text) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ⏎ ")


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header), *["| " + " | ".join(map(_cell, r)) + " |" for r in rows]]


def stage_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, stage in results["stages"].items():
        data = stage.get("data")
        data_text = f"{data['rows_read']} / {data['rows_used']} / {sum(data['dropped'].values())}" if data else ""
        status = f"{stage['status']} (cached)" if stage.get("cached") else stage["status"]
        rows.append([name, stage["kind"], status, stage.get("parent") or "", stage.get("wall_time_s"), data_text])
    return rows


STAGE_HEADER = ["stage", "kind", "status", "parent", "wall time (s)", "data (read / used / dropped)"]
WIN_HEADER = ["candidate", "baseline", "win rate", "95% CI", "wins / ties / losses", "mean words (candidate vs baseline)"]
GATE_HEADER = ["gate", "measured", "result"]


def win_rate_table(evaluation: dict) -> list[list[str]]:
    return [[c, b, f"{w['win_rate']:.3f}", f"{w['ci95'][0]:.3f}–{w['ci95'][1]:.3f}", f"{w['wins']} / {w['ties']} / {w['losses']}",
             f"{w['mean_words_candidate']:.1f} vs {w['mean_words_baseline']:.1f}"] for c, b, w in win_rate_rows(evaluation)]


def gate_table(release: dict) -> list[list[str]]:
    return [[o["gate"], format_value(o["value"]), "pass" if o["passed"] else f"FAIL{' (' + o['reason'] + ')' if o.get('reason') else ''}"]
            for o in release["gates"]]


def tax_sentence(evaluation: dict) -> str:
    baseline = baseline_of(evaluation)
    if not baseline:
        return "No baseline model was evaluated, so no deltas are shown."
    tax = alignment_tax(metric_rows(evaluation))
    if not tax:
        return f"Alignment tax: no metric is clearly worse than `{baseline}` (beyond 1.96 standard errors)."
    items = "; ".join(f"{m}: {name} {d.value:+.3f}" for m, name, d in tax)
    return f"Alignment tax (clearly worse than `{baseline}`, beyond 1.96 standard errors): {items}."


def shared_sentence(evaluation: dict) -> str:
    """In a comparison: the models several runs share (same fingerprint), shown once."""
    same = evaluation.get("same_models") or {}
    if not same:
        return ""
    return "The same model in several runs (same fingerprint) is shown once: " + ", ".join(f"{a} = {b}" for a, b in same.items()) + "."


def settings_sentence(evaluation: dict) -> tuple[str, list[str]]:
    """A sentence on settings and, when models differ, the names of the differing settings."""
    differing = differing_settings(evaluation)
    if not differing:
        common = next(iter(settings_by_model(evaluation).values()), {})
        return "Every model was evaluated with the same settings: " + ", ".join(f"{k}={v}" for k, v in common.items()) + ".", []
    return f"WARNING: models were evaluated with different settings ({', '.join(differing)}); the comparison is not fair.", differing


def render_markdown(results: dict, plot_files: list[tuple[str, str]] = ()) -> str:
    state, sentence = banner(results)
    lines = [f"# {title(results)}", ""]
    if state != "ungated":
        lines += [f"**{sentence}**", ""]
    evaluation = results.get("evaluation")
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
            lines += ["", f"### Win rate judged by the reward model `{evaluation.get('reward_model')}`", ""]
            lines += _md_table(WIN_HEADER, win_rate_table(evaluation))
            lines += ["", "Ties count half. Mean words per answer of both sides show whether a win was bought with length."]
    for label, release in releases(results):
        if release:
            lines += ["", f"## Release gates: {label or release['profile']} — {'releasable' if release['releasable'] else 'NOT releasable'}", ""]
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


def _markdown_examples(evaluation: dict) -> list[str]:
    examples = evaluation.get("examples") or []
    if not examples:
        return []
    lines = ["", "## Side by side: held-out prompts", "",
             "The first prompts of each task (the same in every run), with every model's response and its reward."]
    for ex in examples:
        lines += ["", f"**{ex['task']}**: {_cell(ex['prompt'])} — expected: {_cell(ex['target'])}", ""]
        lines += _md_table(["model", "response", "reward"],
                           [[m, r["response"] or "(empty)", format_value(r.get("reward"))] for m, r in ex["responses"].items()])
    return lines


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_reports(directory: Path, results: dict) -> list[Path]:
    """report.md, report.html and plots/*.png in `directory`; returns the files written."""
    from posttrain.eval.html_report import render_html
    from posttrain.eval.plots import render_plots

    directory = Path(directory)
    results = redact(results)
    plots = render_plots(results)
    plot_dir = directory / PLOTS_DIRNAME
    for stale in plot_dir.glob("*.png") if plot_dir.is_dir() else ():
        if stale.name not in {name for name, _, _ in plots}:
            stale.unlink()
    for name, _, png in plots:
        _write_bytes_atomic(plot_dir / name, png)
    write_text_atomic(directory / "report.md", redact(render_markdown(results, [(n, c) for n, c, _ in plots])))
    write_text_atomic(directory / "report.html", render_html(results, plots))
    return [directory / "report.md", directory / "report.html", *[plot_dir / n for n, _, _ in plots]]

"""report.html: one self-contained file (inline CSS, plots as base64 PNG data URIs) that opens offline.

Metric cells carry their raw value in `data-value` (and the model and metric), so a
machine can check the page against results.json without parsing formatted text.
"""

from __future__ import annotations

import base64
from html import escape

from posttrain.reporting.summary import (GATE_HEADER, JUDGE_HEADER, STAGE_HEADER, WIN_HEADER, banner, baseline_of, delta_models,
                                         format_delta, format_value, gate_table, judge_rows, judge_sentences, judge_table, judge_title,
                                         metric_rows, releases, settings_by_model, settings_sentence, shared_sentence, stage_rows,
                                         tax_sentence, title, win_rate_table)
from posttrain.results import Evaluation, RunResults

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .88rem; }
th, td { border: 1px solid #d0d0d0; padding: .3rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.group { color: #666; } .better { color: #11772d; } .worse { color: #b3261e; } .noise { color: #777; }
.banner { padding: .8rem 1rem; border-radius: 6px; font-weight: 600; font-size: 1.1rem; margin: 1rem 0; }
.releasable { background: #e3f5e8; border: 2px solid #11772d; color: #0b5c22; }
.blocked { background: #fde7e6; border: 2px solid #b3261e; color: #8c1d17; }
.ungated { background: #f3f3f3; border: 1px solid #bbb; color: #444; font-weight: normal; font-size: 1rem; }
.pass { color: #11772d; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: .85rem; }
.example { margin: 1rem 0; } .example .prompt { font-weight: 600; } .example .target { color: #555; }
td.response { white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: .82rem; max-width: 700px; }
p.note { color: #555; font-size: .88rem; }
"""


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{_class(classes, i)}>{escape(str(c))}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _class(classes: list[str] | None, i: int) -> str:
    return f' class="{classes[i]}"' if classes and i < len(classes) and classes[i] else ""


def _metrics_table(evaluation: Evaluation) -> str:
    rows = metric_rows(evaluation)
    models, baseline, others = list(evaluation.models), baseline_of(evaluation), delta_models(evaluation)
    head = "".join(f"<th>{escape(h)}</th>" for h in ["group", "metric", *models, *[f"Δ {m} vs {baseline}" for m in others]])
    body = []
    for r in rows:
        cells = [f'<td class="group">{escape(r.group)}</td>', f"<td>{escape(r.label)}</td>"]
        for m in models:
            cell = r.cells[m]
            raw = "" if cell.value is None else repr(cell.value)
            cells.append(f'<td class="num" data-model="{escape(m)}" data-metric="{escape(r.name)}" data-value="{raw}">'
                         f"{escape(format_value(cell.value, cell.stderr))}</td>")
        for m in others:
            d = r.deltas[m]
            css = "noise" if d.within_noise or d.verdict in (None, "same") else d.verdict
            raw = "" if d.value is None else repr(d.value)
            cells.append(f'<td class="num {css}" data-delta-model="{escape(m)}" data-metric="{escape(r.name)}" data-value="{raw}">'
                         f"{escape(format_delta(d))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _judge_table(evaluation: Evaluation) -> str:
    """The judge's rows; the win rate cell carries its raw value (data-value), like the metric cells."""
    head = "".join(f"<th>{escape(h)}</th>" for h in JUDGE_HEADER)
    body = []
    for w, row in zip(judge_rows(evaluation), judge_table(evaluation)):
        cells = [f"<td>{escape(c)}</td>" for c in row[:3]]
        raw = "" if w.win_rate is None else repr(w.win_rate)
        cells.append(f'<td class="num" data-judge-candidate="{escape(w.candidate)}" data-value="{raw}">{escape(row[3])}</td>')
        cells += [f'<td class="num">{escape(c)}</td>' for c in row[4:]]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="judge"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _examples(evaluation: Evaluation) -> str:
    parts = []
    for ex in evaluation.examples:
        rows = "".join(f'<tr><td>{escape(m)}</td><td class="response">{escape(r.response) or "<em>(empty)</em>"}</td>'
                       f'<td class="num">{escape(format_value(r.reward))}</td></tr>' for m, r in ex.responses.items())
        parts.append(f'<div class="example"><div class="prompt">{escape(ex.task)}: {escape(ex.prompt)}</div>'
                     f'<div class="target">expected: {escape(str(ex.target))}</div>'
                     f"<table><thead><tr><th>model</th><th>response</th><th>reward</th></tr></thead><tbody>{rows}</tbody></table></div>")
    return "".join(parts)


def render_html(results: RunResults, plots: list[tuple[str, str, bytes]] = ()) -> str:
    state, sentence = banner(results)
    evaluation = results.evaluation
    out = [f'<h1>{escape(title(results))}</h1>', f'<div class="banner {state}" id="release">{escape(sentence)}</div>']
    if evaluation and metric_rows(evaluation):
        baseline = baseline_of(evaluation)
        out.append("<h2>Held-out evaluation</h2>")
        if baseline:
            out.append(f'<p class="note">Δ columns: each model minus <code>{escape(baseline)}</code>, judged by the metric\'s direction '
                       "(green better, red worse, grey within 1.96 combined standard errors).</p>")
        out.append(_metrics_table(evaluation))
        out.append(f'<p class="note">↑ higher is better, ↓ lower is better; ± is the standard error. {escape(tax_sentence(evaluation))} '
                   f"{escape(shared_sentence(evaluation))}</p>")
        wins = win_rate_table(evaluation)
        if wins:
            out.append(f"<h3>Win rate judged by the reward model <code>{escape(str(evaluation.judge))}</code></h3>")
            out.append(_table(WIN_HEADER, wins, ["", "", "num", "num", "num", "num"]))
            out.append('<p class="note">Ties count half. Mean words per answer of both sides show whether a win was bought with length.</p>')
        if judge_table(evaluation):
            out.append(f'<h3 id="judge">{escape(judge_title(evaluation))}</h3>')
            out.append(_judge_table(evaluation))
            out.append(f'<p class="note">{escape(" ".join(judge_sentences(evaluation)))}</p>')
    for label, release in releases(results):
        if release:
            verdict = "releasable" if release.releasable else "NOT releasable"
            rows = gate_table(release)
            out.append(f"<h2>Release gates: {escape(label or release.profile or '')} — {verdict}</h2>")
            head = "".join(f"<th>{escape(h)}</th>" for h in GATE_HEADER)
            body = "".join(f'<tr><td>{escape(g)}</td><td class="num">{escape(v)}</td>'
                           f'<td class="{"pass" if r == "pass" else "fail"}">{escape(r)}</td></tr>' for g, v, r in rows)
            out.append(f'<table class="gates"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')
    if plots:
        out.append("<h2>Plots</h2>")
        for name, caption, png in plots:
            data = base64.b64encode(png).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>')
    out.append("<h2>Stages</h2>" + _table(STAGE_HEADER, stage_rows(results), ["", "", "", "", "num", "num"]))
    if evaluation:
        sentence, differing = settings_sentence(evaluation)
        out.append(f'<h2>Settings</h2><p>{escape(sentence)}</p>')
        if differing:
            per_model = settings_by_model(evaluation)
            out.append(_table(["model", *differing], [[m, *[s.get(k) for k in differing]] for m, s in per_model.items()]))
        if evaluation.examples:
            out.append('<h2>Side by side: held-out prompts</h2><p class="note">The first prompts of each task (the same in every run), '
                       "with every model's response and its reward.</p>" + _examples(evaluation))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title(results))}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")

"""Run reports: the metrics table (terminal and report.md) built from results.json's numbers."""

from __future__ import annotations


def _format(value, stderr) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return f"{text} ± {stderr:.3f}" if isinstance(stderr, (int, float)) else text


def metrics_table(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per model, one column per task metric (value ± standard error)."""
    evaluation = results.get("evaluation")
    if not evaluation:
        return [], []
    columns = []
    for task in evaluation["tasks"]:
        for metric, higher in evaluation["higher_is_better"].get(task, {}).items():
            columns.append((task, metric, higher))
    if evaluation.get("reward_model"):
        columns.append(("reward_model", "mean_reward", True))
    header = ["model"] + [f"{task}/{metric} {'↑' if higher else '↓'}" for task, metric, higher in columns]
    rows = []
    for model, scores in evaluation["models"].items():
        rows.append([model] + [_format(scores.get(t, {}).get(m), scores.get(t, {}).get(f"{m}_stderr")) for t, m, _ in columns])
    return header, rows


def render_markdown(results: dict) -> str:
    lines = [f"# {results['recipe']} — profile {results['profile'] or '(all stages)'}", ""]
    lines += ["## Stages", "", "| stage | kind | status | parent | wall time (s) | data (read / used / dropped) |", "|---|---|---|---|---|---|"]
    for name, stage in results["stages"].items():
        data = stage.get("data")
        data_text = f"{data['rows_read']} / {data['rows_used']} / {sum(data['dropped'].values())}" if data else ""
        status = f"{stage['status']} (cached)" if stage.get("cached") else stage["status"]
        lines.append(f"| {name} | {stage['kind']} | {status} | {stage.get('parent') or ''} | {stage.get('wall_time_s')} | {data_text} |")
    header, rows = metrics_table(results)
    if rows:
        evaluation = results["evaluation"]
        lines += ["", "## Held-out evaluation", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if evaluation.get("win_rates"):
            lines += ["", f"### Win rate judged by the reward model `{evaluation['reward_model']}`", "",
                      "| comparison | win rate | 95% CI | wins / ties / losses | mean words (candidate vs baseline) |", "|---|---|---|---|---|"]
            for name, w in evaluation["win_rates"].items():
                lines.append(f"| {name} | {w['win_rate']:.3f} | {w['ci95'][0]:.3f}–{w['ci95'][1]:.3f} | {w['wins']} / {w['ties']} / {w['losses']} "
                             f"| {w['mean_words_candidate']:.1f} vs {w['mean_words_baseline']:.1f} |")
        settings = ", ".join(f"{k}={v}" for k, v in evaluation["settings"].items())
        lines += ["", f"Every model evaluated with the same settings: {settings}.", "↑ higher is better, ↓ lower is better; ± is the standard error."]
    return "\n".join(lines) + "\n"

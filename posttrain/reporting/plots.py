"""The report's plots as PNG bytes: training curves per stage, metric bars, win rates.

matplotlib draws with its Agg backend through `Figure` objects (no pyplot state, no
display needed); it is imported here only, so `validate` and `plan` never pay for it.
"""

from __future__ import annotations

import io
import re

from posttrain.reporting.summary import format_value, metric_rows, win_rate_rows
from posttrain.results import Evaluation, RunResults

# Trainer bookkeeping, not learning: a single end-of-run value or a counter.
_NOT_CURVES = {"num_tokens", "total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "epoch"}
# Shown first when present: what tells whether a stage learned.
_FIRST = ["loss", "rewards/accuracies", "rewards/margins", "accuracy", "margin", "mean_token_accuracy", "kl", "grad_norm", "learning_rate"]
MAX_CURVES_PER_STAGE = 6
DPI = 90


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _figure(panels: int, width: float = 3.2, height: float = 2.4, columns: int = 3):
    from matplotlib.figure import Figure

    cols = min(columns, panels)
    rows = -(-panels // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return fig, axes


def _file_name(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") + ".png"


def _curve_names(curves: dict) -> list[str]:
    names = [n for n, points in curves.items() if n not in _NOT_CURVES and len(points) >= 2]
    names.sort(key=lambda n: (_FIRST.index(n) if n in _FIRST else len(_FIRST), n))
    return names[:MAX_CURVES_PER_STAGE]


def training_curves(stage: str, curves: dict) -> bytes | None:
    names = _curve_names(curves or {})
    if not names:
        return None
    fig, axes = _figure(len(names))
    for ax, name in zip(axes, names):
        steps, values = zip(*[(p[0], p[1]) for p in curves[name]])
        ax.plot(steps, values, marker=".", linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"training curves: {stage}", fontsize=10)
    return _png(fig)


def metric_bars(evaluation: Evaluation) -> bytes | None:
    rows = metric_rows(evaluation)
    if not rows:
        return None
    models = list(evaluation.models)
    colors = [f"C{i % 10}" for i in range(len(models))]
    fig, axes = _figure(len(rows), width=2.9, height=2.5, columns=4)
    for ax, row in zip(axes, rows):
        values = [row.cells[m].value or 0.0 for m in models]
        errors = [row.cells[m].stderr or 0.0 for m in models]
        bars = ax.bar(range(len(models)), values, yerr=errors, capsize=3, color=colors)
        ax.bar_label(bars, labels=[format_value(row.cells[m].value) for m in models], fontsize=6, padding=2)
        ax.margins(y=0.18)  # room for the labels
        if not any(values) and not any(errors):
            ax.set_ylim(0, 1)  # all zero: show it on a readable scale, not matplotlib's ±0.05
        for i, m in enumerate(models):
            if row.cells[m].value is None:
                ax.text(i, 0, "n/a", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(models)), models, rotation=30 if len(models) > 3 else 0, ha="right" if len(models) > 3 else "center", fontsize=7)
        ax.set_title(f"{row.label}\n({row.group})", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("held-out metrics per model (error bars: ± 1 standard error)", fontsize=10)
    return _png(fig)


def win_rates(evaluation: Evaluation) -> bytes | None:
    rows = win_rate_rows(evaluation)
    if not rows:
        return None
    fig, (rate_ax, words_ax) = _figure(2, width=4.4, height=1.1 + 0.5 * len(rows), columns=2)
    labels = [f"{w.candidate} vs {w.baseline}" for w in rows]
    rates = [w.win_rate or 0.0 for w in rows]
    low = [rate - w.ci95[0] for rate, w in zip(rates, rows)]
    high = [w.ci95[1] - rate for rate, w in zip(rates, rows)]
    positions = list(range(len(rows)))
    rate_ax.barh(positions, rates, xerr=[low, high], capsize=4, color="C2")
    for p, w in zip(positions, rows):
        rate_ax.text(0.02, p, f"{format_value(w.win_rate)}  ({w.wins} W / {w.ties} T / {w.losses} L)", va="center", fontsize=7, color="white")
    rate_ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    rate_ax.set_xlim(0, 1)
    rate_ax.set_yticks(positions, labels, fontsize=8)
    rate_ax.set_title("win rate judged by the reward model (95% CI; ties count half)", fontsize=8)
    height = 0.38
    words_ax.barh([p - height / 2 for p in positions], [w.mean_words_candidate for w in rows], height, label="candidate", color="C2")
    words_ax.barh([p + height / 2 for p in positions], [w.mean_words_baseline for w in rows], height, label="baseline", color="C7")
    words_ax.set_yticks(positions, labels, fontsize=8)
    words_ax.set_title("mean words per answer (length bias check)", fontsize=8)
    words_ax.legend(fontsize=7)
    for ax in (rate_ax, words_ax):
        ax.tick_params(axis="x", labelsize=7)
        ax.invert_yaxis()
    return _png(fig)


def render_plots(results: RunResults) -> list[tuple[str, str, bytes]]:
    """(file name, caption, PNG bytes) for every plot the results support, in report order."""
    plots = []
    evaluation = results.evaluation
    if evaluation:
        for title, png in (("metrics per model", metric_bars(evaluation)), ("win rates", win_rates(evaluation))):
            if png:
                plots.append((_file_name(title), title, png))
    for stage, summary in results.stages.items():
        png = training_curves(stage, summary.curves)
        if png:
            plots.append((_file_name(f"curves {stage}"), f"training curves: {stage}", png))
    return plots

"""The bench's results as markdown a person pastes into an issue: one table of figures per workload
(medians over the repetitions) and one of posttrain's ratios against each baseline (min / median / max
over the repetitions, each ratio taken within one repetition)."""

from __future__ import annotations

import statistics

from posttrain.bench.runner import BenchResult, Run, ratio_summary


def markdown(result: BenchResult) -> str:
    m = result.machine
    lines = [f"Model `{result.model}` ({result.model_dir}); LoRA r=16 all-linear, batch 8, max length 128, {result.steps} steps, "
             f"{result.repetitions} repetition(s), sides alternating in one run. Machine: {m['cpus']} CPUs, load {m['load_average_1m']} "
             f"at the end; torch {m['torch']}, transformers {m['transformers']}, trl {m['trl']}, peft {m['peft']}.", ""]
    for workload in dict.fromkeys(r.workload for r in result.runs):
        runs = [r for r in result.runs if r.workload == workload]
        sides = list(dict.fromkeys(r.side for r in runs))
        lines += [f"**{workload}** (medians over repetitions; s/step without the first step)", "",
                  "| side | precision | loss-bearing tokens/s | s/step | CPU s/step | peak RSS (MB) | final loss |", "|---|---|---:|---:|---:|---:|---:|"]
        for side in sides:
            mine = [r for r in runs if r.side == side]
            lines.append(f"| {side} | {mine[0].precision} | {_rate(_median(mine, lambda r: r.loss_tokens_per_second))} | "
                         f"{_median(mine, lambda r: r.seconds_per_step):.3f} | {_median(mine, lambda r: r.cpu_seconds_per_step):.3f} | "
                         f"{_median(mine, lambda r: r.peak_rss_mb):.0f} | "
                         f"{_median(mine, lambda r: r.final_loss):.4f} |")
        lines += ["", "| posttrain vs | tokens/s ratio (min / median / max) | tokens per CPU-second ratio (min / median / max) | "
                      "final loss difference | peak RSS ratio |", "|---|---|---|---:|---:|"]
        ours = {r.repetition: r for r in runs if r.side == "posttrain"}
        for side in sides[1:]:
            pairs = [(ours[r.repetition], r) for r in runs if r.side == side and r.repetition in ours]
            speed = ratio_summary([a.loss_tokens_per_second / b.loss_tokens_per_second for a, b in pairs])
            work = ratio_summary([a.loss_tokens_per_cpu_second / b.loss_tokens_per_cpu_second for a, b in pairs])
            loss = statistics.median([(a.final_loss - b.final_loss) / b.final_loss for a, b in pairs])
            rss = statistics.median([a.peak_rss_mb / b.peak_rss_mb for a, b in pairs])
            lines.append(f"| {side} | {_spread(speed)} | {_spread(work)} | {loss:+.1%} | {rss:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _median(runs: list[Run], value) -> float:
    return statistics.median(value(r) for r in runs)


def _rate(value: float) -> str:
    """Whole numbers where they are large, one decimal where a loaded machine makes them small."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _spread(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}x" for v in values)

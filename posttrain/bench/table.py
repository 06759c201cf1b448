"""The bench's results as markdown a person pastes into an issue: per workload, one table of figures per side
(medians over the repetitions) and, where there is a baseline, one of posttrain's ratios against each baseline
(min / median / max over the repetitions, each ratio taken within one repetition). Each workload counts its own
unit: loss-bearing tokens (sft, dpo, rm), generated tokens (eval), rollout tokens (ppo)."""

from __future__ import annotations

import statistics

from posttrain.bench.runner import BenchResult, Run, ratio_summary


def markdown(result: BenchResult) -> str:
    m = result.machine
    lines = [f"Model `{result.model}` ({result.model_dir}); {result.repetitions} repetition(s), sides alternating in one run. "
             f"Machine: {m['cpus']} CPUs, load {m['load_average_1m']} at the end; torch {m['torch']}, transformers {m['transformers']}, "
             f"trl {m['trl']}, peft {m['peft']}, lm_eval {m['lm_eval']}.", ""]
    for workload in dict.fromkeys(r.workload for r in result.runs):
        runs = [r for r in result.runs if r.workload == workload]
        section = {"eval": _eval_section, "ppo": _ppo_section}.get(workload, _training_section)
        lines += section(workload, runs, result)
    return "\n".join(lines)


def _training_section(workload: str, runs: list[Run], result: BenchResult) -> list[str]:
    sides = list(dict.fromkeys(r.side for r in runs))
    lines = [f"**{workload}** (LoRA r=16 all-linear, batch 8, max length 128, {result.steps} steps; medians over repetitions; "
             "s/step without the first step)", "",
             "| side | precision | loss-bearing tokens/s | s/step | CPU s/step | peak RSS (MB) | final loss |", "|---|---|---:|---:|---:|---:|---:|"]
    for side in sides:
        mine = [r for r in runs if r.side == side]
        lines.append(f"| {side} | {mine[0].precision} | {_rate(_median(mine, lambda r: r.tokens_per_second))} | "
                     f"{_median(mine, lambda r: r.seconds_per_step):.3f} | {_median(mine, lambda r: r.cpu_seconds_per_step):.3f} | "
                     f"{_median(mine, lambda r: r.peak_rss_mb):.0f} | "
                     f"{_median(mine, lambda r: r.final_loss):.4f} |")
    lines += ["", "| posttrain vs | tokens/s ratio (min / median / max) | tokens per CPU-second ratio (min / median / max) | "
                  "final loss difference | peak RSS ratio |", "|---|---|---|---:|---:|"]
    for side, pairs in _pairs(runs, sides):
        speed, work, rss = _ratios(pairs)
        loss = statistics.median([(a.final_loss - b.final_loss) / b.final_loss for a, b in pairs])
        lines.append(f"| {side} | {speed} | {work} | {loss:+.1%} | {rss:.2f} |")
    return lines + [""]


def _eval_section(workload: str, runs: list[Run], result: BenchResult) -> list[str]:
    settings = result.settings.get(workload, {})
    sides = list(dict.fromkeys(r.side for r in runs))
    lines = [f"**{workload}** (the first {settings.get('prompts', '?')} prompts of `{settings.get('task', '?')}`, greedy, at most "
             f"{settings.get('max_new_tokens', '?')} new tokens; generated tokens counted up to and including EOS; medians over repetitions)", "",
             "| side | precision | batch | generated tokens/s | generated tokens per CPU-second | generated tokens | peak RSS (MB) | answers identical to posttrain's |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    ours = {r.repetition: r for r in runs if r.side == "posttrain"}
    for side in sides:
        mine = [r for r in runs if r.side == side]
        same = [identical_answers(ours[r.repetition], r) for r in mine if r.repetition in ours]
        lines.append(f"| {side} | {mine[0].precision} | {mine[0].extra.get('batch_size', '?')} | {_rate(_median(mine, lambda r: r.tokens_per_second))} | "
                     f"{_rate(_median(mine, lambda r: r.tokens_per_cpu_second))} | {_median(mine, lambda r: r.tokens):.0f} | "
                     f"{_median(mine, lambda r: r.peak_rss_mb):.0f} | {'—' if side == 'posttrain' else f'{statistics.median(same):.2f}'} |")
    lines += ["", "| posttrain vs | generated tokens/s ratio (min / median / max) | tokens per CPU-second ratio (min / median / max) | "
                  "peak RSS ratio |", "|---|---|---|---:|"]
    for side, pairs in _pairs(runs, sides):
        speed, work, rss = _ratios(pairs)
        lines.append(f"| {side} | {speed} | {work} | {rss:.2f} |")
    return lines + [""]


def _ppo_section(workload: str, runs: list[Run], result: BenchResult) -> list[str]:
    lines = [f"**{workload}** (recipes/chat.yaml's ppo stage, {result.steps} iterations; posttrain alone: TRL 1.16 has no PPOTrainer; "
             "medians over repetitions; per iteration, without the first iteration)", "",
             "| side | precision | rollout tokens/s | s/iteration | CPU s/iteration | generation (s) | scoring (s) | update (s) | "
             "generation share | peak RSS (MB) | final reward |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for side in dict.fromkeys(r.side for r in runs):
        mine = [r for r in runs if r.side == side]
        phases = [ppo_phases(r) for r in mine]

        def median(key: str) -> float:
            return statistics.median(p[key] for p in phases)

        lines.append(f"| {side} | {mine[0].precision} | {_rate(median('rollout_tokens_per_second'))} | {median('seconds'):.3f} | "
                     f"{median('cpu_seconds'):.3f} | {median('generation'):.3f} | {median('scoring'):.3f} | {median('update'):.3f} | "
                     f"{median('generation_share'):.0%} | {_median(mine, lambda r: r.peak_rss_mb):.0f} | {median('final_reward'):.3f} |")
    return lines + [""]


def ppo_phases(run: Run) -> dict:
    """A ppo run's mean iteration (without the first: lazy initialisation) split into its phases, in wall seconds;
    rollout tokens per second of generation; the mean reward of the last (up to) 5 iterations."""
    iterations = run.extra["iterations"]
    steady = iterations[1:] or iterations
    seconds = sum(i["seconds"] for i in steady)
    generation, scoring = sum(i["generation_seconds"] for i in steady), sum(i["scoring_seconds"] for i in steady)
    rewards = [i["reward"] for i in iterations[-5:]]
    return {"seconds": seconds / len(steady), "cpu_seconds": sum(i["cpu_seconds"] for i in steady) / len(steady),
            "generation": generation / len(steady), "scoring": scoring / len(steady), "update": (seconds - generation - scoring) / len(steady),
            "generation_share": generation / seconds, "rollout_tokens_per_second": sum(i["rollout_tokens"] for i in steady) / generation,
            "final_reward": sum(rewards) / len(rewards)}


def identical_answers(ours: Run, theirs: Run) -> float:
    """The share of the prompts (by context) both sides answered with the same text."""
    mine = dict(ours.extra["answers"])
    answers = dict(theirs.extra["answers"])
    return sum(mine.get(context) == answer for context, answer in answers.items()) / max(len(answers), 1)


def _pairs(runs: list[Run], sides: list[str]) -> list[tuple[str, list[tuple[Run, Run]]]]:
    """For each baseline: (side, [(posttrain's run, the side's run) of the same repetition])."""
    ours = {r.repetition: r for r in runs if r.side == "posttrain"}
    return [(side, [(ours[r.repetition], r) for r in runs if r.side == side and r.repetition in ours]) for side in sides if side != "posttrain"]


def _ratios(pairs: list[tuple[Run, Run]]) -> tuple[str, str, float]:
    """posttrain against one baseline: tokens/s and tokens per CPU-second ratios (min / median / max, each within a
    repetition), and the median peak RSS ratio."""
    speed = ratio_summary([a.tokens_per_second / b.tokens_per_second for a, b in pairs])
    work = ratio_summary([a.tokens_per_cpu_second / b.tokens_per_cpu_second for a, b in pairs])
    return _spread(speed), _spread(work), statistics.median([a.peak_rss_mb / b.peak_rss_mb for a, b in pairs])


def _median(runs: list[Run], value) -> float:
    return statistics.median(value(r) for r in runs)


def _rate(value: float) -> str:
    """Whole numbers where they are large, one decimal where a loaded machine makes them small."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _spread(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}x" for v in values)

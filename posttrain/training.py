"""What every training stage shares: trainer arguments, LoRA, checkpoints and resume,
signals, the non-finite guard, curves.

Stages call TRL's trainers directly; this module maps our recipe fields onto their configs
once and wraps `trainer.train()` so that every stage checkpoints, resumes and stops the
same way.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Callable, Protocol

import torch
from peft import LoraConfig
from transformers import PrinterCallback, TrainerCallback

from posttrain import distributed, hooks
from posttrain.adapter_precision import add_adapter_updates_in_float32
from posttrain.checkpoints import CheckpointStore
from posttrain.errors import StageError, StageInterrupted
from posttrain.progress import TrainerProgressCallback
from posttrain.stage import LoraSettings, StageContext, StageResult, TrainStageConfig
from posttrain.training_settings import resolve_precision, training_device


def trainer_arguments(config: TrainStageConfig, output_dir: Path, seed: int, run_name: str | None = None, **stage_args) -> dict:
    """Keyword arguments of TRL's SFTConfig, DPOConfig and friends: the shared fields, then the
    stage kind's own (`stage_args`), then the recipe's `trainer_args` pass-through (validated
    at recipe load never to collide with the ones posttrain sets)."""
    device = training_device(config)
    cuda = device == "cuda"
    precision = resolve_precision(config.precision, device)
    common = dict(
        output_dir=str(output_dir),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optimizer,
        max_length=config.max_length,
        logging_steps=config.logging_steps,
        logging_nan_inf_filter=False,  # a NaN loss must be seen, not filtered out of the logs
        # Checkpoints are committed and rotated by CommitCheckpoints, not by the Trainer.
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=None,
        # The held-out loss: the Trainer's own evaluation loop on ctx.data.extras["eval_examples"].
        eval_strategy="steps" if config.evaluates_held_out else "no",
        eval_steps=config.eval_steps or config.logging_steps,
        per_device_eval_batch_size=config.batch_size,
        report_to=list(config.report_to) or "none",
        run_name=run_name,
        disable_tqdm=True,  # our own progress display instead
        seed=seed,
        data_seed=seed,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        dataset_num_proc=None,
        # TRL turns checkpointing on by default; it trades compute for memory that small
        # models do not need, so it is off unless the recipe asks (gradient_checkpointing).
        activation_checkpointing=config.gradient_checkpointing,
    )
    return common | distributed.trainer_arguments(distributed.strategy()) | stage_args | dict(config.trainer_args)


def tracker_run_name(ctx: StageContext) -> str:
    """One tracker run per stage: <run>/<stage>, the run directory's name (the recipe's name by default)."""
    return f"{ctx.stage_dir.parent.name}/{ctx.name}"


def trainer_config(ctx: StageContext, config_cls, drop: tuple[str, ...] = (), **stage_args):
    """The stage's TRL config (`config_cls`, e.g. SFTConfig) from its recipe fields, `stage_args` and
    `trainer_args`; `drop`: shared arguments this config class does not take."""
    config: TrainStageConfig = ctx.config
    kwargs = trainer_arguments(config, ctx.stage_dir / "trainer", ctx.seed, run_name=tracker_run_name(ctx), **stage_args)
    kwargs = {k: v for k, v in kwargs.items() if k not in drop}
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as e:
        if not config.trainer_args:
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StageError(f"stage '{ctx.name}': TRL's {config_cls.__name__} refused the settings ({reason}); "
                         f"check trainer_args: {', '.join(config.trainer_args)}") from None


def precision_used(args) -> str:
    """The precision a Trainer ran in, from its arguments: what stage.json records."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"


def eval_dataset(ctx: StageContext):
    """The held-out examples prepared with the stage's data (eval_share / eval_data), as a Dataset, or None."""
    examples = ctx.data.extras.get("eval_examples") if ctx.data else None
    if not examples:
        return None
    from datasets import Dataset

    return Dataset.from_list(examples)


def peft_config(lora: LoraSettings | None) -> LoraConfig | None:
    if lora is None:
        return None
    return LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, task_type="CAUSAL_LM",
    )


class NonFiniteGuard(TrainerCallback):
    """Checks every step's gradients (a NaN/inf loss makes them non-finite too).

    `stop`: raise, naming the step. `skip`: drop the step's gradients so the optimizer
    leaves the weights alone, up to `max_skipped` steps, then raise.
    """

    def __init__(self, mode: str, max_skipped: int):
        self.mode, self.max_skipped, self.skipped = mode, max_skipped, 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or bool(torch.stack([g.detach().float().norm() for g in grads]).isfinite().all()):
            return
        step = state.global_step + 1
        if self.mode == "skip" and self.skipped < self.max_skipped:
            self.skipped += 1
            for p in model.parameters():
                p.grad = None
            return
        limit = f" (skipped {self.skipped}, the cap is max_skipped_steps={self.max_skipped})" if self.mode == "skip" else ""
        raise StageError(f"non-finite loss or gradient at step {step}{limit}; lower the learning rate, check the data, or set on_nonfinite: skip")

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get("loss")
        if value is not None and not math.isfinite(value) and self.mode == "stop":
            raise StageError(f"non-finite loss ({value}) logged at step {state.global_step}")


class StopOnSignal(TrainerCallback):
    """Ctrl-C / SIGTERM: finish the current step, save a checkpoint, stop. A second Ctrl-C aborts."""

    def __init__(self):
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self):
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def on_step_end(self, args, state, control, **kwargs):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True


def callbacks(ctx: StageContext) -> list[TrainerCallback]:
    config: TrainStageConfig = ctx.config
    return [TrainerProgressCallback(ctx.progress, ctx.name), NonFiniteGuard(config.on_nonfinite, config.max_skipped_steps)]


def remember_installed_packages() -> None:
    """accelerate (1.16) reads a package's metadata from disk each time it asks whether peft, deepspeed or
    lomo is installed, and it asks on every training step: 1,200 reads and 1.3 s of a 300-step SFT's 13 s on
    the embedded model. What is installed does not change during a run, so each answer is kept (patched in
    accelerate's module rather than worked around per call site)."""
    import functools

    from accelerate.utils import imports

    if not hasattr(imports._is_package_available, "cache_info"):
        imports._is_package_available = functools.cache(imports._is_package_available)


def train(trainer, ctx: StageContext) -> list[dict]:
    """Train, resuming from the stage's last committed checkpoint; return the log history."""
    remember_installed_packages()
    if trainer.args.bf16 or trainer.args.fp16:
        add_adapter_updates_in_float32(trainer.model)
    config: TrainStageConfig = ctx.config
    store = CheckpointStore(ctx.stage_dir, ctx.fingerprint, keep=config.keep_checkpoints)
    resume = _prepare_checkpoints(store, ctx)
    trainer.remove_callback(PrinterCallback)  # Trainer print()s every log dict when tqdm is off
    trainer.add_callback(distributed.commit_checkpoints(store))
    distributed.check_trainer(trainer)
    hooks.install(trainer, ctx.name)  # before the stopper, so a stop a hook asks for is seen in the same step
    stopper = StopOnSignal()
    trainer.add_callback(stopper)

    if resume is not None:
        ctx.progress.message(f"  resuming {ctx.name} from {resume}")
    with stopper.installed(), trackers(trainer, ctx):
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if stopper.received is not None:
        latest = store.committed()[0][1] if store.committed() else "none"
        raise StageInterrupted(f"stage '{ctx.name}' stopped by {signal.Signals(stopper.received).name} at step "
                               f"{trainer.state.global_step}; checkpoint {latest}; run the same command again to resume")
    return distributed.averaged_train_loss(trainer.state.log_history)


@contextlib.contextmanager
def trackers(trainer, ctx: StageContext, callbacks: list | None = None):
    """The `report_to` trackers, through transformers' own integration callbacks (the trainer's, or
    `callbacks` for a stage with its own loop): their local files go inside the stage directory (unless
    the user's environment says otherwise), and each stage is one tracker run, ended when the stage ends."""
    from transformers.integrations import TensorBoardCallback

    report_to = ctx.config.report_to
    for callback in trainer.callback_handler.callbacks if trainer is not None else callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:  # TENSORBOARD_LOGGING_DIR wins
            callback.logging_dir = str(ctx.stage_dir / "tensorboard")
    with _environment_default("WANDB_DIR", str(ctx.stage_dir) if "wandb" in report_to else None):
        try:
            yield
        finally:
            if "wandb" in report_to:
                import wandb

                if wandb.run is not None:  # transformers leaves the run open; the next stage is a new run
                    wandb.finish()


@contextlib.contextmanager
def _environment_default(name: str, value: str | None):
    """Set `name` for the duration when it is unset and `value` is given; the user's own setting wins."""
    if value is None or name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


class LoopTrackers:
    """`report_to` for a stage with its own loop (PPO): transformers' integration callbacks, called as a
    Trainer would call them, so its curves reach the same trackers under the same run name."""

    def __init__(self, args):
        from transformers import TrainerControl, TrainerState
        from transformers.integrations import get_reporting_integration_callbacks

        self.args, self.state, self.control = args, TrainerState(), TrainerControl()
        self.callbacks = [cls() for cls in get_reporting_integration_callbacks(args.report_to)]

    def begin(self, model) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(self.args, self.state, self.control, model=model)

    def log(self, step: int, logs: dict) -> None:
        self.state.global_step = step
        for callback in self.callbacks:
            callback.on_log(self.args, self.state, self.control, logs=dict(logs))

    def end(self) -> None:
        for callback in self.callbacks:
            callback.on_train_end(self.args, self.state, self.control)


class LoopState(Protocol):
    """What a stage with its own training loop checkpoints: it writes and restores all of its state."""

    def save(self, directory: Path | None) -> None:
        """Called on every rank at a checkpoint (a sharded state gathers there); rank 0 gets the directory to
        write into, the other ranks None."""

    def load(self, directory: Path) -> int:
        """Restore from `directory`; return the number of completed steps."""


def _prepare_checkpoints(store: CheckpointStore, ctx: StageContext) -> Path | None:
    """Clean the stage's checkpoints and pick the one to resume from: rank 0 does both, every rank gets its
    choice, which must have been written by as many processes as this run has."""
    def decide() -> Path | None:
        store.prepare()
        return store.latest_loadable(warn=ctx.progress.message)

    resume = distributed.on_main(decide)
    if resume is not None:
        distributed.check_resumable(resume, ctx.name, distributed.strategy())
    return resume


def run_own_loop(ctx: StageContext, total_steps: int, state: LoopState, step: Callable[[int], str]) -> None:
    """For stages with their own loop (PPO): what `train` gives Trainer-based stages. Resume from the
    last committed checkpoint, call `step(n)` for n = next..total (it returns a progress line), run the
    hooks after each step, commit a checkpoint every `save_steps`, and on Ctrl-C/SIGTERM save and stop."""
    config: TrainStageConfig = ctx.config
    store = CheckpointStore(ctx.stage_dir, ctx.fingerprint, keep=config.keep_checkpoints)
    done = 0
    resume = _prepare_checkpoints(store, ctx)
    if resume is not None:
        done = state.load(resume)
        ctx.progress.message(f"  resuming {ctx.name} from {resume}")

    stopper = StopOnSignal()
    ctx.progress.start(ctx.name, total_steps)
    with stopper.installed():
        while done < total_steps:
            line = step(done + 1)
            done += 1
            ctx.progress.update(done, total_steps, line)
            hooks.after_step(ctx.name, done)
            # A signal may reach the ranks at different steps: they stop (and checkpoint) together once any has it.
            stop = any(distributed.gather(stopper.received is not None))
            if stop or (config.save_steps and done % config.save_steps == 0 and done < total_steps):
                written = store.scratch / f"step-{done}" if distributed.is_main() else None  # rank 0 writes and commits
                if written is not None:
                    written.mkdir(parents=True, exist_ok=True)
                state.save(written)
                if written is not None:
                    distributed.record_world(written, distributed.strategy())
                    store.commit(written, done)
                distributed.barrier()
            if stop:
                how = signal.Signals(stopper.received).name if stopper.received is not None else "a signal to another process"
                raise StageInterrupted(f"stage '{ctx.name}' stopped by {how} at step {done}; "
                                       "checkpoint saved; run the same command again to resume")
    ctx.progress.finish(f"({total_steps} steps)")


def load_trainable_model(ctx: StageContext, head: str = "causal"):
    """The parent model this stage trains: 4-bit when the recipe asks for QLoRA."""
    lora = ctx.config.lora
    return ctx.store.load_model(ctx.parent, head=head, quantize="4bit" if lora and lora.load_in_4bit else None)


def save_stage_model(ctx: StageContext, model, tokenizer, head: str = "causal"):
    """Commit the stage's model (merged in full precision) and drop its now-useless checkpoints. With several
    processes rank 0 saves (DDP keeps the weights the same on every rank) and the others wait for it."""
    model = distributed.unsharded(model, lambda: ctx.store.load_model(ctx.parent, head=head))
    if distributed.is_main():
        ctx.store.save(ctx.name, model, tokenizer, parent=ctx.parent, head=head)
        discard_checkpoints(ctx)
    distributed.barrier()
    return ctx.store.model_dir(ctx.name)


def train_and_save(trainer, ctx: StageContext, accounting, **extra_metrics) -> StageResult:
    """What every TRL-backed training stage ends with: train (resumably), commit the model,
    and report the logged metrics as final values and curves."""
    history = train(trainer, ctx)
    save_stage_model(ctx, trainer.model, trainer.processing_class)
    metrics = final_metrics(history) | {"precision": precision_used(trainer.args)} | extra_metrics
    return StageResult(metrics=metrics, curves=curves_from_log(history), data=accounting)


def discard_checkpoints(ctx: StageContext) -> None:
    """After the stage's model is committed its checkpoints are dead weight (optimizer state)."""
    store = CheckpointStore(ctx.stage_dir, ctx.fingerprint)
    shutil.rmtree(store.root, ignore_errors=True)
    shutil.rmtree(store.scratch, ignore_errors=True)


def curves_from_log(log_history: list[dict]) -> dict[str, list]:
    """Every numeric logged value as [[step, value], ...], for plots and stage.json."""
    curves: dict[str, list] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if key in ("step", "epoch") or not isinstance(value, (int, float)):
                continue
            curves.setdefault(key, []).append([step, value])
    return curves


def final_metrics(log_history: list[dict]) -> dict:
    """The last logged value of each metric, plus the train summary the trainer reports."""
    metrics: dict = {}
    for entry in log_history:
        metrics.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    return metrics

"""Fault injection for tests: a test-only environment switch, inert unless set.

POSTTRAIN_FAULT=[<stage>:]<fault>=<step> makes a training stage (every one, or the one
named) misbehave at that optimizer step:
  kill_at_step       SIGKILL the process after the step
  sigterm_at_step    send ourselves SIGTERM after the step (graceful stop path)
  kill_during_save   SIGKILL half-way through writing that step's checkpoint
  disk_full_on_save  raise ENOSPC half-way through writing that step's checkpoint
  nan_at_step        make that step's loss (and so its gradients) NaN
"""

from __future__ import annotations

import errno
import os
import signal

from transformers import TrainerCallback

ENV = "POSTTRAIN_FAULT"
KNOWN = {"kill_at_step", "sigterm_at_step", "kill_during_save", "disk_full_on_save", "nan_at_step"}


def requested(stage: str) -> tuple[str, int] | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    target, _, fault = value.rpartition(":")
    name, _, step = fault.partition("=")
    if name not in KNOWN or not step.isdigit():
        raise ValueError(f"{ENV}={value!r}: expected [STAGE:]FAULT=STEP with FAULT one of {sorted(KNOWN)}")
    return (name, int(step)) if target in ("", stage) else None


class InjectFault(TrainerCallback):
    def __init__(self, name: str, step: int):
        self.name, self.step = name, step
        self._hook = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.name == "nan_at_step" and state.global_step + 1 == self.step:
            self._hook = model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output * float("nan"))

    def on_step_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        _signal_if_due(self.name, self.step, state.global_step)


def _signal_if_due(name: str, fault_step: int, step: int) -> None:
    if step == fault_step and name in ("kill_at_step", "sigterm_at_step"):
        os.kill(os.getpid(), signal.SIGKILL if name == "kill_at_step" else signal.SIGTERM)


def after_step(stage: str, step: int) -> None:
    """For stages with their own loop (PPO): the kill and SIGTERM faults, after `step`."""
    fault = requested(stage)
    if fault is not None:
        _signal_if_due(fault[0], fault[1], step)


def install(trainer, stage: str) -> None:
    """Arm the requested fault on this stage's trainer (no-op when POSTTRAIN_FAULT is unset)."""
    fault = requested(stage)
    if fault is None:
        return
    name, step = fault
    trainer.add_callback(InjectFault(name, step))
    if name in ("kill_during_save", "disk_full_on_save"):
        # The model and optimizer are written; RNG and trainer state are not yet.
        original = trainer._save_optimizer_and_scheduler

        def save_then_fail(output_dir):
            original(output_dir)
            if trainer.state.global_step == step:
                if name == "kill_during_save":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, "No space left on device (injected)", output_dir)

        trainer._save_optimizer_and_scheduler = save_then_fail

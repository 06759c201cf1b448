"""Fault injection for posttrain's tests: a `posttrain.hooks` plugin (see posttrain/hooks.py).

Installed only where a test puts this directory on PYTHONPATH (its dist-info holds the
entry point), and armed by POSTTRAIN_TEST_FAULT=[<stage>:]<fault>=<step>: a training stage
(every one, or the one named) misbehaves at that optimizer step:
  kill_at_step       SIGKILL the process after the step
  sigterm_at_step    send ourselves SIGTERM after the step (graceful stop path)
  kill_during_save   SIGKILL half-way through writing that step's checkpoint
  disk_full_on_save  raise ENOSPC half-way through writing that step's checkpoint
  nan_at_step        make that step's loss (and so its gradients) NaN
Stages with their own loop (PPO) get the kill and SIGTERM faults through `after_step`.
"""

from __future__ import annotations

import errno
import os
import signal

from transformers import TrainerCallback

ENV = "POSTTRAIN_TEST_FAULT"
KNOWN = {"kill_at_step", "sigterm_at_step", "kill_during_save", "disk_full_on_save", "nan_at_step"}


def from_environment():
    """The entry point's factory: a FaultInjector when POSTTRAIN_TEST_FAULT is set, else None."""
    value = os.environ.get(ENV)
    if not value:
        return None
    target, _, fault = value.rpartition(":")
    name, _, step = fault.partition("=")
    if name not in KNOWN or not step.isdigit():
        raise ValueError(f"{ENV}={value!r}: expected [STAGE:]FAULT=STEP with FAULT one of {sorted(KNOWN)}")
    return FaultInjector(target or None, name, int(step))


class FaultInjector:
    def __init__(self, stage: str | None, fault: str, step: int):
        self.stage, self.fault, self.step = stage, fault, step

    def _armed_for(self, stage: str) -> bool:
        return self.stage in (None, stage)

    def trainer_callbacks(self, stage: str, trainer) -> list[TrainerCallback]:
        if not self._armed_for(stage):
            return []
        if self.fault in ("kill_during_save", "disk_full_on_save"):
            self._fail_inside_save(trainer)
        return [InjectFault(self)]

    def after_step(self, stage: str, step: int) -> None:
        if self._armed_for(stage):
            self.signal_if_due(step)

    def signal_if_due(self, step: int) -> None:
        if step == self.step and self.fault in ("kill_at_step", "sigterm_at_step"):
            os.kill(os.getpid(), signal.SIGKILL if self.fault == "kill_at_step" else signal.SIGTERM)

    def _fail_inside_save(self, trainer) -> None:
        # The model and optimizer are written; RNG and trainer state are not yet.
        original = trainer._save_optimizer_and_scheduler

        def save_then_fail(output_dir):
            original(output_dir)
            if trainer.state.global_step == self.step:
                if self.fault == "kill_during_save":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, "No space left on device (injected)", output_dir)

        trainer._save_optimizer_and_scheduler = save_then_fail


class InjectFault(TrainerCallback):
    def __init__(self, injector: FaultInjector):
        self.injector = injector
        self._hook = None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.injector.fault == "nan_at_step" and state.global_step + 1 == self.injector.step:
            self._hook = model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output * float("nan"))

    def on_step_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.injector.signal_if_due(state.global_step)

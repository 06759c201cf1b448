"""Progress display: a live bar per stage (step/total, loss, ETA), or plain lines in quiet mode.

rich draws the live display; quiet mode (for CI logs) prints one line per stage start,
per logging step interval and per stage end.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class ProgressReporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)
        self._progress: Progress | None = None
        self._task = None
        self._label = ""
        self._last_line = 0.0

    def message(self, text: str) -> None:
        self.console.print(text, soft_wrap=True)  # paths stay on one line, greppable in logs

    def start(self, label: str, total: int | None) -> None:
        self._label = label
        if self.quiet:
            print(f"[{label}] started ({total} steps)" if total else f"[{label}] started", file=sys.stderr, flush=True)
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, info="")

    def update(self, completed: int, total: int | None = None, info: str = "") -> None:
        if self.quiet:
            if time.monotonic() - self._last_line > 10:  # at most a line every 10 s in CI logs
                self._last_line = time.monotonic()
                print(f"[{self._label}] {completed}/{total} {info}", file=sys.stderr, flush=True)
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total, info=info)

    def finish(self, summary: str = "") -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        print(f"[{self._label}] done {summary}".rstrip(), file=sys.stderr, flush=True)


class TrainerProgressCallback(TrainerCallback):
    """Feeds a transformers/TRL trainer's steps and logged loss into a ProgressReporter."""

    def __init__(self, reporter: ProgressReporter, label: str):
        self.reporter = reporter
        self.label = label
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.reporter.start(self.label, state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_step_end(self, args, state, control, **kwargs):
        info = f"loss {self.loss:.4f}" if self.loss is not None else ""
        self.reporter.update(state.global_step, state.max_steps, info)

    def on_train_end(self, args, state, control, **kwargs):
        self.reporter.finish(f"({state.global_step} steps)")

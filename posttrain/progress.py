"""Progress display: a live bar per stage (step/total, loss, ETA), or plain lines in quiet mode;
and the run's log file.

rich draws the live display; quiet mode (for CI logs) prints one timestamped line per stage
start, per logging interval and per stage end. Whatever the display, every line (messages,
stage starts, progress at most every 10 s, ends) is also appended, timestamped and without
markup, to `<run>/posttrain.log` once the pipeline calls `log_to`.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


def _stamp() -> str:
    return datetime.now().strftime("%H:%M:%S")


class ProgressReporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)
        self._progress: Progress | None = None
        self._task = None
        self._label = ""
        self._last_line = 0.0
        self._last_logged = 0.0
        self._log: TextIO | None = None

    # -- the log file ---------------------------------------------------------
    def log_to(self, path: Path) -> None:
        """Append every line from now on to `path` (the run's posttrain.log), timestamped, without markup."""
        self.close_log()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(path, "a", encoding="utf-8")

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _write_log(self, line: str) -> None:
        if self._log is not None:
            from posttrain.secrets import redact

            self._log.write(f"{datetime.now().isoformat(timespec='seconds')} {redact(line)}\n")
            self._log.flush()

    def _plain_line(self, text: str) -> None:
        """A line on stderr: with the time in quiet mode (CI logs), as is otherwise."""
        print(f"{_stamp()} {text}" if self.quiet else text, file=sys.stderr, flush=True)

    # -- what stages report -----------------------------------------------------
    def message(self, text: str) -> None:
        self._write_log(Text.from_markup(text).plain)
        if self.quiet:
            self._plain_line(Text.from_markup(text).plain)
        else:
            self.console.print(text, soft_wrap=True)  # paths stay on one line, greppable in logs

    def start(self, label: str, total: int | None) -> None:
        self._label = label
        line = f"[{label}] started ({total} steps)" if total else f"[{label}] started"
        self._write_log(line)
        if self.quiet:
            self._plain_line(line)
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=total, info="")

    def update(self, completed: int, total: int | None = None, info: str = "") -> None:
        line = f"[{self._label}] {completed}/{total} {info}".rstrip()
        if time.monotonic() - self._last_logged > 10:  # at most a line every 10 s in the log
            self._last_logged = time.monotonic()
            self._write_log(line)
        if self.quiet:
            if time.monotonic() - self._last_line > 10:  # and in CI logs
                self._last_line = time.monotonic()
                self._plain_line(line)
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total, info=info)

    def finish(self, summary: str = "", stopped: bool = False) -> None:
        """The end of a stage's loop: `done`, or `stopped` when it ended early (Ctrl-C, SIGTERM)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        line = f"[{self._label}] {'stopped' if stopped else 'done'} {summary}".rstrip()
        self._write_log(line)
        self._plain_line(line)


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
        # The Trainer ends the same way when our signal handler stops it early: say which it was.
        stopped = 0 < state.max_steps and state.global_step < state.max_steps
        self.reporter.finish(f"at step {state.global_step} of {state.max_steps}" if stopped else f"({state.global_step} steps)", stopped=stopped)

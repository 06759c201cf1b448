"""Shared test helpers: tiny recipes on the embedded model, and the real CLI.

`run_cli` runs `posttrain ARGS` inside the test process (no cold import of torch and TRL
per call); `run_cli_process` runs it in a fresh interpreter, for what only a separate
process can show: SIGKILL and SIGTERM, a lock held by another process, plugins and hooks
installed through PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from posttrain.environment import apply_offline_defaults

REPO = Path(__file__).resolve().parents[1]
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin"

# The CLI's defaults plus offline, for tests that call the library directly (before any library loads).
apply_offline_defaults()
# A console created while COLUMNS is set keeps that width for good; without it, rich reads
# COLUMNS at each print, so a test's env={"COLUMNS": ...} applies to every console.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)


@dataclass
class CliResult:
    """What a finished `posttrain` call left behind, shaped like subprocess.CompletedProcess."""

    args: list[str]
    returncode: int
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)


@contextlib.contextmanager
def environment(changes: dict[str, str | None] | None):
    """Set (or, for None, unset) variables for the duration; restore the previous values."""
    previous = {name: os.environ.get(name) for name in changes or {}}
    try:
        for name, value in (changes or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# Python's own warning filters (no -W, no PYTHONWARNINGS), in order.
PYTHON_DEFAULT_WARNING_FILTERS = [("default", DeprecationWarning, "__main__"), ("ignore", DeprecationWarning, ""),
                                  ("ignore", PendingDeprecationWarning, ""), ("ignore", ImportWarning, ""),
                                  ("ignore", ResourceWarning, "")]


@contextlib.contextmanager
def warnings_as_in_a_new_process():
    """Warnings filtered as `python -m posttrain` filters them and printed to (the current)
    sys.stderr, instead of being recorded by pytest: a warning a user would see is in stderr."""
    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category, module in PYTHON_DEFAULT_WARNING_FILTERS:
            warnings.filterwarnings(action, category=category, module=module, append=True)
        warnings.showwarning = show
        yield


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> CliResult:
    """Run `posttrain ARGS` in this process, as `python -m posttrain ARGS` would from `cwd`.

    stdout and stderr are captured, warnings included; `env` and `cwd` apply to this call
    only. A bug (an exception out of `main`) is printed to stderr as the interpreter would,
    with status 1.
    """
    from posttrain.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    start = Path.cwd()
    with environment(env), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), warnings_as_in_a_new_process():
        os.chdir(cwd or REPO)
        try:
            status = main(list(args))
        except SystemExit as e:  # what the interpreter makes of sys.exit(code)
            status = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, (int, type(None))):
                print(e.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            os.chdir(start)
    return CliResult(list(args), status, stdout.getvalue(), stderr.getvalue())


def run_cli_process(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m posttrain ARGS` in a new process, returning the finished process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "posttrain", *args],
        cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def run_with_fault(fault: str, *args: str) -> subprocess.CompletedProcess:
    """`python -m posttrain ARGS` with the test fault plugin (tests/fault_plugin/, a
    `posttrain.hooks` entry point) installed and armed: fault is [STAGE:]FAULT=STEP."""
    return run_cli_process(*args, env={"PYTHONPATH": str(FAULT_PLUGIN), "POSTTRAIN_TEST_FAULT": fault})


@pytest.fixture(scope="session")
def chat_run(tmp_path_factory):
    """`posttrain run recipes/chat.yaml` from empty, once per test session (slow tests only): (run dir, CliResult).
    Tests that train from it copy what they need (`--reuse`) and never change it."""
    out = tmp_path_factory.mktemp("chat") / "run"
    result = run_cli("run", "recipes/chat.yaml", "--output", str(out), "--quiet", env={"COLUMNS": "250"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@contextlib.contextmanager
def serve_process(*args: str, timeout: float = 300):
    """`python -m posttrain serve ARGS` as a separate process; yields (process, url) once it serves, stops it after."""
    import queue
    import threading
    import time

    process = subprocess.Popen([sys.executable, "-m", "posttrain", "serve", *args], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    url, seen, deadline = None, [], time.monotonic() + timeout
    try:
        while url is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            if line.startswith("serving "):
                url = line.split(" at ")[1].split()[0]
        assert url, f"the server did not start: {''.join(seen)}"
        process.printed = seen  # what it said up to serving (tests check no secret is in it)
        yield process, url
    finally:
        process.terminate()
        process.wait(timeout=30)


def call_api(url: str, path: str, body=None, token: str | None = None, data: bytes | None = None) -> tuple[int, object]:
    """One request to `posttrain serve`'s JSON API: (status, the JSON answer or the text)."""
    import json
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None or data is not None:
        headers["Content-Type"] = "application/json"
        data = data if data is not None else json.dumps(body).encode()
    request = urllib.request.Request(url.rstrip("/") + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            raw, status, kind = response.read(), response.status, response.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        raw, status, kind = e.read(), e.code, e.headers.get("content-type", "")
    return status, json.loads(raw) if kind.startswith("application/json") else raw.decode()


def tiny_recipe(**stages) -> dict:
    """A recipe dict on the embedded model; stages given as name=config, in order."""
    return {"name": "tiny", "base": "builtin:tiny-chat", "seed": 0, "stages": stages}


def quick_sft(**overrides) -> dict:
    return {"kind": "sft", "data": "builtin:assistant_world/sft", "max_steps": 4, "batch_size": 8,
            "learning_rate": 1e-3, "logging_steps": 2, **overrides}


def sft_stage_context(tmp_path: Path, precision: str = "fp32"):
    """The sft stage's context on the embedded base, as the pipeline hands it over: LoRA r=4, one step of 4
    examples of at most 64 tokens, no checkpoints; for tests that build (and train) the stage's own trainer."""
    from posttrain.model_store import ModelStore
    from posttrain.progress import ProgressReporter
    from posttrain.stage import BASE, ResolvedInputs, StageContext
    from posttrain.stages.sft import SFTStage

    config = SFTStage.Config(kind="sft", data="builtin:assistant_world/sft", lora={"r": 4}, max_steps=1, batch_size=4,
                             max_length=64, precision=precision, save_steps=0)
    store = ModelStore(tmp_path, base="builtin:tiny-chat")
    return StageContext(name="sft", config=config, stage_dir=tmp_path / "sft", store=store, progress=ProgressReporter(quiet=True),
                        inputs=ResolvedInputs(parent=store.resolve(BASE)), data=SFTStage.prepare_data(config, {}, 0))


def quick_dpo(**overrides) -> dict:
    return {"kind": "dpo", "data": "builtin:assistant_world/feedback", "max_steps": 3, "batch_size": 8,
            "learning_rate": 1e-4, "logging_steps": 1, **overrides}


@pytest.fixture
def write_recipe(tmp_path):
    def write(recipe: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write

"""The hub is the user's choice (posttrain/environment.py, docs/cli.md "The hub").

The CLI leaves HF_HUB_OFFLINE alone: a recipe naming a hub model not in the cache asks the
hub, and when that fails the user reads one line (which model, what failed, what to set)
before anything is written. An explicit HF_HUB_OFFLINE=1 is respected, and a model already
in the hub cache loads from it without a single request.

The test process itself is offline (conftest) and huggingface_hub reads HF_HUB_OFFLINE and
HF_ENDPOINT once, when imported, so the online cases run `python -m posttrain` in a fresh
process with an empty hub cache, and a hub at 127.0.0.1:9 (a closed port, so they fail
fast), or at a real HTTP server on 127.0.0.1 that answers as the hub answers a gated or a
missing repository (status and X-Error-Code header, which huggingface_hub turns into its errors).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, environment, quick_sft, run_cli, tiny_recipe
from posttrain.environment import apply_defaults, apply_offline_defaults
from posttrain.errors import PosttrainError

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # a real hub model, not in the (empty) cache these tests use
HUB_SWITCHES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN")


def _online_env(tmp_path: Path, endpoint: str = CLOSED, **extra: str) -> dict:
    """This environment with none of the hub switches set (as a user's shell), an empty hub cache and `endpoint` as the hub."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_SWITCHES}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": endpoint, **extra}


def _posttrain(*args: str, env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posttrain", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr  # no traceback, no "Retrying in 1s" lines
    return lines[0]


# -- the defaults ---------------------------------------------------------------------------------
def test_the_cli_defaults_leave_the_hub_switch_to_the_user():
    with environment({"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None}):
        apply_defaults()
        assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    for explicit in ("0", "1"):
        with environment({"HF_HUB_OFFLINE": explicit}):
            apply_defaults()
            apply_offline_defaults()
            assert os.environ["HF_HUB_OFFLINE"] == explicit
    with environment({"HF_HUB_OFFLINE": None}):  # the test suite's defaults: never the network
        apply_offline_defaults()
        assert os.environ["HF_HUB_OFFLINE"] == "1"


# -- a hub that cannot be reached -----------------------------------------------------------------
def test_validate_names_the_unreachable_hub_model_in_one_line(tmp_path, write_recipe):
    recipe = write_recipe({**tiny_recipe(sft=quick_sft()), "base": MODEL})
    line = _one_error_line(_posttrain("validate", str(recipe), env=_online_env(tmp_path)))
    assert line == (f"error: {recipe}: base: hub model '{MODEL}' could not be downloaded: cannot reach {CLOSED} "
                    "([Errno 111] Connection refused); connect to the network (HF_ENDPOINT names the hub), or name a local model directory")


def test_run_stops_at_an_unreachable_hub_model_before_writing_anything(tmp_path, write_recipe):
    """A model an eval stage reads (its judge) is checked like the base: the run fails before its directory exists."""
    evaluation = {"kind": "eval", "models": ["base", "sft"], "compare_to": "base", "tasks": ["world_skills"], "judge": {"model": MODEL}}
    recipe = write_recipe(tiny_recipe(sft=quick_sft(), eval=evaluation))
    out = tmp_path / "run"
    line = _one_error_line(_posttrain("run", str(recipe), "--output", str(out), "--quiet", env=_online_env(tmp_path)))
    assert line.startswith(f"error: {recipe}: stages.eval.judge.model: hub model '{MODEL}' could not be downloaded: cannot reach {CLOSED}")
    assert not out.exists()


def test_explicit_offline_is_respected_and_says_what_to_set(write_recipe):
    """HF_HUB_OFFLINE=1 (set by the user; this test process is started offline): the cache only, no request."""
    recipe = write_recipe({**tiny_recipe(sft=quick_sft()), "base": "someorg/not-downloaded"})
    result = run_cli("validate", str(recipe), env={"HF_HUB_OFFLINE": "1"})
    assert _one_error_line(result) == (
        f"error: {recipe}: base: 'someorg/not-downloaded' is not a local directory, and as a hub id it is not in the local hub "
        "cache (HF_HUB_OFFLINE=1); set HF_HUB_OFFLINE=0 (or unset it) to download it, or name a local model directory")


def test_loading_a_hub_model_that_is_not_there_is_one_line(tmp_path):
    """Past the recipe's check (a tool or test opening the store directly), the load itself fails with the same kind of line."""
    from posttrain.model_store import ModelStore
    from posttrain.stage import BASE

    with pytest.raises(PosttrainError) as error:
        ModelStore(tmp_path / "run", "someorg/not-downloaded").load_tokenizer(BASE)
    assert str(error.value).startswith("'someorg/not-downloaded' is not a local directory, and as a hub id it is not in the local hub cache")
    assert "\n" not in str(error.value)


# -- a hub that answers "no" ----------------------------------------------------------------------
class _HubAnswers(BaseHTTPRequestHandler):
    """Answers every request as the hub answers for the repository named in the path: org `gated`
    a gated repository (403, GatedRepo), anything else a missing one (404, RepoNotFound)."""

    def do_HEAD(self):
        gated = self.path.lstrip("/").startswith("gated/")
        self.send_response(403 if gated else 404)
        self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
        self.send_header("X-Error-Message", "Access to this model is restricted." if gated else "Repository not found")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def hub_that_says_no():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubAnswers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("model, expected", [
    ("gated/llama-like", "hub model 'gated/llama-like' is gated: accept its terms at {hub}/gated/llama-like with your account, "
                         "then set HF_TOKEN to a read token of that account (or name a local model directory)"),
    ("someorg/no-such-model", "hub model 'someorg/no-such-model' was not found on {hub}: check the name; a private model needs "
                              "HF_TOKEN set to a read token with access to it (or name a local model directory)"),
], ids=["gated", "not-found"])
def test_a_gated_or_missing_hub_model_says_what_to_set(tmp_path, write_recipe, hub_that_says_no, model, expected):
    recipe = write_recipe({**tiny_recipe(sft=quick_sft()), "base": model})
    line = _one_error_line(_posttrain("validate", str(recipe), env=_online_env(tmp_path, hub_that_says_no)))
    assert line == f"error: {recipe}: base: " + expected.format(hub=hub_that_says_no)


# -- a hub model in the cache ---------------------------------------------------------------------
NETWORK_WATCH = """
import sys
connections = []
def watch(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        connections.append(f"{event} {args[1:] if event == 'socket.connect' else args[:2]}")
sys.addaudithook(watch)
from posttrain.cli import main
status = main(sys.argv[1:])
print(f"NETWORK: {len(connections)} {connections[:3]}", file=sys.stderr)
sys.exit(status)
"""


@pytest.mark.slow
def test_a_run_on_a_cached_hub_model_makes_no_request(tmp_path, write_recipe):
    """The embedded model saved into the hub cache's layout as `tinyorg/tiny-chat` (refs/main -> snapshot), the hub unreachable,
    HF_HUB_OFFLINE unset: validate, SFT and evaluation run, and the process opens no connection and resolves no host name."""
    from posttrain.embedded.model import build_embedded_model, load_embedded_tokenizer

    repo = tmp_path / "hf" / "hub" / "models--tinyorg--tiny-chat"
    snapshot = repo / "snapshots" / ("0" * 40)
    tokenizer = load_embedded_tokenizer()
    build_embedded_model("tiny-chat", tokenizer, seed=0).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)

    evaluation = {"kind": "eval", "models": ["base", "sft"], "compare_to": "base", "tasks": ["world_skills"], "limit": 4}
    recipe = write_recipe({**tiny_recipe(sft=quick_sft(max_steps=2), eval=evaluation), "base": "tinyorg/tiny-chat"})
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", NETWORK_WATCH, "run", str(recipe), "--output", str(out), "--quiet"],
                            cwd=REPO, env=_online_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "NETWORK: 0 []" in result.stderr, result.stderr
    assert "Retrying" not in result.stderr
    assert (out / "sft" / "model" / "model.safetensors").is_file() and (out / "results.json").is_file()

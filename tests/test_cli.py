"""The command line itself: help, --version, usage errors, exit statuses, entry points.

Usage errors are click's short usage message and status 2, never a traceback; help and
--version print to stdout with status 0.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from conftest import REPO, quick_sft, run_cli, run_cli_process, tiny_recipe
from posttrain import cli
from posttrain.errors import RecipeError


def _assert_usage_error(result, message: str, usage: str | None) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3, result.stderr  # Usage, Try '... -h' for help, Error
    assert lines[-1].startswith(f"Error: {message}"), result.stderr
    if usage is not None:
        assert lines[0].startswith(f"Usage: {usage} "), result.stderr
        assert lines[1] == f"Try '{usage} -h' for help.", result.stderr


USAGE_ERRORS = [
    (["run"], "Missing argument 'recipe'.", "posttrain run"),
    (["runn"], "No such command 'runn'. Did you mean 'run'?", "posttrain"),
    (["run", "recipes/chat.yaml", "--profile"], "Option '--profile' requires an argument.", None),
    (["run", "recipes/chat.yaml", "--no-such-flag"], "No such option: --no-such-flag", "posttrain run"),
    (["validate"], "Missing argument 'recipe'.", "posttrain validate"),
    (["data", "inspect"], "Missing argument 'source'.", "posttrain data inspect"),
    (["data", "inspectt"], "No such command 'inspectt'. Did you mean 'inspect'?", "posttrain data"),
    (["data", "convert", "log.jsonl", "--format"], "Option '--format' requires an argument.", None),
    (["data", "convert", "log.jsonl", "--max-pairs-per-prompt", "many"], "Invalid value for '--max-pairs-per-prompt': ", "posttrain data convert"),
]


@pytest.mark.parametrize("args, message, usage", USAGE_ERRORS, ids=[" ".join(a) for a, _, _ in USAGE_ERRORS])
def test_usage_errors_are_a_short_message_and_status_2(args, message, usage):
    _assert_usage_error(run_cli(*args), message, usage)


@pytest.mark.parametrize("args, usage", [
    ([], "posttrain"), (["-h"], "posttrain"), (["--help"], "posttrain"),
    (["run", "-h"], "posttrain run"), (["validate", "-h"], "posttrain validate"), (["plan", "-h"], "posttrain plan"),
    (["compare", "-h"], "posttrain compare"),
    (["data"], "posttrain data"), (["data", "-h"], "posttrain data"),
    (["data", "inspect", "-h"], "posttrain data inspect"), (["data", "convert", "--help"], "posttrain data convert"),
], ids=lambda value: " ".join(value) or "(nothing)" if isinstance(value, list) else None)
def test_help_goes_to_stdout_with_status_0(args, usage):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"Usage: {usage} " in result.stdout
    assert "-h" in result.stdout and "--help" in result.stdout  # -h is listed as the alias everywhere


def test_help_lists_every_command():
    out = run_cli().stdout
    for command in ("run", "validate", "plan", "compare", "data"):
        assert f" {command} " in out
    assert "--version" in out


def test_version_is_the_installed_one():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"posttrain {version('posttrain')}\n"


def test_validate_prints_to_stdout_and_exits_0():
    result = run_cli("validate", "recipes/chat.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "recipes/chat.yaml: ok (4 stages: sft, rm, align, eval)"


def test_main_takes_argv_and_leaves_sys_argv_alone(write_recipe, monkeypatch, capsys):
    bad = str(write_recipe(tiny_recipe(sft=quick_sft(kind="nope"))))
    monkeypatch.chdir(REPO)
    assert cli.main(["validate", "recipes/chat.yaml"]) == 0
    assert cli.main(["validate", bad]) == 2
    assert capsys.readouterr().err.startswith("error: ")

    argv = ["posttrain", "validate", bad, "--debug"]
    monkeypatch.setattr(sys, "argv", list(argv))
    with pytest.raises(RecipeError, match="unknown stage kind 'nope'"):  # --debug: the user error raises
        cli.main()
    assert sys.argv == argv


def test_console_script_exits_with_mains_status(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["posttrain", "runn"])
    with pytest.raises(SystemExit) as exit_:
        cli.console_script()
    assert exit_.value.code == 2
    monkeypatch.setattr(sys, "argv", ["posttrain", "validate", "recipes/chat.yaml"])
    with pytest.raises(SystemExit) as exit_:
        cli.console_script()
    assert exit_.value.code == 0


def test_ctrl_c_outside_a_stage_is_status_130_without_a_traceback(monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_load", interrupted)
    result = run_cli("validate", "recipes/chat.yaml")
    assert result.returncode == 130 and "Traceback" not in result.stderr


def test_python_dash_m_posttrain_is_the_same_command():
    result = run_cli_process("--version", timeout=120)
    assert result.returncode == 0 and result.stdout == f"posttrain {version('posttrain')}\n"
    result = run_cli_process("runn", timeout=120)
    assert result.returncode == 2 and "No such command 'runn'" in result.stderr and "Traceback" not in result.stderr


def test_run_cli_applies_env_and_cwd_to_one_call_only(tmp_path, write_recipe):
    before_cwd, before_env = Path.cwd(), dict(os.environ)
    write_recipe(tiny_recipe(sft=quick_sft()), "only-here.yaml")
    result = run_cli("validate", "only-here.yaml", cwd=tmp_path, env={"POSTTRAIN_TEST_MARKER": "1", "HF_HUB_OFFLINE": None})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("only-here.yaml: ok")
    assert Path.cwd() == before_cwd and dict(os.environ) == before_env

"""The command line itself: help, --version, usage errors, exit statuses, entry points.

Usage errors are click's short usage message and status 2, never a traceback; help and
--version print to stdout with status 0.
"""

from __future__ import annotations

import os
import re
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


# -- output in a log or a pipe (run_cli's stdout is not a terminal) ---------------------------------
def _two_compared_runs(tmp_path) -> list[str]:
    """Two finished runs of the same recipe whose aligned models differ: compared, a table of four models and two deltas."""
    from test_eval_results import V1_REWARDS, _other_align, _v1_results, _write_run

    first = _write_run(tmp_path / "a" / "run", _v1_results(), V1_REWARDS)
    second = _write_run(tmp_path / "b" / "run", _other_align(_v1_results()), {**V1_REWARDS, "align": [0.1, 2.0]})
    return [str(first), str(second)]


def test_the_summary_table_keeps_each_row_on_one_line_in_a_log(tmp_path):
    """Without a terminal (CI logs, `| cat`), rich assumed 80 columns and wrapped the cells of a wide table; now each metric
    row is one line holding the metric and all its numbers, as results.json has them."""
    from posttrain.reporting.summary import table
    from posttrain.results import load_results

    result = run_cli("compare", *_two_compared_runs(tmp_path), "-o", str(tmp_path / "cmp"))
    assert result.returncode == 0, result.stderr
    header, rows = table(load_results(tmp_path / "cmp" / "results.json"))
    lines = result.stdout.splitlines()
    assert len(header) == 8 and max(len(line) for line in lines) > 80  # wider than the 80 columns rich assumed
    assert any(all(column in line for column in header) for line in lines), result.stdout
    for group, label, *cells in rows:
        [line] = [line for line in lines if label in line]
        assert all(cell in line for cell in cells), (line, cells)
        assert line.index(label) < min(line.index(cell) for cell in cells)


def _plan_of_two_stages(tmp_path, write_recipe, env: dict | None = None):
    evaluation = {"kind": "eval", "models": ["base", "sft"], "compare_to": "base", "tasks": ["world_skills"]}
    result = run_cli("plan", str(write_recipe(tiny_recipe(sft=quick_sft(), eval=evaluation))), "--output", str(tmp_path / "run"), env=env)
    assert result.returncode == 0, result.stderr
    return result


def test_columns_sets_the_width_of_piped_output(tmp_path, write_recipe):
    """COLUMNS, when set, is the width even without a terminal (rich then wraps cells to fit it)."""
    def table_width(result) -> int:  # the table's lines (a plain line after it may be longer: soft-wrapped on purpose)
        return max(len(line) for line in result.stdout.splitlines() if line[:1] in "┏┃┡│├└")

    assert table_width(_plan_of_two_stages(tmp_path, write_recipe)) > 100
    assert table_width(_plan_of_two_stages(tmp_path, write_recipe, env={"COLUMNS": "100"})) <= 100


def test_the_plan_table_keeps_each_stage_on_one_line_in_a_log(tmp_path, write_recipe):
    result = _plan_of_two_stages(tmp_path, write_recipe)
    for stage, source, data in (("sft", "builtin:tiny-chat", "builtin:assistant_world/sft"), ("eval", "base, sft", "")):
        [line] = [line for line in result.stdout.splitlines() if re.search(rf"^\W+\d+\W+{stage}\s", line)]  # its row: number, name
        assert source in line and data in line and "will run" in line, line
        assert re.search(r"\b[0-9a-f]{16}\b", line), line  # its fingerprint, whole, beside its state

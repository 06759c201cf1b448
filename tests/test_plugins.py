"""Stage kinds from other packages register through the `posttrain.stages` entry-point group."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import run_cli
from posttrain.errors import RecipeError
from posttrain.stage_registry import register_stage, stage_kinds
from posttrain.stage import Stage


def _install_fake_distribution(site, kind: str) -> None:
    """What `pip install` of a plugin leaves behind: a module and a dist-info with entry points."""
    (site / "echo_stage.py").write_text(textwrap.dedent(f"""
        from posttrain.stage import Stage, StageConfig, StageResult

        class EchoConfig(StageConfig):
            message: str

        class EchoStage(Stage):
            kind = "{kind}"
            Config = EchoConfig

            def run(self, ctx):
                ctx.stage_dir.mkdir(parents=True, exist_ok=True)
                (ctx.stage_dir / "echo.txt").write_text(ctx.config.message)
                return StageResult(metrics={{"chars": len(ctx.config.message)}})
    """))
    dist = site / "echo_stage-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-stage\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[posttrain.stages]\n{kind} = echo_stage:EchoStage\n")


def test_stage_from_another_package_runs_in_a_recipe(tmp_path, write_recipe):
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_distribution(site, "echo")
    recipe = write_recipe({"name": "plug", "base": "builtin:tiny-chat", "stages": {"hello": {"kind": "echo", "message": "hi there"}}})
    env = {"PYTHONPATH": str(site)}

    bad = run_cli("validate", str(recipe), "--set", "stages.hello.mesage=x", env=env)
    assert bad.returncode == 2 and "did you mean 'message'" in bad.stderr  # its own schema is enforced

    out = tmp_path / "run"
    result = run_cli("run", str(recipe), "--output", str(out), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "hello" / "echo.txt").read_text() == "hi there"
    manifest = json.loads((out / "hello" / "stage.json").read_text())
    assert manifest["status"] == "completed" and manifest["kind"] == "echo" and manifest["metrics"] == {"chars": 8}

    assert run_cli("validate", str(recipe)).returncode == 2  # without the plugin installed, the kind is unknown


def test_duplicate_kind_is_an_error():
    assert {"sft", "dpo", "eval"} <= set(stage_kinds())

    class AnotherSFT(Stage):
        kind = "sft"

    with pytest.raises(RecipeError, match="registered twice"):
        register_stage(AnotherSFT)

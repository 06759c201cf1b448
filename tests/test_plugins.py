"""Other packages extend posttrain through entry points: stage kinds (`posttrain.stages`)
and hooks (`posttrain.hooks`)."""

from __future__ import annotations

import json
import textwrap

import pytest

from conftest import run_cli, run_cli_process
from posttrain import hooks
from posttrain.errors import PosttrainError, RecipeError
from posttrain.stage_registry import register_stage, stage_kinds
from posttrain.stage import Stage


def _install_fake_distribution(site, kind: str) -> None:
    """What `pip install` of a plugin leaves behind: a module and a dist-info with entry points."""
    (site / "echo_stage.py").write_text(textwrap.dedent(f"""
        import json

        from posttrain.stage import Role, Stage, StageConfig, StageResult

        class EchoConfig(StageConfig):
            message: str

        class EchoStage(Stage):
            kind = "{kind}"
            role = Role.DATA
            Config = EchoConfig

            def run(self, ctx):
                ctx.stage_dir.mkdir(parents=True, exist_ok=True)
                (ctx.stage_dir / "echo.txt").write_text(ctx.config.message)
                ctx.data_output.write_text(json.dumps({{"text": ctx.config.message}}) + "\\n")
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
    env = {"PYTHONPATH": str(site)}  # installed for a new process: entry points are read once per process

    bad = run_cli_process("validate", str(recipe), "--set", "stages.hello.mesage=x", env=env)
    assert bad.returncode == 2 and "did you mean 'message'" in bad.stderr  # its own schema is enforced

    out = tmp_path / "run"
    result = run_cli_process("run", str(recipe), "--output", str(out), "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "hello" / "echo.txt").read_text() == "hi there"
    manifest = json.loads((out / "hello" / "stage.json").read_text())
    assert manifest["status"] == "completed" and manifest["kind"] == "echo" and manifest["metrics"] == {"chars": 8}
    assert manifest["role"] == "data" and json.loads((out / "hello" / "data.jsonl").read_text()) == {"text": "hi there"}

    assert run_cli("validate", str(recipe)).returncode == 2  # without the plugin installed, the kind is unknown


def test_duplicate_kind_is_an_error():
    assert {"sft", "dpo", "eval"} <= set(stage_kinds())

    class AnotherSFT(Stage):
        kind = "sft"

    with pytest.raises(RecipeError, match="registered twice"):
        register_stage(AnotherSFT)


class _EntryPoint:
    """What importlib.metadata.entry_points() yields, for a factory defined here."""

    def __init__(self, name, factory):
        self.name, self.value, self._factory = name, f"tests:{name}", factory

    def load(self):
        return self._factory


@pytest.fixture
def installed_hooks(monkeypatch):
    """Replace the installed `posttrain.hooks` entry points with the given factories."""
    def install(**factories):
        monkeypatch.setattr(hooks, "entry_points", lambda group: [_EntryPoint(n, f) for n, f in factories.items()] if group == hooks.ENTRY_POINT_GROUP else [])
        hooks.installed.cache_clear()

    yield install
    hooks.installed.cache_clear()


class _Trainer:
    def __init__(self):
        self.callbacks = []

    def add_callback(self, callback):
        self.callbacks.append(callback)


def test_no_hooks_installed_changes_nothing():
    hooks.installed.cache_clear()
    assert hooks.installed() == ()  # this environment installs none
    trainer = _Trainer()
    hooks.install(trainer, "sft")
    hooks.after_step("ppo", 1)
    assert trainer.callbacks == []


def test_hooks_are_made_once_and_called_per_stage(installed_hooks):
    calls, made = [], []

    class Recorder:
        def trainer_callbacks(self, stage, trainer):
            calls.append(("callbacks", stage))
            return [f"callback for {stage}"] if stage == "sft" else []

        def after_step(self, stage, step):
            calls.append(("after_step", stage, step))

    class OnlySteps:
        def after_step(self, stage, step):
            calls.append(("only_steps", stage, step))

    def recorder():
        made.append("recorder")
        return Recorder()

    installed_hooks(recorder=recorder, steps=OnlySteps, inactive=lambda: None)  # None: stays out of this run
    sft, dpo = _Trainer(), _Trainer()
    hooks.install(sft, "sft")
    hooks.install(dpo, "dpo")
    hooks.after_step("ppo", 3)
    assert sft.callbacks == ["callback for sft"] and dpo.callbacks == []
    assert calls == [("callbacks", "sft"), ("callbacks", "dpo"), ("after_step", "ppo", 3), ("only_steps", "ppo", 3)]
    assert made == ["recorder"]  # one factory call per process


def test_a_hook_without_hook_methods_is_an_error(installed_hooks):
    installed_hooks(useless=object)
    with pytest.raises(PosttrainError, match="entry point 'useless = tests:useless' in group posttrain.hooks returned object, "
                                              "which has none of the hook methods trainer_callbacks, after_step"):
        hooks.install(_Trainer(), "sft")

"""What an export starts from: a finished policy stage of a run directory, found through the run layout
and the model store, with its manifest and the manifests of the stages it descends from.

Every way the (RUN, STAGE) pair can be wrong is one `ExportError` line naming the path and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.atomic import is_committed
from posttrain.errors import PosttrainError, did_you_mean
from posttrain.run_layout import MANIFEST_FILENAME, RunLayout
from posttrain.stage import BASE, Role


class ExportError(PosttrainError):
    """An export that cannot be made as asked; the message says which input is wrong and what to do."""


@dataclass(frozen=True)
class StageSource:
    """A finished policy stage, ready to export."""

    run_dir: Path
    name: str
    manifest: dict
    lineage: list[dict]  # manifests from the first stage after base to this one, in training order

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.run_dir)

    @property
    def model_dir(self) -> Path:
        return self.layout.model_dir(self.name)

    @property
    def adapter_dir(self) -> Path:
        return self.layout.adapter_dir(self.name)

    @property
    def has_adapter(self) -> bool:
        return is_committed(self.adapter_dir)

    @property
    def base(self) -> str:
        """The run's starting model, as the recipe named it (builtin:<name>, a directory, a hub id, a .gguf)."""
        return str(self.manifest.get("base") or "")

    @property
    def run_name(self) -> str:
        return self.run_dir.resolve().name

    def store(self):
        """The model store of this run (loading needs only the committed stage directories)."""
        from posttrain.model_store import ModelStore

        return ModelStore(self.run_dir, self.base)


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); the stage's manifest is damaged, run the stage again") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: not a stage manifest (a JSON object); run the stage again")
    return data


def _stages_in(layout: RunLayout) -> dict[str, dict]:
    return {p.parent.name: _read_manifest(p) for p in sorted(layout.root.glob(f"*/{MANIFEST_FILENAME}"))}


def find_stage(run_dir: Path, stage: str) -> StageSource:
    """The finished policy stage `stage` of the run in `run_dir`, or one ExportError line."""
    layout = RunLayout(Path(run_dir))
    if not layout.root.is_dir():
        raise ExportError(f"run directory {run_dir} does not exist; name the directory `posttrain run` wrote (e.g. runs/chat)")
    manifests = _stages_in(layout)
    if not manifests:
        raise ExportError(f"{run_dir} is not a run directory (no <stage>/stage.json inside); name the directory `posttrain run` wrote (e.g. runs/chat)")
    policies = sorted(n for n, m in manifests.items() if m.get("role") == Role.POLICY.value)
    if stage not in manifests:
        if stage == BASE:
            raise ExportError(f"'{BASE}' is the run's starting model ({next(iter(manifests.values())).get('base')}), not a trained stage; "
                              f"export one of its policy stages: {', '.join(policies) or '(none)'}")
        raise ExportError(f"{run_dir} has no stage '{stage}'{did_you_mean(stage, manifests)}; its policy stages: {', '.join(policies) or '(none)'}")
    manifest = manifests[stage]
    role = manifest.get("role")
    if role != Role.POLICY.value:
        raise ExportError(f"stage '{stage}' (kind {manifest.get('kind')}) has role {role}, not policy: it is no model to export; "
                          f"export one of the policy stages: {', '.join(policies) or '(none)'}")
    status = manifest.get("status")
    if status != "completed":
        raise ExportError(f"stage '{stage}' is {status}, not completed; finish it with `posttrain run` (the same recipe and -o {run_dir}) first")
    if not is_committed(layout.model_dir(stage)):
        raise ExportError(f"stage '{stage}' has no committed model at {layout.model_dir(stage)}; run the stage again (`posttrain run ... --force {stage}`)")
    return StageSource(Path(run_dir), stage, manifest, _lineage(stage, manifests))


def _lineage(stage: str, manifests: dict[str, dict]) -> list[dict]:
    chain, name = [], stage
    while name and name != BASE and name in manifests and name not in {m["name"] for m in chain}:
        chain.append({"name": name, **manifests[name]})
        name = manifests[name].get("parent")
    return list(reversed(chain))

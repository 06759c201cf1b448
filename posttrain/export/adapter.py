"""`--format adapter`: a LoRA stage's adapter alone, loadable from any directory with
`peft.AutoPeftModelForCausalLM.from_pretrained(DIR)`.

The adapter applies to the stage's parent, so `base_model_name_or_path` in adapter_config.json names
that model absolutely: the parent stage's committed model directory, or the recipe's hub id. A
relative path would only work from the directory the export was made in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from posttrain.atomic import is_committed
from posttrain.export.source import ExportError, StageSource
from posttrain.model_store import is_hub_id
from posttrain.stage import BASE

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_base(source: StageSource) -> str:
    """What the adapter applies to, as an absolute directory or a hub id."""
    recorded = json.loads((source.adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    parent = source.manifest.get("parent")
    if parent and parent != BASE:
        directory = source.layout.model_dir(parent)
        if not is_committed(directory):
            raise ExportError(f"stage '{source.name}' is an adapter on stage '{parent}', whose model {directory} is not committed; "
                              f"run '{parent}' again first")
        return str(directory.resolve())
    if Path(recorded).is_dir():
        return str(Path(recorded).resolve())
    if recorded and is_hub_id(recorded):
        return recorded
    raise ExportError(f"stage '{source.name}' is an adapter on the run's base, recorded as '{recorded}', which is neither a directory "
                      f"here nor a hub id; run the stage again where its base exists, or export --format merged")


def write_adapter(source: StageSource, directory: Path, dtype: str) -> None:
    if not source.has_adapter:
        raise ExportError(f"stage '{source.name}' trained all weights (no LoRA adapter in {source.adapter_dir}); "
                          "export it with --format merged or --format gguf")
    base = adapter_base(source)
    for path in sorted(source.adapter_dir.iterdir()):
        # PEFT's own README is a template to fill in; the export writes its own model card.
        if path.is_file() and path.name not in ("README.md", "COMMITTED"):
            shutil.copy2(path, directory / path.name)
    config = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    if dtype != "f32":
        _cast_weights(directory / ADAPTER_WEIGHTS, dtype)


def _cast_weights(path: Path, dtype: str) -> None:
    from safetensors.torch import load_file, save_file

    from posttrain.export.merged import DTYPES

    tensors = load_file(path)
    save_file({name: t.to(DTYPES[dtype]) if t.is_floating_point() else t for name, t in tensors.items()}, path, metadata={"format": "pt"})

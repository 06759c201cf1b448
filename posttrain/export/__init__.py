"""`posttrain export RUN STAGE`: a finished policy stage of a run, as a directory others can use.

    source.py        find the stage (run_layout, model store), its manifest and lineage; every bad input one line
    merged.py        --format merged: safetensors, config, generation config, tokenizer, chat template
    adapter.py       --format adapter: a LoRA stage's adapter, its base named absolutely
    gguf_writer.py   --format gguf: one .gguf file (llama, mistral, qwen2), written with the gguf package
    model_card.py    README.md: front matter, lineage, data accounting, evaluation, release verdict
    hub.py           --push-to-hub: huggingface_hub create_repo + upload_folder

`export_stage` ties them together; the directory is built beside its target and swapped in whole
(posttrain.atomic), so a failed export never leaves half a directory behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.atomic import atomic_directory
from posttrain.export.source import ExportError, StageSource, find_stage

FORMATS = ("merged", "adapter", "gguf")
DTYPE_NAMES = ("f32", "f16", "bf16")
EXPORT_RECORD = "posttrain_export.json"  # marks a directory as an export, so a later export may replace it


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    files: list[str]
    url: str | None = None  # the hub repository, when pushed


def check_options(export_format: str, dtype: str, quantize: str | None, output: Path) -> None:
    from posttrain.errors import did_you_mean
    from posttrain.export.gguf_writer import QUANTIZATIONS

    if export_format not in FORMATS:
        raise ExportError(f"--format '{export_format}' is not one of {', '.join(FORMATS)}{did_you_mean(export_format, FORMATS)}")
    if dtype not in DTYPE_NAMES:
        raise ExportError(f"--dtype '{dtype}' is not one of {', '.join(DTYPE_NAMES)}{did_you_mean(dtype, DTYPE_NAMES)}")
    if quantize is not None and export_format != "gguf":
        raise ExportError(f"--quantize applies to --format gguf only; drop it, or export --format gguf --quantize {quantize}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"--quantize '{quantize}' is not one of {', '.join(QUANTIZATIONS)}")
    output = Path(output)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / EXPORT_RECORD).is_file())):
        raise ExportError(f"-o {output} exists and is not an earlier export; name a new directory (an earlier export there is replaced)")


def export_stage(run_dir: Path, stage: str, export_format: str, output: Path, dtype: str = "f32", quantize: str | None = None,
                 push_to_hub: str | None = None, private: bool = False) -> ExportResult:
    check_options(export_format, dtype, quantize, output)
    token = None
    if push_to_hub:
        from posttrain.export.hub import check_can_push

        token = check_can_push(push_to_hub)  # before the work: a push that cannot happen costs nothing
    source = find_stage(Path(run_dir), stage)
    with atomic_directory(Path(output)) as tmp:
        files = _write(source, tmp, export_format, dtype, quantize)
        from posttrain.export.model_card import write_card

        write_card(source, tmp, export_format, files)
        (tmp / EXPORT_RECORD).write_text(json.dumps({
            "run": str(source.run_dir.resolve()), "stage": stage, "fingerprint": source.manifest.get("fingerprint"),
            "format": export_format, "dtype": dtype, "quantize": quantize}, indent=2) + "\n", encoding="utf-8")
    files = sorted(p.name for p in Path(output).iterdir() if p.is_file() and p.name != "COMMITTED")
    url = None
    if push_to_hub:
        from posttrain.export.hub import push

        url = push(Path(output), push_to_hub, private, token, f"posttrain export {source.run_name}/{stage} ({export_format}, {quantize or dtype})")
    return ExportResult(Path(output), files, url)


def _write(source: StageSource, directory: Path, export_format: str, dtype: str, quantize: str | None) -> list[str]:
    if export_format == "merged":
        from posttrain.export.merged import write_merged

        write_merged(source, directory, dtype)
    elif export_format == "adapter":
        from posttrain.export.adapter import write_adapter

        write_adapter(source, directory, dtype)
    else:
        from posttrain.export.gguf_writer import write_gguf

        return [write_gguf(source, directory, dtype, quantize).name]
    return sorted(p.name for p in directory.iterdir() if p.is_file())


__all__ = ["FORMATS", "ExportError", "ExportResult", "export_stage"]

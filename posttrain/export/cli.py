"""`posttrain export RUN STAGE`: the command line of posttrain.export (registered by posttrain.cli).

Only typer and the option parsing load here; the export modules (torch, transformers, gguf,
huggingface_hub) load when the command runs, so `posttrain --help` does not pay for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console


def export(
    run: Annotated[Path, typer.Argument(help="A run directory `posttrain run` wrote, e.g. runs/chat.")],
    stage: Annotated[str, typer.Argument(help="A finished policy stage in it, e.g. sft or align.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The export directory (created; an earlier export there is replaced).")],
    export_format: Annotated[str, typer.Option("--format", "-f", help="merged (full model), adapter (LoRA stages) or gguf (one .gguf file).")] = "merged",
    dtype: Annotated[str, typer.Option("--dtype", help="Weights as f32 (exact), f16 or bf16.")] = "f32",
    quantize: Annotated[Optional[str], typer.Option("--quantize", help="gguf only: q8_0 (8-bit blocks) for the 2-D weights.")] = None,
    push_to_hub: Annotated[Optional[str], typer.Option("--push-to-hub", help="Upload the export to this hub repository, OWNER/NAME (needs a token: HF_TOKEN or `hf auth login`).")] = None,
    private: Annotated[bool, typer.Option("--private", help="With --push-to-hub: create the repository private.")] = False,
):
    """Export a finished policy stage: merged model, LoRA adapter or GGUF, with a model card; optionally push it to the hub."""
    from posttrain.export import export_stage

    if private and not push_to_hub:
        from posttrain.export.source import ExportError

        raise ExportError("--private applies to --push-to-hub only; add --push-to-hub OWNER/NAME or drop --private")
    result = export_stage(run, stage, export_format, output, dtype=dtype, quantize=quantize, push_to_hub=push_to_hub, private=private)
    console = Console()
    console.print(f"exported {run}/{stage} as {export_format} ({quantize or dtype}) to {result.directory}: {', '.join(result.files)}")
    if result.url:
        console.print(f"pushed to {result.url}{' (private)' if private else ''}")

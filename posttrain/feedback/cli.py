"""The feedback commands: `posttrain chat`, `posttrain serve`, and `posttrain feedback import|export|show`.

posttrain/cli.py registers them; the work is in chat.py, server.py, importers.py and exporters.py,
which load inside the commands so that other commands do not pay for them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Move feedback in and out of a feedback store: import other tools' logs, export training data.")

StoreOpt = Annotated[Optional[Path], typer.Option("--feedback", help="The feedback store (SQLite) judgements go to "
                                                  "(default: feedback.sqlite in the run directory).")]
MaxNewTokensOpt = Annotated[int, typer.Option("--max-new-tokens", help="Longest answer, in tokens.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", help="Sampling temperature; 0 answers greedily.")]
TopPOpt = Annotated[float, typer.Option("--top-p", help="Nucleus sampling: keep the most likely tokens up to this probability.")]


def _sampling(max_new_tokens: int, temperature: float, top_p: float):
    from posttrain.feedback.models import Sampling

    return Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)


def chat_command(
    model: Annotated[Path, typer.Argument(help="A run's stage directory (e.g. runs/chat/align) or a model directory.")],
    feedback: StoreOpt = None,
    user: Annotated[Optional[str], typer.Option("--user", help="Your (anonymous) id in the store (default: a new random one).")] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="A system message opening the conversation.")] = None,
    max_new_tokens: MaxNewTokensOpt = 128,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 0.95,
):
    """Chat with a model in the terminal; rate (/up, /down), correct (/edit), flag (/flag) its answers."""
    from posttrain.feedback.chat import TerminalChat
    from posttrain.feedback.models import find_model
    from posttrain.feedback.store import FeedbackStore
    from posttrain.run_layout import RunLayout

    sampling = _sampling(max_new_tokens, temperature, top_p)
    source = find_model(model)
    default = RunLayout(source.directory.parent.parent if source.stage else Path(".")).feedback_store
    store = FeedbackStore(feedback or default)
    TerminalChat(source, store, sampling, user or f"cli-{uuid.uuid4().hex[:12]}", system).run()


def serve_command(
    run: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/chat.")],
    models: Annotated[Optional[str], typer.Option("--models", help="Stages to serve, comma-separated, e.g. sft,align "
                                                  "(default: every policy stage with a model). Two or more enable the arena.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any but 127.0.0.1/localhost needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = 8765,
    feedback: StoreOpt = None,
    token: Annotated[Optional[str], typer.Option("--token", envvar="POSTTRAIN_SERVE_TOKEN", show_envvar=True,
                                                 help="A token every request must carry; open the page as /?token=T.")] = None,
    max_new_tokens: MaxNewTokensOpt = 128,
    temperature: TemperatureOpt = 0.7,
    top_p: TopPOpt = 0.95,
):
    """A local web page to chat with a run's models, compare two anonymously, judge answers and download the feedback."""
    from posttrain.feedback.server import serve

    names = [name.strip() for name in models.split(",") if name.strip()] if models is not None else None
    serve(run, names, host, port, feedback, token, _sampling(max_new_tokens, temperature, top_p))


@app.command("export")
def export_command(
    store: Annotated[Path, typer.Argument(help="A feedback store (SQLite) written by chat, serve or import.")],
    format: Annotated[str, typer.Option("--format", "-f", help="thumbs, pairs, kto (posttrain data: reads them) or openai "
                                        "(OpenAI preference fine-tuning).")] = "thumbs",
    output: Annotated[Path, typer.Option("--output", "-o", help="The JSONL file to write.")] = ...,
    max_pairs_per_prompt: Annotated[int, typer.Option("--max-pairs-per-prompt", help="pairs/openai: most pairs per conversation.")] = 8,
    refusal_for_flagged: Annotated[Optional[str], typer.Option("--refusal-for-flagged", help=(
        "Red-teaming: an answer flagged unsafe without a correction gets this as the answer it should have given "
        "(liked, and preferred to the flagged one), e.g. \"I can't help with that.\"."))] = None,
):
    """Write the store's judgements as training data a recipe's data: can read."""
    from posttrain.errors import did_you_mean
    from posttrain.feedback.exporters import FORMATS, export, write_jsonl
    from posttrain.feedback.store import FeedbackError, FeedbackStore

    if format not in FORMATS:
        raise FeedbackError(f"--format '{format}' is unknown{did_you_mean(format, FORMATS)}; use one of: {', '.join(FORMATS)}")
    if max_pairs_per_prompt < 1:
        raise FeedbackError(f"--max-pairs-per-prompt must be at least 1, got {max_pairs_per_prompt}")
    result = export(FeedbackStore(store, create=False).judgements(), format, max_pairs_per_prompt, refusal_for_flagged)
    write_jsonl(result.rows, output)
    print(result.line(output))


@app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="An Open WebUI feedback export (.json) or a Chatbot Arena / FastChat vote log (.jsonl).")],
    source: Annotated[str, typer.Option("--from", help="openwebui or arena.")] = ...,
    output: Annotated[Path, typer.Option("--output", "-o", help="The feedback store to add to (created when missing).")] = ...,
):
    """Add another tool's feedback log to a feedback store; every item is imported or counted as skipped with its reason."""
    from posttrain.feedback.importers import import_file

    result = import_file(file, source, output)
    print(result.line(output))


@app.command("show")
def show_command(
    store: Annotated[Path, typer.Argument(help="A feedback store (SQLite).")],
    recent: Annotated[int, typer.Option("--recent", help="How many of the newest judgements to list.")] = 5,
):
    """Counts per model and kind, and the newest judgements."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from posttrain.feedback.store import FeedbackStore

    summary = FeedbackStore(store, create=False).summary(recent=recent)
    console = Console()
    table = Table(title=f"{store}: {summary['total']} judgements")
    labels = ("up", "down", "edit", "flag", "arena")
    for column in ("model", *labels):
        table.add_column(column)
    for model, counts in summary["per_model"].items():
        table.add_row(escape(model), *(str(counts.get(label, 0)) for label in labels))
    console.print(table)
    for item in summary["recent"]:
        what = {1: "up", -1: "down"}.get(item.get("rating"), item["kind"])
        console.print(f"#{item['id']} {item['created_at'][:19]} {what} {escape(str(item['model']))}: {escape(item['question'][:70])!r}")

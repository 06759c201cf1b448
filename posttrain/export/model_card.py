"""The model card (README.md) every export carries: YAML front matter a hub reads, and the same facts in words.

From the run directory only: the base model, each stage of the lineage (kind, settings, fingerprint) from
its stage.json, the data each stage read with its row accounting, the evaluation table with standard errors
and the release-gate verdict from results.json (`posttrain.results`), and the intended use that follows from
the run's profile. Numbers are copied, never recomputed, so the card says what results.json says (the front
matter in full precision, the tables rounded to 4 places). Secrets are masked (posttrain.secrets) and
credential-like settings left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from posttrain.export.source import StageSource
from posttrain.model_store import is_hub_id
from posttrain.results import RunResults, load_results
from posttrain.secrets import redact

# Settings shown in the lineage table (all of them are in the front matter); the rest are defaults or plumbing.
HEADLINE_SETTINGS = ("lora", "epochs", "max_steps", "learning_rate", "batch_size", "gradient_accumulation_steps", "max_length",
                     "lr_scheduler", "warmup_ratio", "beta", "sft_weight", "kl_coef", "precision")
_CREDENTIAL_KEY = re.compile(r"(api[_-]?key|token|secret|password)$", re.IGNORECASE)
INTENDED_USE = {
    "internal": "Internal use: trained under the `internal` profile, for evaluation and internal assistants; not released to the public.",
    "public": "Public release candidate: trained under the `public` profile, and released only when its release gates pass (below).",
}


def _without_credentials(value):
    if isinstance(value, dict):
        return {k: _without_credentials(v) for k, v in value.items() if not (_CREDENTIAL_KEY.search(str(k)) and v)}
    if isinstance(value, list):
        return [_without_credentials(v) for v in value]
    return value


def read_run_results(source: StageSource) -> RunResults | None:
    try:
        return load_results(source.layout.results)
    except FileNotFoundError:
        return None


def card_metadata(source: StageSource, results: RunResults | None, export_format: str, files: list[str]) -> dict:
    """The front matter: what a hub indexes (base_model, library, tags, model-index) and posttrain's record."""
    kinds = [m.get("kind") for m in source.lineage]
    lora = source.has_adapter
    library = {"adapter": "peft", "gguf": None}.get(export_format, "transformers")
    meta: dict = {}
    if is_hub_id(source.base):
        meta["base_model"] = source.base
    if library:
        meta["library_name"] = library
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = sorted({"posttrain", *(k for k in kinds if k), *(["lora"] if lora else []), *(["gguf"] if export_format == "gguf" else [])})
    index = _model_index(source, results)
    if index:
        meta["model-index"] = index
    meta["posttrain"] = {
        "run": source.run_name,
        "stage": source.name,
        "format": export_format,
        "files": files,
        "base": source.base,
        "profile": results.profile if results else None,
        "lineage": [{
            "stage": m.get("name"), "kind": m.get("kind"), "parent": m.get("parent"), "fingerprint": m.get("fingerprint"),
            "parent_fingerprint": m.get("parent_fingerprint"), "settings": _without_credentials(m.get("config") or {}),
            "data": m.get("data"), "versions": m.get("versions"),
        } for m in source.lineage],
        "evaluation": _evaluation_record(results),
        "release": results.release.model_dump(mode="json") if results and results.release else None,
    }
    return redact(meta)


def _model_index(source: StageSource, results: RunResults | None) -> list[dict]:
    """The exported model's scores in the hub's model-index form."""
    evaluation = results.evaluation if results else None
    scores = evaluation.models.get(source.name) if evaluation else None
    if scores is None:
        return []
    entries = []
    for task, task_scores in scores.tasks.items():
        # Only the keys the hub's model-index schema allows (it refuses a README with others); standard errors
        # are in posttrain.evaluation.
        metrics = [{"type": metric, "name": f"{task}/{metric}", "value": value} for metric, value in task_scores.metrics.items()]
        entries.append({"task": {"type": "text-generation"}, "dataset": {"name": task, "type": task}, "metrics": metrics})
    return [{"name": f"{source.run_name}/{source.name}", "results": entries}]


def _evaluation_record(results: RunResults | None) -> dict | None:
    evaluation = results.evaluation if results else None
    if evaluation is None:
        return None
    return {"stage": results.evaluation_stage(), "settings": evaluation.settings,
            "models": {m: {task: t.model_dump(mode="json") for task, t in s.tasks.items()} for m, s in evaluation.models.items()}}


def render_card(source: StageSource, export_format: str, files: list[str]) -> str:
    results = read_run_results(source)
    meta = card_metadata(source, results, export_format, files)
    lines = [f"# {source.run_name}/{source.name}", "",
             f"A {source.manifest.get('kind')} model trained with posttrain from **{source.base}**, exported as **{export_format}** "
             f"({', '.join(files)}).", ""]
    lines += ["## Intended use", "", _intended_use(results), ""]
    lines += _how_to_load(source, export_format, files)
    lines += _lineage_section(source)
    lines += _data_section(source)
    lines += _evaluation_section(results)
    lines += _release_section(results)
    body = "\n".join(lines).rstrip() + "\n"
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return redact(f"---\n{front}---\n\n{body}")


def _intended_use(results: RunResults | None) -> str:
    profile = results.profile if results else None
    if profile in INTENDED_USE:
        return INTENDED_USE[profile]
    if profile:
        return f"Trained under the `{profile}` profile of its recipe; see the release verdict below before using it outside that purpose."
    return "Trained without a profile (all of the recipe's stages); not judged for release."


def _how_to_load(source: StageSource, export_format: str, files: list[str]) -> list[str]:
    code = {
        "merged": "from transformers import AutoModelForCausalLM, AutoTokenizer\nmodel = AutoModelForCausalLM.from_pretrained(DIR)\ntokenizer = AutoTokenizer.from_pretrained(DIR)",
        "adapter": "from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(DIR)  # loads the base named in adapter_config.json",
        "gguf": f"from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=\"{files[0] if files else ''}\")\n"
                f"# or with llama.cpp: llama-cli -m {files[0] if files else ''}",
    }[export_format]
    return ["## How to load", "", "```python", code, "```", ""]


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _setting(value) -> str:
    if isinstance(value, dict):  # e.g. lora: r=8 alpha=16 ...
        return " ".join(f"{k}={_setting(v)}" for k, v in value.items() if v not in (None, False))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _lineage_section(source: StageSource) -> list[str]:
    lines = ["## Lineage", "", f"Base model: `{source.base}`.", "", "| stage | kind | from | fingerprint | settings |", "|---|---|---|---|---|"]
    for m in source.lineage:
        config = _without_credentials(m.get("config") or {})
        settings = ", ".join(f"{k}={_setting(config[k])}" for k in HEADLINE_SETTINGS if config.get(k) not in (None, {}, -1))
        lines.append(f"| {m.get('name')} | {m.get('kind')} | {m.get('parent')} | `{m.get('fingerprint')}` | {settings} |")
    return lines + [""]


def _data_section(source: StageSource) -> list[str]:
    lines = ["## Training data", "", "| stage | source | rows read | rows used | examples | dropped |", "|---|---|---|---|---|---|"]
    for m in source.lineage:
        data = m.get("data") or {}
        dropped = ", ".join(f"{reason} {count}" for reason, count in (data.get("dropped") or {}).items()) or "0"
        source_name = data.get("source") or ", ".join(m.get("data_sources") or []) or "—"
        lines.append(f"| {m.get('name')} | {source_name} | {data.get('rows_read', '—')} | {data.get('rows_used', '—')} | "
                     f"{data.get('examples', '—')} | {dropped} |")
    return lines + [""]


def _evaluation_section(results: RunResults | None) -> list[str]:
    evaluation = results.evaluation if results else None
    if evaluation is None or not evaluation.models:
        return ["## Evaluation", "", "The run has no evaluation (no results.json with an evaluation stage).", ""]
    models = list(evaluation.models)
    lines = ["## Evaluation", "", f"From results.json (stage `{results.evaluation_stage()}`): mean ± standard error, n examples per task.", "",
             "| task/metric | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    rows: dict[str, dict[str, str]] = {}
    for model, scores in evaluation.models.items():
        for task, task_scores in scores.tasks.items():
            for metric, value in task_scores.metrics.items():
                stderr = task_scores.stderr.get(metric)
                cell = _fmt(value) + (f" ± {_fmt(stderr)}" if stderr is not None else "") + (f" (n={task_scores.n})" if task_scores.n is not None else "")
                rows.setdefault(f"{task}/{metric}", {})[model] = cell
    for key, cells in rows.items():
        lines.append(f"| {key} | " + " | ".join(cells.get(m, "—") for m in models) + " |")
    for rate in evaluation.win_rates.values():
        lines.append("")
        lines.append(f"Win rate {rate.candidate} vs {rate.baseline}: {_fmt(rate.win_rate)} (95% CI {_fmt(rate.ci95[0])}–{_fmt(rate.ci95[1])}; "
                     f"W/T/L {rate.wins}/{rate.ties}/{rate.losses})")
    return lines + [""]


def _release_section(results: RunResults | None) -> list[str]:
    release = results.release if results else None
    if release is None:
        return ["## Release", "", "No release gates were judged for this run.", ""]
    verdict = "RELEASABLE: every gate passed" if release.releasable else f"BLOCKED: {len(release.failed)} of {len(release.gates)} gates failed"
    lines = ["## Release", "", f"{verdict} (profile {release.profile}).", "", "| gate | value | passed |", "|---|---|---|"]
    for gate in release.gates:
        lines.append(f"| {gate.gate} | {_fmt(gate.value) if gate.value is not None else gate.reason or '—'} | {'yes' if gate.passed else 'no'} |")
    return lines + [""]


def write_card(source: StageSource, directory: Path, export_format: str, files: list[str]) -> Path:
    path = Path(directory) / "README.md"
    path.write_text(render_card(source, export_format, files), encoding="utf-8")
    return path

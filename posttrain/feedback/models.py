"""The models people chat with: found from a run's stage directory or a model directory, loaded
once, and asked for answers (streamed token by token through transformers' TextIteratorStreamer).

Every answer carries its provenance into the feedback store: the name people see, the stage
that made the model and that stage's fingerprint (from its stage.json; a plain model
directory is identified by its files), and the sampling settings used.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from posttrain.feedback.store import Answer, FeedbackError
from posttrain.run_layout import MANIFEST_FILENAME, MODEL_DIRNAME


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 128
    temperature: float = 0.7  # 0: greedy
    top_p: float = 0.95

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise FeedbackError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise FeedbackError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise FeedbackError(f"top_p must be in (0, 1], got {self.top_p}")

    def record(self) -> dict:
        return {**asdict(self), "do_sample": self.temperature > 0}


@dataclass(frozen=True)
class ModelSource:
    """Where a chat model lives and what identifies it."""

    name: str
    directory: Path  # what from_pretrained reads
    stage: str | None
    fingerprint: str


def find_model(path: Path | str) -> ModelSource:
    """A stage directory (<run>/<stage>, with stage.json and a committed model/) or a model directory."""
    from posttrain.atomic import is_committed

    path = Path(path)
    if (path / MANIFEST_FILENAME).is_file():
        manifest = _manifest(path / MANIFEST_FILENAME)
        name = manifest.get("name") or path.name
        if manifest.get("role") not in (None, "policy"):
            raise FeedbackError(f"{path}: stage '{name}' is a {manifest.get('role')} stage; chat with a policy stage "
                                f"(sft, dpo, ...) or a model directory")
        if not is_committed(path / MODEL_DIRNAME):
            raise FeedbackError(f"{path}: stage '{name}' has no committed model in {path / MODEL_DIRNAME} "
                                f"(status: {manifest.get('status', 'unknown')}); run its recipe first")
        return ModelSource(name, path / MODEL_DIRNAME, name, str(manifest.get("fingerprint") or ""))
    if (path / "config.json").is_file():
        if (path.parent / MANIFEST_FILENAME).is_file():  # <run>/<stage>/model named directly
            return find_model(path.parent)
        from posttrain.model_store import directory_fingerprint

        return ModelSource(path.name, path, None, directory_fingerprint(path))
    what = "no such directory" if not path.exists() else "neither a stage directory (stage.json) nor a model directory (config.json)"
    raise FeedbackError(f"{path}: {what}; give a run's stage directory such as runs/chat/align, or a model directory")


def run_models(run: Path | str, names: list[str] | None = None) -> list[ModelSource]:
    """The policy stages of a run with committed models (parents before children), or the named ones."""
    run = Path(run)
    if not run.is_dir():
        raise FeedbackError(f"{run}: no such run directory")
    if names:
        for name in names:  # every name checked before any model is
            if not (run / name / MANIFEST_FILENAME).is_file():
                from posttrain.errors import did_you_mean

                stages = sorted(p.parent.name for p in run.glob(f"*/{MANIFEST_FILENAME}"))
                raise FeedbackError(f"--models: '{name}' is not a stage of {run}{did_you_mean(name, stages)}; "
                                    f"its stages: {', '.join(stages) or 'none'}")
        if len(set(names)) != len(names):
            raise FeedbackError(f"--models names a stage twice: {', '.join(names)}")
        return [find_model(run / name) for name in names]
    manifests = {path.parent.name: _manifest(path) for path in run.glob(f"*/{MANIFEST_FILENAME}")}
    found = []
    for name in sorted(manifests, key=lambda name: (_lineage_depth(manifests, name), name)):
        path, manifest = run / name / MANIFEST_FILENAME, manifests[name]
        if manifest.get("role") == "policy" and (path.parent / MODEL_DIRNAME).is_dir():
            try:
                found.append(find_model(path.parent))
            except FeedbackError:
                continue  # a policy stage without a committed model: nothing to chat with
    if not found:
        raise FeedbackError(f"{run}: no policy stage with a committed model; run a recipe into it first (posttrain run)")
    return found


def _lineage_depth(manifests: dict[str, dict], name: str) -> int:
    """How many of the run's stages lie above this one: a parent always runs before its child.

    The order is lineage, then name; start times only have a second's resolution, so two short
    stages could tie and come back in the file system's order."""
    depth, seen = 0, {name}
    while (parent := manifests.get(name, {}).get("parent")) in manifests and parent not in seen:
        depth, name = depth + 1, parent
        seen.add(parent)
    return depth


def _manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FeedbackError(f"{path}: unreadable stage manifest ({e})") from None
    if not isinstance(data, dict):
        raise FeedbackError(f"{path}: a stage manifest is a JSON object")
    return data


class ChatModel:
    """A loaded model and tokenizer; `reply` answers a conversation. One answer at a time per model
    (a lock), since answers from several threads would only compete for the same cores."""

    def __init__(self, source: ModelSource):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.source = source
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a loading bar per model would clutter the chat
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source.directory)
            # safetensors only: never unpickle weights from a .bin file.
            self.model = AutoModelForCausalLM.from_pretrained(source.directory, use_safetensors=True,
                                                              dtype=torch.float32).to(self.device).eval()
        except OSError as e:
            raise FeedbackError(f"{source.directory}: cannot load the model ({str(e).splitlines()[0]})") from None
        if not self.tokenizer.chat_template:
            raise FeedbackError(f"{source.directory}: the tokenizer has no chat template; chat needs a chat model")
        limits = [n for n in (getattr(self.model.config, "max_position_embeddings", None), self.tokenizer.model_max_length)
                  if isinstance(n, int) and 0 < n < 10**7]
        self.context = min(limits) if limits else 4096
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.source.name

    def _prompt_ids(self, conversation: list[dict], max_new_tokens: int) -> tuple[list[int], int]:
        """The rendered prompt, oldest turns left out until it fits the context; how many were left out."""
        budget = self.context - max_new_tokens
        messages, dropped = list(conversation), 0
        while True:
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
            if len(ids) <= budget:
                return ids, dropped
            first = 1 if messages[0]["role"] == "system" else 0
            if len(messages) - first <= 1:
                raise FeedbackError(f"the message is too long for model '{self.name}': {len(ids)} tokens with the "
                                    f"chat template, and its context holds {budget} besides the {max_new_tokens} to answer")
            # Leave out the oldest exchange (a user turn and the answer to it).
            del messages[first:first + 2]
            dropped += 2

    def reply(self, conversation: list[dict], sampling: Sampling, on_text: Callable[[str], None] | None = None) -> tuple[Answer, int]:
        """The model's answer to `conversation` (streamed to `on_text` as it comes) and how many
        earlier turns were left out to fit the context."""
        import torch
        from transformers import TextIteratorStreamer

        max_new = min(sampling.max_new_tokens, max(1, self.context // 2))
        ids, dropped = self._prompt_ids(conversation, max_new)
        input_ids = torch.tensor([ids], device=self.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        options = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                       max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                       do_sample=sampling.temperature > 0)
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p)
        failure: list[BaseException] = []

        def generate():
            try:
                with torch.no_grad():
                    self.model.generate(**options)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                failure.append(e)
                streamer.end()  # unblock the reader

        parts = []
        with self._lock:
            worker = threading.Thread(target=generate, daemon=True)
            worker.start()
            for text in streamer:
                parts.append(text)
                if on_text is not None and text:
                    on_text(text)
            worker.join()
        if failure:
            raise failure[0]
        answer = Answer(conversation, "".join(parts).strip(), model=self.name, stage=self.source.stage,
                        fingerprint=self.source.fingerprint, sampling={**sampling.record(), "max_new_tokens": max_new})
        return answer, dropped

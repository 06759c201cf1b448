"""Where everything of a run lives on disk: the one module that knows the run directory's layout.

    <run>/
      .lock                 one run at a time (pipeline.RunLock)
      .builtin/             built-in base models, materialised once per seed
      .imported/<stem>/     a .gguf base, de-quantized once into a model directory (posttrain.gguf_import)
      <stage>/stage.json    the stage's manifest: status, fingerprint, lineage, data, metrics
      <stage>/model/        a model stage's weights + tokenizer + chat template (committed atomically)
      <stage>/adapter/      LoRA stages: the adapter alone
      <stage>/data.jsonl    data stages: the rows later stages read with `data: stage:<name>`
      results.json          the typed run results (posttrain.results)
      posttrain.log         every line the run printed, timestamped (appended by each run)
      feedback.sqlite       judgements of the run's models (`posttrain chat` / `serve` default; posttrain.feedback)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST_FILENAME = "stage.json"
MODEL_DIRNAME = "model"
ADAPTER_DIRNAME = "adapter"
DATA_FILENAME = "data.jsonl"
RESULTS_FILENAME = "results.json"
LOG_FILENAME = "posttrain.log"
FEEDBACK_FILENAME = "feedback.sqlite"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def manifest(self, stage: str) -> Path:
        return self.root / stage / MANIFEST_FILENAME

    def model_dir(self, stage: str) -> Path:
        return self.root / stage / MODEL_DIRNAME

    def adapter_dir(self, stage: str) -> Path:
        return self.root / stage / ADAPTER_DIRNAME

    def data_file(self, stage: str) -> Path:
        return self.root / stage / DATA_FILENAME

    def builtin_dir(self, name: str) -> Path:
        return self.root / ".builtin" / name

    def imported_dir(self, name: str) -> Path:
        return self.root / ".imported" / name

    @property
    def results(self) -> Path:
        return self.root / RESULTS_FILENAME

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def log(self) -> Path:
        return self.root / LOG_FILENAME

    @property
    def feedback_store(self) -> Path:
        return self.root / FEEDBACK_FILENAME

"""The stage contract: what every stage kind, built in or from a plugin, provides.

A stage kind is a class with a `kind` name, a pydantic `Config` (validated before any
model is loaded) and a `run(ctx)` that reads its parent through `ctx.registry`, does its
work, saves its model through the registry when it trains one, and returns a
`StageResult`. The pipeline handles caching, manifests and the run directory; a stage
knows nothing about the stages around it beyond its parent's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from posttrain.data.accounting import DataAccounting
    from posttrain.progress import ProgressReporter
    from posttrain.recipe import Recipe
    from posttrain.registry import ModelRegistry


class StageConfig(BaseModel):
    """Fields every stage accepts. Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: str = Field(description="Stage kind, e.g. sft, dpo, eval.")
    description: str = Field("", description="Free text shown by `posttrain plan`.")


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="Module names, or 'all-linear'.")
    load_in_4bit: bool = Field(False, description="QLoRA: load the frozen base weights in 4-bit NF4 (bitsandbytes).")


class DataSettings(BaseModel):
    """How a stage's data is read and filtered (docs/data.md)."""

    model_config = ConfigDict(extra="forbid")

    format: str | None = Field(None, description="Force a data format instead of detecting it (e.g. thumbs, pairs, oasst).")
    on_error: Literal["fail", "skip"] = Field("fail", description="A bad row stops the run, or is skipped and counted with its reason.")
    dedupe: Literal["exact", "normalized", "none"] = "exact"
    max_tokens: int | None = Field(None, gt=0, description="Drop examples longer than this (prompt + reply, approximate tokens).")
    split: Literal["train", "test"] | None = Field(None, description="Use one side of a deterministic split by prompt.")
    test_share: float = Field(0.1, gt=0, lt=1)
    seed: int = 0
    both_votes: Literal["majority", "drop"] = Field("majority", description="A reply with up and down votes: the net vote decides, or it is dropped.")
    ties: Literal["skip", "fail"] = Field("skip", description="Equal ranks or scores: no pair, or an error naming the row.")


class TrainStageConfig(StageConfig):
    """Fields every training stage accepts (the common subset of TRL's trainer configs)."""

    from_: str | None = Field(None, alias="from", description="Parent: 'base' or an earlier training stage. Default: the previous training stage.")
    data: str = Field(description="A data file (JSONL/JSON) or a built-in source such as builtin:assistant_world/sft.")
    data_options: DataSettings = Field(default_factory=DataSettings)
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter instead of all weights.")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    max_length: int = Field(256, gt=0, description="Longest tokenized example; longer ones are truncated.")
    lr_scheduler: str = Field("linear", description="Any transformers scheduler name, e.g. linear, cosine, constant.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(5, gt=0)
    save_steps: int = Field(50, ge=0, description="Commit a resumable checkpoint every N optimizer steps (0: never).")
    keep_checkpoints: int = Field(2, gt=0, description="Committed checkpoints kept; older ones are rotated out after a new one commits.")
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="A NaN/inf loss or gradient stops the stage, or skips the step (up to max_skipped_steps).")
    max_skipped_steps: int = Field(10, ge=0)
    max_drop_share: float = Field(0.5, ge=0, le=1, description="Fail when more than this share of data rows is dropped.")


class PreferenceStageConfig(TrainStageConfig):
    """Training stages that learn from preference pairs (dpo, orpo, reward_model)."""

    max_pairs_per_prompt: int = Field(8, gt=0, description="Cap on (liked, disliked) pairs built per prompt.")


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)  # metric name -> [[step, value], ...]
    data: DataAccounting | None = None
    evaluation: dict[str, Any] | None = None  # eval stages: per-model scores and settings


@dataclass
class StageContext:
    name: str
    config: StageConfig
    parent: str | None  # registry name of the model this stage starts from
    recipe: Recipe
    stage_dir: Path
    registry: ModelRegistry
    progress: ProgressReporter
    fingerprint: str = ""  # identifies this stage's exact inputs; checkpoints are tied to it
    evaluated_models: list[str] = field(default_factory=list)  # eval stages: what to evaluate
    # Fingerprints of the stages this one reads (and `base`): lets a stage cache per-input work.
    dependency_fingerprints: dict[str, str] = field(default_factory=dict)


class Stage:
    kind: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    produces_model: ClassVar[bool] = False
    model_role: ClassVar[str] = "policy"  # "reward": a scorer, never a parent of a policy or an evaluated model

    @classmethod
    def fingerprint_inputs(cls, config: StageConfig) -> dict:
        """Content hashes of what the stage reads besides its parent (its data, by default)."""
        from posttrain.data.sources import source_digest

        data = getattr(config, "data", None)
        return {"data": source_digest(data)} if data else {}

    @classmethod
    def check_inputs(cls, config: StageConfig) -> None:
        """Called for every stage that will run, before any of them trains: fail fast on bad data."""

    def run(self, ctx: StageContext) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError


class PreferenceStage(Stage):
    """A stage trained on preference pairs: its data is converted (and checked) up front."""

    produces_model = True

    @classmethod
    def check_inputs(cls, config: PreferenceStageConfig) -> None:
        from posttrain.data.stage_data import preference_data

        preference_data(config)

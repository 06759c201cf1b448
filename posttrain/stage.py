"""The stage contract: what every stage kind, built in or from a plugin, declares and provides.

A stage kind is a class that declares
  - `kind`, the name recipes use, and `role` (a `Role`): what the rest of posttrain may do
    with its output (start from it, evaluate it, let it judge, read its data, gate on it);
  - `Config`, a pydantic model validated before any model is loaded;
  - `inputs(config)`: the names it reads (parent, evaluated models, judge, data sources, further models);
    the recipe links them, the pipeline fingerprints and resolves them;
and implements `run(ctx)`, which receives its resolved inputs (`ctx.inputs`), its
prepared data (`ctx.data`), and returns a `StageResult`. Nothing else is inferred:
the recipe, plan, pipeline, gates, compare and reports all read these declarations
(docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from posttrain import training_settings
from posttrain.data.options import DataOptions
from posttrain.training_settings import Precision, Tracker

if TYPE_CHECKING:
    from posttrain.data.accounting import DataAccounting
    from posttrain.model_store import ModelRef, ModelStore
    from posttrain.progress import ProgressReporter

BASE = "base"  # the recipe's starting model, by name, everywhere
STAGE_DATA_PREFIX = "stage:"  # `data: stage:<name>` reads what a data stage wrote


class Role(str, Enum):
    """What a stage's output is for. The recipe checks every reference against these roles."""

    POLICY = "policy"  # trains the assistant: later policy stages start from it, evaluation stages evaluate it
    REWARD = "reward"  # trains a scorer: RL and evaluation stages use it as a judge; never a parent
    EVALUATION = "evaluation"  # scores models; its result is the run's evaluation (reports, gates, compare)
    DATA = "data"  # writes `<run>/<stage>/data.jsonl`; later stages read it with `data: stage:<name>`

    @property
    def produces_model(self) -> bool:
        return self in (Role.POLICY, Role.REWARD)


class _PreviousPolicy:
    def __repr__(self) -> str:
        return "PREVIOUS_POLICY"


PREVIOUS_POLICY = _PreviousPolicy()  # parent default: the latest policy stage before this one (or base)


@dataclass(frozen=True)
class StageInputs:
    """The names a stage reads, as declared by its kind from its config."""

    parent: str | _PreviousPolicy | None = None  # the model it starts from: BASE, a policy stage, or PREVIOUS_POLICY
    evaluates: Literal["all"] | tuple[str, ...] = ()  # policy models it evaluates ("all": base and every policy stage)
    judge: str | None = None  # a reward stage, or a reward model directory
    data: tuple[str, ...] = ()  # data sources: files, builtin:..., hub names, or stage:<data stage>
    # Further chat models it loads (e.g. an eval stage's pairwise judge): each `base`, an earlier policy stage,
    # a model directory or a hub id (org/name); linked, fingerprinted and resolved like the others.
    models_read: tuple[str, ...] = ()
    # The config key each input was read from, so a bad reference names the key the user wrote.
    keys: dict[str, str] = field(default_factory=lambda: {"parent": "from", "evaluates": "models", "judge": "reward_model", "data": "data",
                                                          "models_read": "models_read"})


@dataclass
class ResolvedInputs:
    """`StageInputs` after linking and resolution: what `run` receives on its context."""

    parent: ModelRef | None = None
    evaluated: list[ModelRef] = field(default_factory=list)
    judge: ModelRef | None = None
    data_files: dict[str, Path] = field(default_factory=dict)  # stage:<name> source -> the file that stage wrote
    models_read: dict[str, ModelRef] = field(default_factory=dict)  # StageInputs.models_read: name -> its model


class StageConfig(BaseModel):
    """Fields every stage accepts. Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: str = Field(description="Stage kind, e.g. sft, dpo, eval.")
    description: str = Field("", description="Free text shown by `posttrain plan`.")


class LoraSettings(BaseModel):
    """`lora:` of a training stage. `lora: true` is LoRA with these defaults; `lora: false` (or unset) trains all weights."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(8, gt=0, description="LoRA rank.")
    alpha: int = Field(16, gt=0, description="LoRA scaling numerator (alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="Module names, or 'all-linear'.")
    load_in_4bit: bool = Field(False, description="QLoRA: load the frozen base weights in 4-bit NF4 (bitsandbytes).")


def setting_error(key: str, message: str) -> PydanticCustomError:
    """A recipe-setting problem that is one line as it stands: posttrain.recipe prints `<file>: <stage>.<key>: <message>`."""
    return PydanticCustomError("posttrain_setting", "{message}", {"message": message, "key": key})


class TrainStageConfig(StageConfig):
    """Fields every training stage accepts (the common subset of TRL's trainer configs)."""

    # What a stage kind declares about its trainer (set by the kind's Config subclass):
    trl_config: ClassVar[str | None] = None  # its TRL config class, 'module:Class'; None: `trainer_args` does not apply
    trl_fields: ClassVar[dict[str, str]] = {}  # TRL config fields the kind sets from its own keys -> that key
    held_out_loss: ClassVar[bool] = False  # it computes a loss on `eval_share`/`eval_data` during training
    held_out_hint: ClassVar[str] = ""  # why not, when it does not

    from_: str | None = Field(None, alias="from", description="Parent: 'base' or an earlier training stage. Default: the previous training stage.")
    data: str | list[str] = Field(description=(
        "A data source: a file (JSONL, JSON, CSV, Parquet), a feedback store (.sqlite), a built-in source such as "
        "builtin:assistant_world/sft, a Hub dataset; or a list of them, each read and converted on its own, then joined."))
    data_options: DataOptions = Field(default_factory=DataOptions)
    lora: LoraSettings | None = Field(None, description="Train a LoRA adapter instead of all weights: true (r=8, alpha=16, dropout 0, all-linear), "
                                                        "a mapping of LoRA settings, or false/unset for all weights.")
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
    optimizer: str = Field("adamw_torch", description="Any transformers optimizer name (TrainingArguments.optim), e.g. adamw_torch_fused, adafactor, adamw_8bit.")
    precision: Precision = Field("auto", description="auto: bf16 where the hardware computes in it natively (CUDA GPU, or a CPU with AVX512-BF16/AMX), "
                                                     "else fp32; fp16 needs CUDA. The precision used is recorded in the stage's metrics.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass: less memory for more compute "
                                                            "(transformers' activation_checkpointing).")
    logging_steps: int = Field(5, gt=0)
    report_to: list[Tracker] = Field(default_factory=list, description="Experiment trackers: none, tensorboard, wandb, mlflow, trackio, or a list; "
                                                                       "one tracker run per stage, named <run>/<stage>.")
    eval_share: float | None = Field(None, gt=0, lt=1, description="Hold out this share of the stage's data (split by conversation) and log its loss (eval_loss) every eval_steps.")
    eval_data: str | None = Field(None, description="A separate data source whose loss (eval_loss) is logged every eval_steps; read with the stage's data_options.")
    eval_steps: int | None = Field(None, gt=0, description="Compute the held-out loss every N optimizer steps (default: logging_steps).")
    trainer_args: dict[str, Any] = Field(default_factory=dict, description="Further fields of the stage's TRL config (SFTConfig, DPOConfig, ...), passed through; "
                                                                           "checked against that class when the recipe loads.")
    save_steps: int = Field(50, ge=0, description="Commit a resumable checkpoint every N optimizer steps (0: never).")
    keep_checkpoints: int = Field(2, gt=0, description="Committed checkpoints kept; older ones are rotated out after a new one commits.")
    on_nonfinite: Literal["stop", "skip"] = Field("stop", description="A NaN/inf loss or gradient stops the stage, or skips the step (up to max_skipped_steps).")
    max_skipped_steps: int = Field(10, ge=0)
    max_drop_share: float = Field(0.5, ge=0, le=1, description="Fail when more than this share of data rows is dropped.")

    @field_validator("data")
    @classmethod
    def _sources_listed_once(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list):
            if not value:
                raise setting_error("data", "the list of data sources is empty; name at least one file or source")
            repeated = next((s for i, s in enumerate(value) if s in value[:i]), None)
            if repeated is not None:
                raise setting_error("data", f"'{repeated}' is listed twice; name each source once")
        return value

    @property
    def data_sources(self) -> tuple[str, ...]:
        """`data` as a tuple of sources, one or several."""
        return (self.data,) if isinstance(self.data, str) else tuple(self.data)

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_switch(cls, value):
        if value is True:
            return {}
        if value is False:
            return None
        return value

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers(cls, value):
        trackers = [value] if isinstance(value, str) else value
        if not isinstance(trackers, list):
            return value  # pydantic says what type it wants
        for tracker in trackers:
            problem = training_settings.tracker_problem(tracker) if tracker in training_settings.TRACKER_PACKAGES else None
            if problem:
                raise setting_error("report_to", problem)
        return [t for t in trackers if t != "none"]

    @field_validator("trainer_args")
    @classmethod
    def _trainer_args_posttrain_sets(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # What needs no import; the names against TRL's config class (and `optimizer` against transformers')
        # are checked before any stage trains (training_settings.check_before_training, from prepare_data).
        if not value:
            return value
        if cls.trl_config is None:
            raise setting_error("trainer_args", f"stage kind '{info.data.get('kind')}' does not train with a TRL trainer, so trainer_args does not apply")
        ours = [f.alias or name for name, f in cls.model_fields.items()]
        for key in value:
            problem = training_settings.trainer_args_problem(str(key), cls.trl_fields, ours)
            if problem:
                raise setting_error(f"trainer_args.{key}", problem)
        return value

    @model_validator(mode="after")
    def _held_out_loss(self):
        if self.eval_share is not None and self.eval_data is not None:
            raise setting_error("eval_data", "eval_share and eval_data are both set; hold out a share of data or name a separate file, not both")
        asked = next((k for k in ("eval_share", "eval_data", "eval_steps") if getattr(self, k) is not None), None)
        if asked and not self.held_out_loss:
            raise setting_error(asked, f"stage kind '{self.kind}' computes no held-out loss during training{self.held_out_hint}")
        if self.eval_steps is not None and self.eval_share is None and self.eval_data is None:
            raise setting_error("eval_steps", "nothing to evaluate; set eval_share (e.g. 0.1) or eval_data (a file) too")
        return self

    @property
    def evaluates_held_out(self) -> bool:
        return self.eval_share is not None or self.eval_data is not None


class PreferenceStageConfig(TrainStageConfig):
    """Training stages that learn from preference pairs (dpo, orpo, reward_model)."""

    max_pairs_per_prompt: int = Field(8, gt=0, description="Cap on (liked, disliked) pairs built per prompt.")


@dataclass
class PreparedData:
    """A stage's data, read, checked and converted once (before anything trains) and handed to `run`."""

    examples: list[dict]
    accounting: DataAccounting
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. KTO's class weights


@dataclass
class StageResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)  # metric name -> [[step, value], ...]
    data: DataAccounting | None = None
    evaluation: Any = None  # evaluation stages: a posttrain.results.Evaluation


@dataclass
class StageContext:
    name: str
    config: StageConfig
    stage_dir: Path
    store: ModelStore
    progress: ProgressReporter
    inputs: ResolvedInputs
    seed: int = 0
    fingerprint: str = ""  # identifies this stage's exact inputs; checkpoints are tied to it
    data: PreparedData | None = None
    data_output: Path | None = None  # data stages: write your rows here (JSONL, atomically: posttrain.atomic.write_text_atomic)

    @property
    def parent(self) -> ModelRef | None:
        return self.inputs.parent


class Stage:
    kind: ClassVar[str]
    role: ClassVar[Role]
    Config: ClassVar[type[StageConfig]] = StageConfig
    # Subdirectories of the stage's directory whose entries are keyed by their own content (e.g. an evaluation cache):
    # a run that takes stages from an earlier run (--reuse) also takes these when the stage itself must run again.
    shared_caches: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def inputs(cls, config: StageConfig) -> StageInputs:
        """The names this stage reads. Default: nothing."""
        return StageInputs()

    @classmethod
    def fingerprint_inputs(cls, config: StageConfig) -> dict:
        """Content hashes of the files the stage reads (its data sources; `stage:` sources are
        covered by the producing stage's fingerprint)."""
        from posttrain.data.sources import source_digest

        return {"data": {s: source_digest(s) for s in cls.inputs(config).data if not s.startswith(STAGE_DATA_PREFIX)}}

    @classmethod
    def measured_metrics(cls, config: StageConfig) -> list[str] | None:
        """Evaluation stages: the `task/metric` names release gates may name (None: not known before the run)."""
        return None

    @classmethod
    def prepare_data(cls, config: StageConfig, data_files: dict[str, Path], seed: int) -> PreparedData | None:
        """Read, check and convert the stage's data once. Called before any stage trains (or, for data
        a data stage writes, just before this stage runs); the result arrives as `ctx.data`."""
        return None

    def run(self, ctx: StageContext) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError


class TrainingStage(Stage):
    """A stage that trains a model from a parent on one data source (the TrainStageConfig fields)."""

    role = Role.POLICY

    @classmethod
    def inputs(cls, config: TrainStageConfig) -> StageInputs:
        # eval_data is read too: checked, fingerprinted and resolved (stage:<name>) like data.
        return StageInputs(parent=config.from_ or PREVIOUS_POLICY, data=(*config.data_sources, *([config.eval_data] if config.eval_data else [])))


class PreferenceStage(TrainingStage):
    """A policy trained on preference pairs (dpo, orpo)."""

    @classmethod
    def prepare_data(cls, config: PreferenceStageConfig, data_files: dict[str, Path], seed: int) -> PreparedData:
        from posttrain.data.training_data import preference_data

        return preference_data(config, data_files, seed=seed)

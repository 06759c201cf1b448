"""The model store: the one place that resolves a model's name, loads it and saves it.

`resolve(name)` is the only resolver from a name to a `ModelRef`, in this order:
  1. `base`: the recipe's starting model (`builtin:<name>`, a local directory, a hub id, or a
     `.gguf` file, also as `package:<pkg>/<file>`: imported once per run directory into
     `<run>/.imported/<stem>/` by posttrain.gguf_import, so its location is that directory);
  2. a stage of this run's plan (registered by the pipeline with its role and fingerprint):
     `<run>/<stage>/model/`;
  3. a committed model of an earlier stage in this run directory (for tools and tests that
     open a finished run without its recipe);
  4. an existing directory outside the run (e.g. a reward model trained elsewhere);
  5. a hub id (`org/name`), identified by its name (loaded from the local hub cache, or
     downloaded unless HF_HUB_OFFLINE=1: posttrain.environment).
The tokenizer and chat template travel with each saved model, and every hand-over between
stages checks they did not drift.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from posttrain import gguf_import
from posttrain.atomic import atomic_directory, is_committed
from posttrain.data.sources import BUILTIN_PREFIX  # one spelling for built-in models and data
from posttrain.environment import hub_cache_first
from posttrain.errors import PosttrainError, StageError
from posttrain.run_layout import RunLayout
from posttrain.stage import BASE, Role


@dataclass(frozen=True)
class ModelRef:
    """A resolved model name: what to load, what it is for, and what identifies its content."""

    name: str  # as recipes name it: base, a stage, or a directory
    location: str  # what from_pretrained reads: a directory, builtin:<name> or a hub id
    role: Role
    fingerprint: str  # the producing stage's fingerprint (base: recipe base + seed; a directory: its files)
    manifest: Path | None = None  # the producing stage's stage.json, when a stage of a run made it

    def __str__(self) -> str:
        return self.name


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that changes how text becomes tokens and chats become text."""
    identity = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def directory_fingerprint(directory: Path) -> str:
    """Identity of a model directory outside the run (names, sizes, modification times): cheap, and
    it changes whenever the weights are rewritten."""
    h = hashlib.sha256(str(Path(directory).resolve()).encode())
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            stat = path.stat()
            h.update(f"{path.relative_to(directory)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def is_hub_id(name: str) -> bool:
    """`org/name` that is not a path on this machine (a hub repository id)."""
    return name.count("/") == 1 and not name.startswith((".", "/")) and not Path(name).exists() and not name.endswith(".gguf")


class ModelStore:
    def __init__(self, run_dir: Path, base: str, trust_remote_code: bool = False, seed: int = 0, chat_template: str | None = None):
        self.layout = RunLayout(Path(run_dir))
        self.base = base
        self.trust_remote_code = trust_remote_code
        self.seed = seed
        self.chat_template = chat_template  # Jinja text applied to the base's tokenizer (None: keep the model's)
        self._stages: dict[str, tuple[Role, str]] = {}  # this run's model stages: name -> (role, fingerprint)
        self._gguf: Path | None = gguf_import.gguf_file(base)  # a .gguf base (package: resolved), else None
        self._gguf_ready = False  # imported (or found imported) by this store

    @property
    def imported_dir(self) -> Path | None:
        """Where a .gguf base is imported to (None for any other base)."""
        return self.layout.imported_dir(self._gguf.stem) if self._gguf is not None else None

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    @property
    def base_fingerprint(self) -> str:
        # A .gguf base is its content: moving the file or naming it through package: changes nothing.
        base = f"gguf:{gguf_import.file_digest(self._gguf, self.imported_dir)}" if self._gguf is not None else self.base
        identity = f"{base}|seed={self.seed}" + (f"|template={self.chat_template}" if self.chat_template is not None else "")
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    def register_stage(self, name: str, role: Role, fingerprint: str) -> None:
        """The pipeline announces each planned model stage, so its name resolves with role and fingerprint."""
        self._stages[name] = (role, fingerprint)

    # -- resolving ------------------------------------------------------------
    def resolve(self, name: str | ModelRef, expected: Role = Role.POLICY) -> ModelRef:
        """The one resolver from a name to a model (order in the module docstring)."""
        if isinstance(name, ModelRef):
            return name
        if name == BASE:
            location = str(self.imported_dir) if self._gguf is not None else gguf_import.base_path(self.base)
            return ModelRef(BASE, location, Role.POLICY, self.base_fingerprint)
        directory = self.layout.model_dir(name)
        if name in self._stages:
            role, fingerprint = self._stages[name]
            return ModelRef(name, str(directory), role, fingerprint, self.layout.manifest(name))
        if is_committed(directory):
            return ModelRef(name, str(directory), expected, directory_fingerprint(directory), self.layout.manifest(name))
        if Path(name).is_dir():
            return ModelRef(name, name, expected, directory_fingerprint(Path(name)))
        if is_hub_id(name):
            return ModelRef(name, name, expected, hashlib.sha256(f"hub:{name}".encode()).hexdigest()[:16])
        raise StageError(f"model '{name}' has no committed checkpoint at {directory}; run its stage first")

    def model_dir(self, name: str) -> Path:
        return self.layout.model_dir(name)

    def _source(self, ref: ModelRef) -> str:
        if ref.name in self._stages and not is_committed(Path(ref.location)):
            raise StageError(f"model '{ref.name}' has no committed checkpoint at {ref.location}; run its stage first")
        if self._gguf is not None and ref.location == str(self.imported_dir):
            self._import_base()
        return ref.location

    def _import_base(self) -> None:
        """A .gguf base becomes a model directory the first time it is loaded (reused after, while its content is the same)."""
        if not self._gguf_ready:
            gguf_import.ensure_imported(self._gguf, self.imported_dir, self.base)
            self._gguf_ready = True

    # -- loading --------------------------------------------------------------
    def load_tokenizer(self, name: str | ModelRef) -> PreTrainedTokenizerBase:
        ref = self.resolve(name)
        source = self._source(ref)
        if source.startswith(BUILTIN_PREFIX):
            from posttrain.embedded.model import load_embedded_tokenizer

            tokenizer = load_embedded_tokenizer()
        else:
            tokenizer = self._from_pretrained(AutoTokenizer, source)
        if ref.name == BASE and self.chat_template is not None:
            # Applied once, here; every stage saves the tokenizer it was given, so it travels on.
            tokenizer.chat_template = self.chat_template
        return tokenizer

    def check_base_chat_template(self) -> None:
        """Fail with one line, before anything trains, when the base has no chat template."""
        if not self.load_tokenizer(BASE).chat_template:
            from posttrain.chat_templates import BUILTIN_TEMPLATES

            raise PosttrainError(f"base '{self.base}' has no chat template; set chat_template: in the recipe to one of "
                                 f"{', '.join(BUILTIN_TEMPLATES)} or a .jinja file (docs/recipes.md)")

    def load_model(self, name: str | ModelRef, dtype: torch.dtype = torch.float32, head: str = "causal", quantize: str | None = None) -> PreTrainedModel:
        """A model by registry name. head="reward" puts a fresh one-output score head on the
        same backbone (what a reward model trains); quantize="4bit" loads it for QLoRA."""
        source = self._source(self.resolve(name))
        if source.startswith(BUILTIN_PREFIX):
            source = self._materialize_builtin(source)
        kwargs = {"dtype": dtype}
        if quantize == "4bit":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
        if head == "reward":
            from transformers import AutoModelForSequenceClassification

            # The score head is new: seed its initialisation so runs repeat.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                return self._from_pretrained(AutoModelForSequenceClassification, source, num_labels=1, **kwargs)
        return self._from_pretrained(AutoModelForCausalLM, source, **kwargs)

    def _materialize_builtin(self, source: str) -> str:
        """Built-in models are built from code; save one to disk once so every loader path is the hub's."""
        from posttrain.embedded.model import EMBEDDED_MODELS, build_embedded_model, load_embedded_tokenizer

        builtin = source.removeprefix(BUILTIN_PREFIX)
        if builtin not in EMBEDDED_MODELS:
            raise PosttrainError(f"unknown built-in model '{source}'; built-in: {', '.join(BUILTIN_PREFIX + n for n in EMBEDDED_MODELS)}")
        directory = self.layout.builtin_dir(f"{builtin}-seed{self.seed}")
        if not is_committed(directory):
            tokenizer = load_embedded_tokenizer()
            with atomic_directory(directory) as tmp:
                build_embedded_model(builtin, tokenizer, seed=self.seed).save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        return str(directory)

    def _from_pretrained(self, auto_cls, source: str, **kwargs):
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if Path(source).is_dir():
            # Absolute, so what records it (a LoRA adapter's base_model_name_or_path) works from any directory.
            source = str(Path(source).resolve())
        try:
            # use_safetensors: never unpickle weights from a .bin file.
            extra = {"use_safetensors": True} if auto_cls.__name__.startswith("AutoModelFor") else {}
            if is_hub_id(source) and hub_cache_first():
                # transformers 5.23 does not pass local_files_only on to its adapter_config.json lookup: say it twice.
                cache_only = {"adapter_kwargs": {"local_files_only": True}} if extra else {}
                try:  # in the hub cache: no request (an unreachable hub costs minutes of retries per optional file)
                    return auto_cls.from_pretrained(source, local_files_only=True, **kwargs, **extra, **cache_only)
                except OSError:
                    pass  # not (all) in the cache: download it
            return auto_cls.from_pretrained(source, **kwargs, **extra)
        except OSError as e:
            if not Path(source).exists() and is_hub_id(source):
                from posttrain.environment import hub_failure_line

                raise PosttrainError(hub_failure_line(source, e)) from None
            where = " as a local directory" if Path(source).exists() else ""
            raise PosttrainError(f"cannot load '{source}'{where}: {str(e).splitlines()[0]}") from None

    # -- saving ---------------------------------------------------------------
    def save(self, name: str, model, tokenizer: PreTrainedTokenizerBase, parent: str | ModelRef | None = None, head: str = "causal") -> Path:
        """Save a stage's model (merged, loadable by from_pretrained) and, for LoRA, its adapter.

        A QLoRA model is merged into a full-precision copy of its parent (`parent`), never
        into the 4-bit weights, so the saved model has no quantization loss baked in.
        """
        adapter_dir = self.layout.adapter_dir(name)
        if hasattr(model, "peft_config"):
            with atomic_directory(adapter_dir) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            if getattr(model, "is_loaded_in_4bit", False) or getattr(model.base_model.model, "is_loaded_in_4bit", False):
                from peft import PeftModel

                if parent is None:
                    raise StageError(f"stage '{name}': a 4-bit model needs its parent's name to be merged in full precision")
                model = PeftModel.from_pretrained(self.load_model(parent, head=head), adapter_dir)
            # The adapter stays on disk for users who want it; the merged model is what the
            # next stage and plain from_pretrained users get. (Merging modifies `model`.)
            model = model.merge_and_unload()
        with atomic_directory(self.layout.model_dir(name)) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        return self.layout.model_dir(name)

    # -- hand-over checks -------------------------------------------------------
    def check_tokenizer_carried(self, parent: str | ModelRef, child: str) -> str:
        """Fail when a stage changed the tokenizer or chat template it inherited."""
        before = tokenizer_fingerprint(self.load_tokenizer(parent))
        after = tokenizer_fingerprint(self.load_tokenizer(child))
        if before != after:
            raise StageError(
                f"stage '{child}' saved a tokenizer or chat template that differs from its parent '{parent}' "
                f"({before} -> {after}); later stages and evaluation would render prompts differently"
            )
        return after

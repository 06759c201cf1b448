"""The model registry: the one place that resolves, loads and saves models and tokenizers.

Names: `base` is the recipe's starting model (`builtin:<name>`, a local directory or a
hub id); every training stage's name resolves to `<run>/<stage>/model/`. The tokenizer
and chat template travel with each saved model, and every hand-over between stages checks
they did not drift.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from posttrain.atomic import atomic_directory, is_committed
from posttrain.errors import PosttrainError, StageError

BUILTIN_PREFIX = "builtin:"
MODEL_DIRNAME = "model"
ADAPTER_DIRNAME = "adapter"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that changes how text becomes tokens and chats become text."""
    identity = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


class ModelRegistry:
    def __init__(self, run_dir: Path, base: str, trust_remote_code: bool = False, seed: int = 0):
        self.run_dir = Path(run_dir)
        self.base = base
        self.trust_remote_code = trust_remote_code
        self.seed = seed

    # -- where things are -------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.run_dir / name / MODEL_DIRNAME

    def describe(self, name: str) -> str:
        """Human-readable location of a model, for plans and manifests."""
        return self.base if name == "base" else str(self.model_dir(name))

    def _source(self, name: str) -> str:
        if name == "base":
            return self.base
        if "/" in name and Path(name).is_dir():  # a model directory named directly (e.g. a reward model)
            return name
        directory = self.model_dir(name)
        if not is_committed(directory):
            raise StageError(f"model '{name}' has no committed checkpoint at {directory}; run its stage first")
        return str(directory)

    # -- loading --------------------------------------------------------------
    def load_tokenizer(self, name: str) -> PreTrainedTokenizerBase:
        source = self._source(name)
        if source.startswith(BUILTIN_PREFIX):
            from posttrain.embedded.model import load_embedded_tokenizer

            return load_embedded_tokenizer()
        return self._from_pretrained(AutoTokenizer, source)

    def load_model(self, name: str, dtype: torch.dtype = torch.float32, head: str = "causal", quantize: str | None = None) -> PreTrainedModel:
        """A model by registry name. head="reward" puts a fresh one-output score head on the
        same backbone (what a reward model trains); quantize="4bit" loads it for QLoRA."""
        source = self._source(name)
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
        directory = self.run_dir / ".builtin" / f"{builtin}-seed{self.seed}"
        if not is_committed(directory):
            tokenizer = load_embedded_tokenizer()
            with atomic_directory(directory) as tmp:
                build_embedded_model(builtin, tokenizer, seed=self.seed).save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
        return str(directory)

    def _from_pretrained(self, auto_cls, source: str, **kwargs):
        if self.trust_remote_code:
            kwargs["trust_remote_code"] = True
        try:
            # use_safetensors: never unpickle weights from a .bin file.
            extra = {"use_safetensors": True} if auto_cls.__name__.startswith("AutoModelFor") else {}
            return auto_cls.from_pretrained(source, **kwargs, **extra)
        except OSError as e:
            where = "local directory" if Path(source).exists() else "hub id (offline here, or not found)"
            raise PosttrainError(f"cannot load '{source}' as a {where}: {str(e).splitlines()[0]}") from None

    # -- saving ---------------------------------------------------------------
    def save(self, name: str, model, tokenizer: PreTrainedTokenizerBase, parent: str | None = None, head: str = "causal") -> Path:
        """Save a stage's model (merged, loadable by from_pretrained) and, for LoRA, its adapter.

        A QLoRA model is merged into a full-precision copy of its parent (`parent`), never
        into the 4-bit weights, so the saved model has no quantization loss baked in.
        """
        stage_dir = self.run_dir / name
        if hasattr(model, "peft_config"):
            with atomic_directory(stage_dir / ADAPTER_DIRNAME) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
            if getattr(model, "is_loaded_in_4bit", False) or getattr(model.base_model.model, "is_loaded_in_4bit", False):
                from peft import PeftModel

                if parent is None:
                    raise StageError(f"stage '{name}': a 4-bit model needs its parent's name to be merged in full precision")
                model = PeftModel.from_pretrained(self.load_model(parent, head=head), stage_dir / ADAPTER_DIRNAME)
            # The adapter stays on disk for users who want it; the merged model is what the
            # next stage and plain from_pretrained users get. (Merging modifies `model`.)
            model = model.merge_and_unload()
        with atomic_directory(stage_dir / MODEL_DIRNAME) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        return stage_dir / MODEL_DIRNAME

    # -- hand-over checks -------------------------------------------------------
    def check_tokenizer_carried(self, parent: str, child: str) -> str:
        """Fail when a stage changed the tokenizer or chat template it inherited."""
        before = tokenizer_fingerprint(self.load_tokenizer(parent))
        after = tokenizer_fingerprint(self.load_tokenizer(child))
        if before != after:
            raise StageError(
                f"stage '{child}' saved a tokenizer or chat template that differs from its parent '{parent}' "
                f"({before} -> {after}); later stages and evaluation would render prompts differently"
            )
        return after

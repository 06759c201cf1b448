"""`--format merged`: the stage's full model as a plain transformers directory (safetensors, config, generation
config, tokenizer, chat template), loadable with `AutoModelForCausalLM.from_pretrained(DIR)`.

A LoRA stage's committed model is already its adapter merged into its parent with peft's `merge_and_unload`
(the model store does that when the stage saves), so both kinds export the same way: loaded through the
store and saved in the asked dtype. In float32 the weights are the stage's, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.export.source import StageSource

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def write_merged(source: StageSource, directory: Path, dtype: str) -> None:
    store = source.store()
    model = store.load_model(source.name, dtype=DTYPES[dtype])
    tokenizer = store.load_tokenizer(source.name)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)

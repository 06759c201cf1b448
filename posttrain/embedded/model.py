"""The embedded base model: a tiny Llama, built deterministically from a seed.

It is a real transformers architecture (so every code path that handles hub models
handles it too) with random weights: the honest version of "a base model that does not
answer". It is small enough that SFT, DPO and evaluation all run on two CPU cores in
minutes.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from posttrain.embedded.tokenizer_build import TOKENIZER_DIR

EMBEDDED_MODELS = {
    # name: architecture sizes; add larger ones here for heavier offline tests.
    "tiny-chat": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
}


def load_embedded_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def build_embedded_model(name: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> PreTrainedModel:
    sizes = EMBEDDED_MODELS[name]
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
        **sizes,
    )
    # Seed a private generator state so building the model never disturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model

"""`--format gguf`: the stage's model as one .gguf file, written with the `gguf` package (llama.cpp's own
Python writer), laid out as llama.cpp's converter lays out the same model, so llama.cpp and transformers
(`from_pretrained(dir, gguf_file=...)`) both read it.

What goes in: the architecture's hyperparameters, the tokenizer (vocabulary, token types, merges, special
ids, whether BOS/EOS are added, the pre-tokenizer's name), the chat template, and every tensor under
llama.cpp's name. Families: llama, qwen2, and mistral, which llama.cpp's converter writes as its `llama`
architecture (the same layers; llama.cpp keeps no sliding window for it), so it reads back as a
LlamaForCausalLM. (transformers would build a MistralForCausalLM for a file named exactly "mistral",
but its weight map then asks gguf-py for a `mistral` architecture that gguf 0.19 does not have.)

llama.cpp's converter permutes the rows of the q and k projections of llama-family models (its rotary
embedding pairs neighbouring dimensions, transformers' pairs the two halves) and transformers' loader
undoes that (`modeling_gguf_pytorch_utils.LlamaTensorProcessor`); `permute_rotary_rows` is that permutation.
Qwen2 is not permuted by either side.

Storage: 1-D tensors (norms, biases) are float32, as llama.cpp keeps them; 2-D weights in --dtype, or
Q8_0 with --quantize q8_0 (a weight whose rows do not split into 32-value blocks stays in --dtype).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posttrain.export.source import ExportError, StageSource


@dataclass(frozen=True)
class Family:
    gguf_arch: str  # general.architecture
    permute_qk: bool  # llama.cpp's rotary row order for q/k


FAMILIES = {"llama": Family("llama", True), "mistral": Family("llama", True), "qwen2": Family("qwen2", False)}
QUANTIZATIONS = ("q8_0",)


def permute_rotary_rows(weights: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of a q or k projection: within each head, the halves interleaved."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def gguf_filename(source: StageSource, dtype: str, quantize: str | None) -> str:
    return f"{source.run_name}-{source.name}-{quantize or dtype}.gguf"


def write_gguf(source: StageSource, directory: Path, dtype: str, quantize: str | None) -> Path:
    import torch

    store = source.store()
    model = store.load_model(source.name, dtype=torch.float32)
    config = model.config
    family = _family(config, source)
    path = directory / gguf_filename(source, dtype, quantize)
    import gguf

    writer = gguf.GGUFWriter(str(path), family.gguf_arch)
    try:
        _write_hyperparameters(writer, config, source, dtype, quantize)
        _write_tokenizer(writer, source.model_dir, store.load_tokenizer(source.name), config.vocab_size)
        _write_tensors(writer, model, family, dtype, quantize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def _family(config, source: StageSource) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ExportError(f"stage '{source.name}' is a '{model_type}' model; --format gguf writes {', '.join(FAMILIES)} models "
                          "(export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py)")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"stage '{source.name}': its rotary embedding is scaled (rope_type {rope.get('rope_type')}), which --format gguf "
                          "does not write; export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py")
    if model_type != "qwen2" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise ExportError(f"stage '{source.name}': a {model_type} model with attention or MLP biases has no GGUF form transformers reads back; "
                          "export --format merged")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if model_type == "qwen2" and head_dim != config.hidden_size // config.num_attention_heads:
        raise ExportError(f"stage '{source.name}': a qwen2 model with head_dim {head_dim} (not hidden_size / heads) reads back wrongly from GGUF "
                          "(transformers' loader ignores its rotary dimension); export --format merged")
    return FAMILIES[model_type]


def _write_hyperparameters(writer, config, source: StageSource, dtype: str, quantize: str | None) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(f"{source.run_name}-{source.name}")
    writer.add_basename(f"{source.run_name}-{source.name}")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float((config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantize == "q8_0" else file_types[dtype])
    if quantize:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


# -- tokenizer ------------------------------------------------------------------------------
def _write_tokenizer(writer, model_dir: Path, tokenizer, vocab_size: int) -> None:
    """The tokenizer as llama.cpp metadata, read from the stage's tokenizer files with the gguf package's
    own vocabulary readers (byte-level BPE: `gpt2`; sentencepiece-style BPE with byte fallback: `llama`)."""
    import gguf
    from gguf.vocab import BpeVocab, LlamaHfVocab, SpecialVocab

    try:
        vocab = BpeVocab(model_dir)
    except (FileNotFoundError, ValueError):
        try:
            vocab = LlamaHfVocab(model_dir)
        except (FileNotFoundError, TypeError, ValueError):
            raise ExportError(f"{model_dir}: its tokenizer is neither byte-level BPE nor sentencepiece-style BPE with byte fallback, "
                              "the two kinds --format gguf writes; export --format merged") from None
    tokens, scores, types = [], [], []
    for text, score, token_type in vocab.all_tokens():
        tokens.append(text.decode("utf-8") if isinstance(text, bytes) else text)
        scores.append(score)
        types.append(token_type)
    # The readers cannot tell a special token that is also in the trained vocabulary (as the embedded
    # tokenizer's are) from an ordinary one; transformers' added-token table can.
    by_id = {token_id: token for token_id, token in tokenizer.added_tokens_decoder.items()}
    for token_id, token in by_id.items():
        if token_id < len(types) and types[token_id] != gguf.TokenType.BYTE:
            types[token_id] = gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED
    if len(tokens) > vocab_size:
        raise ExportError(f"{model_dir}: the tokenizer has {len(tokens)} tokens but the model only {vocab_size} embeddings; "
                          "the stage's model and tokenizer disagree")
    for i in range(len(tokens), vocab_size):  # embedding rows no token uses, named as llama.cpp names them
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)

    writer.add_tokenizer_model(vocab.tokenizer_model)
    if vocab.tokenizer_model == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer_name(model_dir))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    special.add_special_token = {}  # set below from what the tokenizer does, not from config flags it may lack
    special.add_to_gguf(writer, quiet=True)
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id])


def _pre_tokenizer_name(model_dir: Path) -> str:
    """llama.cpp's name for how a byte-level tokenizer splits text before merging: `default` for GPT-2's
    own split, else the name transformers' GGUF loader gives that split pattern."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space", False):
        return "default"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    splits = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(splits) == 1 and len(byte_level) == 1 and not byte_level[0].get("use_regex", True):
        for name, pattern in GGUF_PRE_TOKENIZER_SPLITS.items():
            if pattern == splits[0]:
                return name
    raise ExportError(f"{model_dir}/tokenizer.json: its pre-tokenizer ({json.dumps(pre)[:120]}) has no GGUF name that transformers "
                      "and llama.cpp know, so a GGUF would tokenize differently; export --format merged")


# -- tensors --------------------------------------------------------------------------------
def _write_tensors(writer, model, family: Family, dtype: str, quantize: str | None) -> None:
    import gguf

    config = model.config
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == family.gguf_arch)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue  # a file without output.weight is read as tied embeddings
        if name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"weight '{name}' of this {config.model_type} model has no llama.cpp name; export --format merged")
        weights = tensor.detach().float().numpy()
        if family.permute_qk and gguf_name.endswith("attn_q.weight"):
            weights = permute_rotary_rows(weights, config.num_attention_heads)
        elif family.permute_qk and gguf_name.endswith("attn_k.weight"):
            weights = permute_rotary_rows(weights, config.num_key_value_heads)
        _add_tensor(writer, gguf_name, np.ascontiguousarray(weights), dtype, quantize)


def _add_tensor(writer, name: str, weights: np.ndarray, dtype: str, quantize: str | None) -> None:
    import gguf

    if weights.ndim < 2:
        writer.add_tensor(name, weights.astype(np.float32))
        return
    kind = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16}[dtype]
    if quantize == "q8_0" and weights.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        kind = gguf.GGMLQuantizationType.Q8_0
    if kind == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, weights.astype(np.float32))
    elif kind == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, weights.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(weights, kind), raw_dtype=kind)

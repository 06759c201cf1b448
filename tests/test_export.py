"""`posttrain export RUN STAGE`: merged models, LoRA adapters and GGUF files of finished stages, each with a
model card whose numbers are results.json's, and a hub push recorded by a local HTTP server.

One tiny run (full-weight SFT, a LoRA SFT stage on it, an evaluation with a gate) is trained once per module;
the Qwen2 and Mistral models are built here with random weights, in run directories of their own, each
with a real tokenizer of its family's kind trained here on the assistant world's text (Qwen2: byte-level
BPE with Qwen2's split pattern; Mistral: sentencepiece-style BPE with byte fallback).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import REPO, quick_sft, run_cli, tiny_recipe
from posttrain.atomic import atomic_directory
from posttrain.embedded.model import load_embedded_tokenizer
from posttrain.results import load_results

# Largest |logit difference| allowed, as a share of the largest |logit| of the source, per stored form
# (docs/export.md states the same table). Measured on the tiny models: f32 0, f16 ~5e-4, bf16 ~4e-3, q8_0 ~1.3e-2.
GGUF_TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "bf16": 2e-2, "q8_0": 5e-2}
CHAT = [{"role": "user", "content": "What is the capital of France? Numbers 12345, symbols <>[]"}]
FAKE_TOKEN = "hf_" + "A1b2C3d4" * 4


def _one_error_line(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny"
    recipe = tiny_recipe(
        sft=quick_sft(max_steps=2, precision="fp32"),
        lora=quick_sft(**{"from": "sft", "max_steps": 2, "precision": "fp32", "lora": {"r": 4, "alpha": 8}}),
        eval={"kind": "eval", "models": ["sft", "lora"], "tasks": ["world_skills"], "limit": 4},
    ) | {"profiles": {"public": {"stages": ["sft", "lora", "eval"],
                                 "gates": [{"metric": "world_skills/exact_match", "op": ">=", "threshold": 0.0}]}},
         "default_profile": "public"}
    path = out.parent / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = run_cli("run", str(path), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _export(run: Path, stage: str, out: Path, *options: str, env: dict | None = None) -> Path:
    result = run_cli("export", str(run), stage, "-o", str(out), *options, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def _chat_ids(tokenizer) -> torch.Tensor:
    return tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]


# -- merged -------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["sft", "lora"])
def test_merged_f32_is_the_stage_model_bit_for_bit(run_dir, tmp_path, stage):
    out = _export(run_dir, stage, tmp_path / "merged")
    source, exported = load_file(run_dir / stage / "model" / "model.safetensors"), load_file(out / "model.safetensors")
    assert source.keys() == exported.keys()
    assert all(torch.equal(source[k], exported[k]) and exported[k].dtype == torch.float32 for k in source)
    assert {"config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja", "README.md"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(run_dir / stage / "model").chat_template
    assert AutoModelForCausalLM.from_pretrained(out).generation_config.eos_token_id == tokenizer.eos_token_id


def test_merged_in_half_precision_stores_half_precision_and_replaces_an_earlier_export(run_dir, tmp_path):
    _export(run_dir, "sft", tmp_path / "f16")
    out = _export(run_dir, "sft", tmp_path / "f16", "--dtype", "f16")
    assert json.loads((out / "posttrain_export.json").read_text())["dtype"] == "f16"
    source, exported = load_file(run_dir / "sft" / "model" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(exported[k].dtype == torch.float16 and torch.equal(exported[k], source[k].half()) for k in source)


# -- adapter ------------------------------------------------------------------------------------
def test_the_adapter_loads_from_a_copied_directory_with_the_stage_logits(run_dir, tmp_path):
    from peft import AutoPeftModelForCausalLM

    out = _export(run_dir, "lora", tmp_path / "adapter", "--format", "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]).is_absolute()
    assert Path(config["base_model_name_or_path"]) == (run_dir / "sft" / "model").resolve()  # the parent, never a relative path
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(out, copy)
    shutil.rmtree(out)
    cwd = os.getcwd()
    os.chdir(tmp_path / "elsewhere")
    try:
        model = AutoPeftModelForCausalLM.from_pretrained(str(copy))
    finally:
        os.chdir(cwd)
    tokenizer = AutoTokenizer.from_pretrained(copy)
    ids = _chat_ids(tokenizer)
    stage = AutoModelForCausalLM.from_pretrained(run_dir / "lora" / "model")
    # Unmerged LoRA vs the merged weights: the same function, summed in a different order.
    assert torch.allclose(_logits(model, ids), _logits(stage, ids), atol=1e-5, rtol=0)


def test_a_full_finetune_stage_has_no_adapter_to_export(run_dir, tmp_path):
    line = _one_error_line(run_cli("export", str(run_dir), "sft", "--format", "adapter", "-o", str(tmp_path / "a")))
    assert "'sft' trained all weights" in line and "--format merged" in line
    assert not (tmp_path / "a").exists()


# -- GGUF ---------------------------------------------------------------------------------------
def _gguf_round_trip(directory: Path, source_dir: Path, tolerance: float, expected_class: str, source_tokenizer=None):
    """`source_tokenizer`: the tokenizer the model was built with (default: the stage's, as transformers loads it)."""
    [gguf_file] = list(directory.glob("*.gguf"))
    loaded = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf_file.name, dtype=torch.float32)
    assert type(loaded).__name__ == expected_class
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf_file.name)
    source_tokenizer = source_tokenizer or AutoTokenizer.from_pretrained(source_dir)
    ids = _chat_ids(source_tokenizer)
    text = CHAT[0]["content"]
    assert tokenizer.tokenize(text) == source_tokenizer.tokenize(text)
    assert tokenizer(text)["input_ids"] == source_tokenizer(text)["input_ids"]  # BOS/EOS added alike
    assert _chat_ids(tokenizer).tolist() == ids.tolist()  # tokenizer and chat template came back
    assert tokenizer.chat_template == source_tokenizer.chat_template
    expected = _logits(AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32), ids)
    difference = (_logits(loaded, ids) - expected).abs().max().item()
    assert difference <= tolerance * expected.abs().max().item(), (difference, expected.abs().max().item())
    return gguf_file


@pytest.mark.parametrize("form", ["f32", pytest.param("f16", marks=pytest.mark.slow), pytest.param("bf16", marks=pytest.mark.slow), "q8_0"])
def test_gguf_of_the_embedded_llama_gives_the_stage_logits(run_dir, tmp_path, form):
    options = ("--quantize", "q8_0") if form == "q8_0" else ("--dtype", form)
    out = _export(run_dir, "lora", tmp_path / "gguf", "--format", "gguf", *options)
    gguf_file = _gguf_round_trip(out, run_dir / "lora" / "model", GGUF_TOLERANCE[form], "LlamaForCausalLM")
    assert gguf_file.name == f"tiny-lora-{form}.gguf" and (out / "README.md").is_file()


def _tiny_run(root: Path, model, tokenizer) -> Path:
    """A run directory holding one finished policy stage `stage` with this model (trained elsewhere)."""
    run = root / "run"
    with atomic_directory(run / "stage" / "model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    (run / "stage" / "stage.json").write_text(json.dumps({
        "name": "stage", "kind": "sft", "role": "policy", "status": "completed", "fingerprint": "0123456789abcdef",
        "parent": "base", "base": "org/tiny", "config": {"kind": "sft", "learning_rate": 1e-4}}))
    return run


def _qwen2_tokenizer():
    """A Qwen2-style tokenizer: byte-level BPE split with Qwen2's pattern, ChatML specials, trained here on the world's text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from posttrain.embedded import world

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(sorted(set(world.corpus())), trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False,
                                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    state = json.loads(bpe.to_str())["model"]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=[tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in state["merges"]],
                               eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tokenizer


def _sentencepiece_tokenizer():
    """A Mistral/Llama-style tokenizer (sentencepiece BPE with byte fallback), trained here on the world's text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    from posttrain.embedded import world

    bpe = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    bpe.train_from_iterator(sorted(set(world.corpus())), trainers.BpeTrainer(vocab_size=700, special_tokens=specials, show_progress=False))
    state = json.loads(bpe.to_str())["model"]
    tokenizer = LlamaTokenizer(vocab=state["vocab"], merges=[tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in state["merges"]])
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                               "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
    return tokenizer


def _family_model(family: str, tokenizer):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    if family == "qwen2":  # untied output head and q/k/v biases: the parts only Qwen2 has
        model = Qwen2ForCausalLM(Qwen2Config(**sizes, tie_word_embeddings=False))
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
        return model
    return MistralForCausalLM(MistralConfig(**sizes, tie_word_embeddings=False, sliding_window=None))


# A Mistral comes back as the Llama it is to llama.cpp (same layers; docs/export.md).
@pytest.mark.parametrize("family,expected", [("qwen2", "Qwen2ForCausalLM"), ("mistral", "LlamaForCausalLM")])
def test_gguf_of_qwen2_and_mistral_gives_the_source_logits(tmp_path, family, expected):
    tokenizer = _qwen2_tokenizer() if family == "qwen2" else _sentencepiece_tokenizer()
    run = _tiny_run(tmp_path, _family_model(family, tokenizer), tokenizer)
    out = _export(run, "stage", tmp_path / "gguf", "--format", "gguf")
    _gguf_round_trip(out, run / "stage" / "model", GGUF_TOLERANCE["f32"], expected, tokenizer)
    out = _export(run, "stage", tmp_path / "gguf8", "--format", "gguf", "--quantize", "q8_0")
    _gguf_round_trip(out, run / "stage" / "model", GGUF_TOLERANCE["q8_0"], expected, tokenizer)


def test_what_gguf_does_not_write_is_one_line(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = load_embedded_tokenizer()
    run = _tiny_run(tmp_path / "gpt2", GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)), tokenizer)
    line = _one_error_line(run_cli("export", str(run), "stage", "--format", "gguf", "-o", str(tmp_path / "g")))
    assert "'gpt2' model" in line and "llama, mistral, qwen2" in line and not (tmp_path / "g").exists()

    scaled = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}))
    run = _tiny_run(tmp_path / "scaled", scaled, tokenizer)
    line = _one_error_line(run_cli("export", str(run), "stage", "--format", "gguf", "-o", str(tmp_path / "g")))
    assert "rotary embedding is scaled (rope_type linear)" in line and not (tmp_path / "g").exists()


# -- the model card -----------------------------------------------------------------------------
def _card(directory: Path) -> tuple[dict, str]:
    text = (directory / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_the_card_says_what_results_json_and_the_manifests_say(run_dir, tmp_path):
    out = _export(run_dir, "lora", tmp_path / "card", "--format", "adapter", env={"HF_TOKEN": FAKE_TOKEN})
    meta, body = _card(out)
    results = load_results(run_dir / "results.json")
    evaluation = results.evaluation

    # model-index: the exported model's every metric, equal to results.json (full precision).
    [index] = meta["model-index"]
    indexed = {m["name"]: m["value"] for entry in index["results"] for m in entry["metrics"]}
    expected = {f"{task}/{metric}": value for task, scores in evaluation.models["lora"].tasks.items() for metric, value in scores.metrics.items()}
    assert indexed == expected and len(expected) >= 3
    # posttrain.evaluation: every model's scores with standard errors and n, as results.json has them.
    raw = json.loads((run_dir / "results.json").read_text())["evaluation"]["models"]
    assert meta["posttrain"]["evaluation"]["models"] == {m: {t: v for t, v in s.items() if t != "settings"} for m, s in raw.items()}
    # The table: every model's value ± standard error, rounded to 4 places.
    for model, scores in evaluation.models.items():
        for task, task_scores in scores.tasks.items():
            for metric, value in task_scores.metrics.items():
                row = next(line for line in body.splitlines() if line.startswith(f"| {task}/{metric} |"))
                assert f"{value:.4f} ± {task_scores.stderr[metric]:.4f} (n={task_scores.n})" in row

    # Lineage: base, then each stage with its manifest's fingerprint, settings and data accounting.
    assert [s["stage"] for s in meta["posttrain"]["lineage"]] == ["sft", "lora"] and meta["posttrain"]["base"] == "builtin:tiny-chat"
    for entry in meta["posttrain"]["lineage"]:
        manifest = json.loads((run_dir / entry["stage"] / "stage.json").read_text())
        assert entry["fingerprint"] == manifest["fingerprint"] and f"`{manifest['fingerprint']}`" in body
        assert entry["settings"] == manifest["config"] and entry["data"] == manifest["data"]
        data = manifest["data"]
        assert f"| {entry['stage']} | {data['source']} | {data['rows_read']} | {data['rows_used']} | {data['examples']} |" in body
    assert "lora=r=4 alpha=8" in body

    # The verdict and the intended use of the profile.
    assert meta["posttrain"]["release"]["releasable"] is results.release.releasable is True
    assert "RELEASABLE: every gate passed (profile public)" in body and "Public release candidate" in body
    assert meta["library_name"] == "peft" and "lora" in meta["tags"] and "base_model" not in meta  # builtin: no hub id
    assert FAKE_TOKEN not in (out / "README.md").read_text()


def test_an_internal_run_card_says_internal_use_and_no_release(run_dir, tmp_path):
    run = tmp_path / "internal"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "trainer", "cache", "samples", ".builtin"))
    data = json.loads((run / "results.json").read_text())
    data["profile"], data["release"] = "internal", None
    (run / "results.json").write_text(json.dumps(data))
    meta, body = _card(_export(run, "sft", tmp_path / "out"))
    assert meta["posttrain"]["profile"] == "internal" and "Internal use" in body and "No release gates were judged" in body


# -- bad input: one line each -------------------------------------------------------------------
def test_bad_inputs_are_one_line(run_dir, tmp_path):
    out = str(tmp_path / "o")
    cases = [
        (("export", str(tmp_path / "nowhere"), "sft", "-o", out), "does not exist"),
        (("export", str(tmp_path), "sft", "-o", out), "is not a run directory"),
        (("export", str(run_dir), "sfx", "-o", out), "did you mean 'sft'"),
        (("export", str(run_dir), "base", "-o", out), "not a trained stage"),
        (("export", str(run_dir), "eval", "-o", out), "has role evaluation, not policy"),
        (("export", str(run_dir), "sft", "--format", "onnx", "-o", out), "--format 'onnx' is not one of merged, adapter, gguf"),
        (("export", str(run_dir), "sft", "--dtype", "fp8", "-o", out), "--dtype 'fp8'"),
        (("export", str(run_dir), "sft", "--quantize", "q8_0", "-o", out), "--quantize applies to --format gguf only"),
        (("export", str(run_dir), "sft", "--format", "gguf", "--quantize", "q4_k", "-o", out), "--quantize 'q4_k' is not one of q8_0"),
        (("export", str(run_dir), "sft", "-o", str(REPO)), "is not an earlier export"),
        (("export", str(run_dir), "sft", "-o", out, "--private"), "--private applies to --push-to-hub only"),
        (("export", str(run_dir), "sft", "-o", out, "--push-to-hub", "not a repo"), "is not a hub repository id"),
    ]
    for args, expected in cases:
        assert expected in _one_error_line(run_cli(*args)), args
    assert not Path(out).exists()


def test_help_and_usage_errors():
    shown = run_cli("export", "-h")
    assert shown.returncode == 0 and "Usage: posttrain export " in shown.stdout and "--push-to-hub" in shown.stdout
    missing = run_cli("export", "runs/chat", "sft")
    assert missing.returncode == 2 and "Missing option '--output' / '-o'." in missing.stderr


def test_an_unfinished_stage_is_one_line(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir / "sft", run / "sft", ignore=shutil.ignore_patterns("checkpoints", "trainer"))
    manifest = json.loads((run / "sft" / "stage.json").read_text())
    (run / "sft" / "stage.json").write_text(json.dumps(manifest | {"status": "interrupted"}))
    line = _one_error_line(run_cli("export", str(run), "sft", "-o", str(tmp_path / "o")))
    assert "stage 'sft' is interrupted, not completed" in line


# -- the hub ------------------------------------------------------------------------------------
class FakeHub:
    """The few hub endpoints a push uses, on 127.0.0.1, recording what arrives: repository creations,
    the model card sent for validation, and each committed file's bytes (every file as a regular upload)."""

    def __init__(self, refuse: bool = False):
        self.refuse = refuse  # answer every request 401, as a hub does for a token it does not accept
        self.requests: list[tuple[str, str, str | None]] = []
        self.created: list[dict] = []
        self.files: dict[str, bytes] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while size := int(self.rfile.readline().strip() or b"0", 16):
                        data += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def _send(self, status: int, payload: dict):
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Authorization")))
                self._send(404, {"error": "not served here"})

            def do_POST(self):
                body = self._body()
                hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
                here = f"http://127.0.0.1:{self.server.server_address[1]}"
                if hub.refuse:
                    self._send(401, {"error": "Invalid credentials in Authorization header"})
                elif self.path == "/api/repos/create":
                    request = json.loads(body)
                    hub.created.append(request)
                    self._send(200, {"url": f"{here}/{request['organization']}/{request['name']}"})
                elif self.path == "/api/validate-yaml":
                    self._send(200, {"errors": [], "warnings": []})
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
                elif "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                    self._send(200, {"commitUrl": f"{here}/{repo}/commit/{'1' * 40}", "commitOid": "1" * 40})
                else:
                    self._send(404, {"error": "not served here"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    yield hub
    hub.close()


def _hub_env(tmp_path: Path, endpoint: str, **more) -> dict:
    # HF_HOME: no token file of this machine's user is read; the push is online only with HF_HUB_OFFLINE=0.
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_TOKEN": FAKE_TOKEN, "HF_HOME": str(tmp_path / "hf_home"), **more}


# huggingface_hub reads HF_HUB_OFFLINE once, at import (in this test process: 1, conftest), so a push runs in a fresh process.
PUSH = ("import sys\nfrom posttrain.errors import PosttrainError\nfrom posttrain.export.hub import check_can_push, push\n"
        "try:\n    print(push(sys.argv[1], sys.argv[2], sys.argv[3] == 'private', check_can_push(sys.argv[2]), 'test push'))\n"
        "except PosttrainError as e:\n    print(f'error: {e}', file=sys.stderr)\n    sys.exit(2)\n")


def test_a_push_creates_the_repository_private_and_uploads_every_file(run_dir, tmp_path, fake_hub):
    out = _export(run_dir, "lora", tmp_path / "adapter", "--format", "adapter")
    pushed = subprocess.run([sys.executable, "-c", PUSH, str(out), "me/tiny-lora", "private"], cwd=REPO,
                            env=_hub_env(tmp_path, fake_hub.url), capture_output=True, text=True, timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == f"{fake_hub.url}/me/tiny-lora"
    assert fake_hub.created == [{"name": "tiny-lora", "organization": "me", "visibility": "private", "type": "model"}]
    expected = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "COMMITTED"}
    assert fake_hub.files == expected and "adapter_model.safetensors" in expected and "README.md" in expected
    assert all(auth == f"Bearer {FAKE_TOKEN}" for method, path, auth in fake_hub.requests if method == "POST")
    assert FAKE_TOKEN not in pushed.stdout + pushed.stderr


def test_an_unreachable_or_refusing_hub_is_one_line_and_the_export_is_kept(run_dir, tmp_path):
    out = _export(run_dir, "sft", tmp_path / "merged")
    refusing = FakeHub(refuse=True)
    try:
        refused = subprocess.run([sys.executable, "-c", PUSH, str(out), "me/tiny-sft", "public"], cwd=REPO,
                                 env=_hub_env(tmp_path, refusing.url), capture_output=True, text=True, timeout=120)
    finally:
        refusing.close()
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "refused the push to 'me/tiny-sft'" in refused.stderr and "the token was refused" in refused.stderr
    assert FAKE_TOKEN not in refused.stderr and not refusing.files

    closed = FakeHub()
    closed.close()  # a port nothing listens on
    refused = subprocess.run([sys.executable, "-c", PUSH, str(out), "me/tiny-sft", "public"], cwd=REPO,
                             env=_hub_env(tmp_path, closed.url), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"cannot reach the hub at {closed.url}" in refused.stderr and FAKE_TOKEN not in refused.stderr
    assert f"the export is kept in {out}" in refused.stderr and (out / "model.safetensors").is_file()


def test_a_push_without_token_or_offline_is_one_line_before_exporting(run_dir, tmp_path):
    out = tmp_path / "o"
    no_token = run_cli("export", str(run_dir), "sft", "-o", str(out), "--push-to-hub", "me/x",
                       env={"HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None, "HF_HOME": str(tmp_path / "empty_home")})
    assert "no token; set HF_TOKEN" in _one_error_line(no_token)
    offline = run_cli("export", str(run_dir), "sft", "-o", str(out), "--push-to-hub", "me/x", env={"HF_TOKEN": FAKE_TOKEN, "HF_HUB_OFFLINE": "1"})
    line = _one_error_line(offline)
    assert "HF_HUB_OFFLINE=1 is set" in line and "HF_HUB_OFFLINE unset or HF_HUB_OFFLINE=0" in line and FAKE_TOKEN not in line
    assert not out.exists()  # checked before anything was exported


@pytest.mark.slow
def test_export_and_a_public_push_from_the_command_line(run_dir, tmp_path, fake_hub):
    out = tmp_path / "gguf"
    result = subprocess.run([sys.executable, "-m", "posttrain", "export", str(run_dir), "lora", "--format", "gguf", "--quantize", "q8_0",
                             "-o", str(out), "--push-to-hub", "me/tiny-gguf"],
                            cwd=REPO, env=_hub_env(tmp_path, fake_hub.url), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"pushed to {fake_hub.url}/me/tiny-gguf" in " ".join(result.stdout.split()) and "(private)" not in result.stdout
    assert fake_hub.created == [{"name": "tiny-gguf", "organization": "me", "visibility": "public", "type": "model"}]
    assert set(fake_hub.files) == {p.name for p in out.iterdir()} - {"COMMITTED"}
    assert fake_hub.files["tiny-lora-q8_0.gguf"] == (out / "tiny-lora-q8_0.gguf").read_bytes()
    assert yaml.safe_load(fake_hub.files["README.md"].decode().split("---\n")[1])["posttrain"]["format"] == "gguf"

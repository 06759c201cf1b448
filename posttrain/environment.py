"""Process-wide defaults every posttrain entry point starts from, and what posttrain may do on the hub.

Only defaults: a variable the user already set is never changed.

The hub is the user's choice. The CLI does not set HF_HUB_OFFLINE or HF_DATASETS_OFFLINE:
a recipe that names a hub model (`org/name`) or dataset downloads it once into the hub
cache, and later runs load the model from there without a request (`hub_cache_first`).
An explicit HF_HUB_OFFLINE is respected: 1, the cache only; 0, the hub is asked for the
newest revision every time. Nothing else posttrain does reaches the network: the embedded
model, data and tasks are files. The test suite, which must never reach the network,
starts from `apply_offline_defaults()`.
"""

from __future__ import annotations

import logging
import os
import warnings

LIBRARY_DEFAULTS = {
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    # Our progress display replaces the libraries' tqdm bars (datasets, lm-eval, weights).
    # tqdm reads this when it is imported, so it must be set before the libraries load.
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    # huggingface_hub builds its user agent, on the first call, from a registry it fetches from the
    # hub, even for a file it then reads from the cache; without telemetry it asks nothing.
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # datasets counts each load of its json builder with a request to s3.amazonaws.com (lm-eval's tasks load so).
    "HF_UPDATE_DOWNLOAD_COUNTS": "0",
    # bitsandbytes 0.50, imported by peft whenever transformers' Trainer loads, asks the hub on CPUs with
    # AVX512-BF16 for an optional kernel (kernels-community/quantization-bitsandbytes) that `kernels` then refuses
    # to load without trust_remote_code. Mapping that repository to a path that does not exist makes `kernels`
    # fail before any request; bitsandbytes falls back to its own CPU code, as it does online.
    "LOCAL_KERNELS": "kernels-community/quantization-bitsandbytes=/nonexistent/posttrain-no-hub-kernel",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# What a hub id can be told apart by before anything is loaded (the hub's own rule is stricter).
HUB_ID_PATTERN = r"[A-Za-z0-9][\w.-]*/[\w.-]+"


def apply_defaults() -> None:
    """Set each of LIBRARY_DEFAULTS unless already set, and silence two messages nobody can act on.
    The hub stays reachable unless the user set HF_HUB_OFFLINE=1 (the module docstring)."""
    for name, value in LIBRARY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # bitsandbytes warns on CPU that it could not fetch an optional kernel from the hub.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # TRL 1.16 still calls a transformers method renamed in 5.x; nothing for users to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def apply_offline_defaults() -> None:
    """apply_defaults(), and the hub off unless the environment says otherwise: for callers that
    must never reach the network (the test suite)."""
    apply_defaults()
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)


def hub_cache_first() -> bool:
    """Whether a hub model found in the local hub cache is loaded from it without asking the hub for a
    newer revision: unless the user set HF_HUB_OFFLINE (0: always ask; 1: never, the cache only)."""
    return os.environ.get("HF_HUB_OFFLINE") is None and os.environ.get("TRANSFORMERS_OFFLINE") is None


def hub_offline() -> bool:
    """Whether the hub client will refuse the network (HF_HUB_OFFLINE as huggingface_hub read it)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_model_problem(model: str) -> str | None:
    """None when the hub model `model` can be loaded, else one line: what failed and what to set.

    A model whose config.json is in the hub cache costs no request. Otherwise, unless offline,
    one metadata request for config.json (no download, no retries) tells a missing, gated or
    unreachable model from one that will download, before anything trains; the libraries'
    own downloads retry an unreachable hub for about 25 s per file.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return None
    if hub_offline():
        return offline_line(model)
    try:
        get_hf_file_metadata(hf_hub_url(model, "config.json"))
    except Exception as error:  # every failure becomes the one line below; hub_failure_line names it
        return hub_failure_line(model, error)
    return None


def offline_line(model: str) -> str:
    return (f"'{model}' is not a local directory, and as a hub id it is not in the local hub cache (HF_HUB_OFFLINE=1); "
            "set HF_HUB_OFFLINE=0 (or unset it) to download it, or name a local model directory")


def hub_failure_line(model: str, error: BaseException) -> str:
    """One line for a hub model that could not be had, from the error huggingface_hub raised
    (directly, or as the cause of a transformers OSError): which model, what failed, what to set."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError)

    chain = _causes(error)
    endpoint = hub_endpoint()
    found = {kind: next((e for e in chain if isinstance(e, kind)), None)
             for kind in (GatedRepoError, RepositoryNotFoundError, RemoteEntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled)}
    if found[OfflineModeIsEnabled] is not None or (hub_offline() and found[HfHubHTTPError] is None):
        return offline_line(model)
    if found[GatedRepoError] is not None:
        return (f"hub model '{model}' is gated: accept its terms at {endpoint}/{model} with your account, then set HF_TOKEN "
                "to a read token of that account (or name a local model directory)")
    if found[RepositoryNotFoundError] is not None:
        return (f"hub model '{model}' was not found on {endpoint}: check the name; a private model needs HF_TOKEN set to a "
                "read token with access to it (or name a local model directory)")
    if found[RemoteEntryNotFoundError] is not None:
        return (f"hub model '{model}' has no config.json on {endpoint}: it is not a transformers model; name a model "
                "repository or a local model directory")
    http = found[HfHubHTTPError]
    if http is not None and http.response is not None:
        status = http.response.status_code
        fix = ("set HF_TOKEN to a read token with access to it" if status in (401, 403)
               else "try again later, or name a local model directory")
        return f"hub model '{model}' could not be downloaded: {endpoint} answered HTTP {status}; {fix}"
    return (f"hub model '{model}' could not be downloaded: cannot reach {endpoint} ({_network_reason(chain)}); connect to "
            "the network (HF_ENDPOINT names the hub), or name a local model directory")


def _causes(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _network_reason(chain: list[BaseException]) -> str:
    """The innermost error's first line: what the network said ('[Errno 111] Connection refused', a timeout)."""
    for error in reversed(chain):
        text = str(error).strip().splitlines()
        if text:
            return text[0]
    return type(chain[-1]).__name__

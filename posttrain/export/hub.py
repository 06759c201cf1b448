"""`--push-to-hub REPO [--private]`: an export directory uploaded to a Hugging Face Hub model repository with
huggingface_hub (`HfApi.create_repo`, `HfApi.upload_folder`).

Checked before anything is exported, so a push that cannot happen costs nothing: the repository id's shape,
a token (HF_TOKEN, or `hf auth login`), and the network switch: with HF_HUB_OFFLINE=1 huggingface_hub refuses
every request, and it reads that variable once, when it is imported, so a push needs HF_HUB_OFFLINE unset
(or 0) when posttrain starts. HF_ENDPOINT names another hub (a mirror, a test server). The token is passed
to huggingface_hub and never printed or written.
"""

from __future__ import annotations

import os
import re

from posttrain.export.source import ExportError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SKIPPED = ["COMMITTED"]  # the export's own commit marker is not part of the model


def endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def check_can_push(repo_id: str) -> str:
    """The token to push with, or one ExportError line saying why a push cannot happen here."""
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ExportError(f"--push-to-hub '{repo_id}' is not a hub repository id; write OWNER/NAME, e.g. my-org/chat-sft")
    from huggingface_hub import constants, get_token

    token = get_token()
    if not token:
        raise ExportError("cannot push to the hub: no token; set HF_TOKEN to a write token or run `hf auth login`, then export again")
    if constants.HF_HUB_OFFLINE:  # as huggingface_hub read it when it was imported
        why = "HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE")) not in (None, "0") else \
            "huggingface_hub was imported while HF_HUB_OFFLINE was 1"
        raise ExportError(f"cannot push to the hub: {why}, so the hub client refuses the network; "
                          "run the export with HF_HUB_OFFLINE unset or HF_HUB_OFFLINE=0 to push")
    return token


def push(directory, repo_id: str, private: bool, token: str, message: str) -> str:
    """Create the repository (private when asked; an existing one is kept) and upload the directory; returns its URL."""
    try:  # huggingface_hub's HTTP client (2.x): its transport errors mean "no answer"
        from httpx2 import TransportError
    except ImportError:
        TransportError = OSError
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    url = endpoint()
    api = HfApi(endpoint=url, token=token)
    try:
        repo = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(directory), commit_message=message, ignore_patterns=SKIPPED)
    except OfflineModeIsEnabled:
        raise ExportError("cannot push to the hub: HF_HUB_OFFLINE=1 is set; run the export with HF_HUB_OFFLINE unset or 0 to push") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = {401: "the token was refused: set HF_TOKEN to a valid write token", 403: f"the token may not write to '{repo_id}'"}.get(status, "see the hub's answer")
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExportError(f"the hub at {url} refused the push to '{repo_id}' ({first}); {hint}; the export is kept in {directory}") from None
    except ValueError as e:  # e.g. the hub's metadata check refused the model card, or an answer huggingface_hub cannot read
        raise ExportError(f"the push to '{repo_id}' at {url} failed ({' '.join(str(e).split())[:200]}); the export is kept in {directory}") from None
    except (TransportError, OSError) as e:
        raise ExportError(f"cannot reach the hub at {url} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'}); "
                          f"check the network or HF_ENDPOINT; the export is kept in {directory}") from None
    return str(getattr(repo, "url", f"{url}/{repo_id}"))

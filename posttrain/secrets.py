"""Keep tokens and secrets out of everything a run writes (manifests, results, reports).

Values of well-known credential variables in the environment, hub-token-shaped strings and
passwords in URLs are replaced before anything is written.
"""

from __future__ import annotations

import os
import re

SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "WANDB_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
PATTERNS = [
    re.compile(r"hf_[A-Za-z0-9]{20,}"),  # Hugging Face access tokens
    re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+(?=@)"),  # user:password@ in URLs
]
MASK = "***"


def redact(value):
    """A copy of a JSON-like value with secrets masked."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        for name in SECRET_ENV_VARS:
            secret = os.environ.get(name)
            if secret and len(secret) >= 8:
                value = value.replace(secret, MASK)
        for pattern in PATTERNS:
            value = pattern.sub(MASK, value)
    return value

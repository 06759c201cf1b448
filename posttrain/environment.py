"""Process-wide defaults every posttrain entry point starts from (the CLI, the tests).

Only defaults: a variable the user already set is never changed.
"""

from __future__ import annotations

import logging
import os
import warnings

OFFLINE_DEFAULTS = {
    # Nothing in a recipe run should wait on a hub it cannot reach; users who want hub
    # models online set HF_HUB_OFFLINE=0 explicitly.
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    # Our progress display replaces the libraries' tqdm bars (datasets, lm-eval, weights).
    # tqdm reads this when it is imported, so it must be set before the libraries load.
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def apply_offline_defaults() -> None:
    """Set each of OFFLINE_DEFAULTS unless already set, and silence two messages nobody can act on."""
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # bitsandbytes warns on CPU that it could not fetch an optional kernel from the hub.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    # TRL 1.16 still calls a transformers method renamed in 5.x; nothing for users to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

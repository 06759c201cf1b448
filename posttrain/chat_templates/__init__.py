"""Chat templates a recipe can name (`chat_template: chatml`), or read from a Jinja file.

The template is applied once, to the base model's tokenizer, and travels from there with
every saved model (the model store checks it is carried). Built-ins, in this directory:
  chatml   <|im_start|>role ... <|im_end|>   (Qwen, SmolLM, many others)
  llama3   <|start_header_id|>role<|end_header_id|> ... <|eot_id|>
  mistral  [INST] ... [/INST] answer</s>    (a system message is prepended to the first user turn)
Assistant turns are wrapped in {% generation %} so trainers can mask everything else.
This module stays light: recipe validation imports it.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.errors import RecipeError, did_you_mean

TEMPLATE_DIR = Path(__file__).parent
BUILTIN_TEMPLATES = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def template_text(setting: str) -> str:
    """The Jinja text for a recipe's `chat_template:` (a built-in name or a file path)."""
    if setting in BUILTIN_TEMPLATES:
        return (TEMPLATE_DIR / f"{setting}.jinja").read_text(encoding="utf-8")
    path = Path(setting)
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"chat_template: file '{setting}' does not exist") from None
    raise RecipeError(f"chat_template: '{setting}' is neither a built-in template{did_you_mean(setting, BUILTIN_TEMPLATES)} "
                      f"nor a .jinja file; built-in: {', '.join(BUILTIN_TEMPLATES)}")


def directory_has_chat_template(directory: Path) -> bool:
    """Whether a saved tokenizer in `directory` carries a chat template, without loading it."""
    directory = Path(directory)
    if (directory / "chat_template.jinja").is_file() or (directory / "chat_template.json").is_file():
        return True
    try:
        return bool(json.loads((directory / "tokenizer_config.json").read_text()).get("chat_template"))
    except (FileNotFoundError, json.JSONDecodeError):
        return False

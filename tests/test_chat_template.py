"""`chat_template:` in a recipe: a base without one is one clear line; a named or file template is
applied once to the base and carried to every stage."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from conftest import quick_sft, run_cli, tiny_recipe
from posttrain.chat_templates import template_text
from posttrain.embedded.model import build_embedded_model, load_embedded_tokenizer


@pytest.fixture(scope="module")
def base_without_template(tmp_path_factory):
    """A plain pretrained model directory whose tokenizer has no chat template."""
    directory = tmp_path_factory.mktemp("plain-base")
    tokenizer = load_embedded_tokenizer()
    tokenizer.chat_template = None
    build_embedded_model("tiny-chat", tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    assert AutoTokenizer.from_pretrained(directory).chat_template is None
    return directory


def _recipe(base, **extra) -> dict:
    return tiny_recipe(sft=quick_sft(max_steps=2)) | {"base": str(base)} | extra


def test_a_base_without_a_template_is_one_line_naming_the_setting(write_recipe, base_without_template):
    result = run_cli("validate", str(write_recipe(_recipe(base_without_template))))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "has no chat template; set chat_template: to one of chatml, llama3, mistral or a .jinja file" in lines[0]


def test_unknown_template_name_suggests_the_built_in(write_recipe, base_without_template):
    result = run_cli("validate", str(write_recipe(_recipe(base_without_template, chat_template="chatlm"))))
    assert result.returncode == 2 and "'chatlm' is neither a built-in template (did you mean 'chatml'?)" in result.stderr


@pytest.mark.parametrize("setting", ["chatml", "file"])
def test_the_template_is_applied_once_and_carried(write_recipe, base_without_template, tmp_path, setting):
    if setting == "file":
        template = tmp_path / "mine.jinja"
        template.write_text(template_text("llama3"))
        setting, expected = str(template), template_text("llama3")
    else:
        expected = template_text("chatml")
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(_recipe(base_without_template, chat_template=setting))), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    saved = AutoTokenizer.from_pretrained(out / "sft" / "model")
    assert saved.chat_template == expected
    rendered = saved.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert ("<|im_start|>assistant" if "chatml" in setting else "<|start_header_id|>assistant<|end_header_id|>") in rendered

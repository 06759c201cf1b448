"""`posttrain data inspect` and `posttrain data convert`, run as a user would, good input and bad."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, run_cli

from posttrain.data.sources import load_rows
from posttrain.data.training_data import to_kto_examples, to_preference_pairs, to_sft_examples

OASST = REPO.parent / "shared" / "data" / "oasst_en_100_tree.jsonl"


@pytest.fixture(scope="module")
def oasst():
    if not OASST.is_file():
        pytest.skip(f"{OASST} is not here (CI has it)")
    return str(OASST)


def test_inspect_oasst_shows_format_counts_votes_ranks_and_conversions(oasst):
    result = run_cli("data", "inspect", oasst, env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for expected in ("format oasst (100 records)", "one per assistant reply", "Lengths in tokens", "Votes", "Ranks",
                     "Conversions", "example (sft)", "example (pairs)", "example (kto)"):
        assert expected in out


def test_inspect_json_agrees_with_the_library(oasst):
    result = run_cli("data", "inspect", oasst, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = load_rows(oasst)
    assert report["formats"] == {"oasst": 100}
    assert report["conversions"]["sft"]["examples"] == len(to_sft_examples(rows, oasst)[0])
    assert report["conversions"]["pairs"]["examples"] == len(to_preference_pairs(rows, oasst)[0])
    examples, _, weights = to_kto_examples(rows, oasst)
    assert report["conversions"]["kto"]["examples"] == len(examples) and report["conversions"]["kto"]["class weights"] == weights
    assert report["votes"]["+1 votes"] > 0 and report["ranks"]["ranked replies"] > 0


@pytest.mark.parametrize("to, detected", [("sft", "prompt_completion"), ("pairs", "preference"), ("kto", "binary")])
def test_convert_writes_data_a_stage_can_use(oasst, tmp_path, to, detected):
    out = tmp_path / f"{to}.jsonl"
    result = run_cli("data", "convert", oasst, "--to", to, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "rows read" in result.stdout
    written = [json.loads(line) for line in out.read_text().splitlines()]
    convert = {"sft": to_sft_examples, "pairs": to_preference_pairs, "kto": to_kto_examples}[to]
    again, acct, *_ = convert(load_rows(str(out)), str(out))
    assert again == written and acct.formats == {detected: len(written)} and not acct.dropped
    if to == "kto":
        assert "desirable_weight" in result.stdout


def test_convert_split_and_options(oasst, tmp_path):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    for split, out in (("train", train), ("test", test)):
        result = run_cli("data", "convert", oasst, "--to", "pairs", "-o", str(out), "--split", split, "--max-pairs-per-prompt", "2")
        assert result.returncode == 0, result.stderr
    opening = lambda path: {json.loads(line)["prompt"][0]["content"] for line in path.read_text().splitlines()}  # noqa: E731
    assert opening(train).isdisjoint(opening(test))


def bad_file(tmp_path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


BAD_INPUTS = [
    ("log.jsonl", b'{"prompt": "q", "response": "a", "rating": "up"}\n{"prompt": "q", "response": oops}\n', ":2: malformed JSON"),
    ("log.jsonl", b'{"prompt": "q", "response": "caf\xe9", "rating": "up"}\n', ":1: not UTF-8"),
    ("log.jsonl", b"", ": no rows; the file is empty"),
    ("log.jsonl", b'{"question": "q", "answer": "a"}\n', ":1: cannot detect the data format from the fields (answer, question)"),
    ("log.jsonl", b'{"prompt": "q", "response": "a", "rating": "up"}\n{"prompt": "q", "response": "b"}\n', ":2: field 'rating' is missing"),
    ("log.jsonl", b'{"prompt": "q", "response": ["a"], "rating": "up"}\n', ":1: field 'response[0]' must be an object"),
    ("log.csv", b"prompt,response,rating\nq,a,up\nq,b,meh\n", ":3: field 'rating' is 'meh'"),
    ("log.json", b'[{"prompt": "q", "response": "a", "rating": "up"}, {"prompt": 3, "response": "b", "rating": "up"}]', ": row 2: field 'prompt' must be text"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_is_one_line_naming_file_line_and_field(tmp_path, name, content, message):
    path = bad_file(tmp_path, name, content)
    for command in (["data", "inspect", path], ["data", "convert", path, "--to", "pairs", "-o", str(tmp_path / "out.jsonl")]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"error: {path}{message}"), lines[0]


def test_on_error_skip_counts_the_bad_rows(tmp_path):
    path = bad_file(tmp_path, "log.jsonl", b"\n".join([
        b'{"prompt": "q", "response": "a", "rating": "up"}', b'{"prompt": "q", "response": oops}',
        b'{"prompt": "q", "response": "b", "rating": "down"}', b'{"prompt": "q", "response": "c"}']) + b"\n")
    result = run_cli("data", "convert", path, "--to", "pairs", "-o", str(tmp_path / "out.jsonl"), "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    assert "4 rows read, 2 used, 1 examples; dropped: " in result.stdout
    assert "malformed_json 1" in result.stdout and "missing_field 1" in result.stdout
    assert f"skipped: {path}:2: malformed JSON" in result.stdout
    result = run_cli("data", "convert", path, "--to", "pairs", "-o", str(tmp_path / "out.jsonl"), "--on-error", "skip", "--max-drop-share", "0.25")
    assert result.returncode == 2 and "2 of 4 rows dropped" in result.stderr


def test_bad_options_are_one_line(tmp_path):
    path = bad_file(tmp_path, "log.jsonl", b'{"prompt": "q", "response": "a", "rating": "up"}\n')
    for args, message in ((["--to", "dpo"], "--to is 'dpo'; use one of: sft, pairs, kto"),
                          (["--to", "sft", "--format", "alpacca"], "format 'alpacca' is unknown (did you mean 'alpaca'?)"),
                          (["--to", "sft", "--dedupe", "fuzzy"], "dedupe is 'fuzzy'; use one of: exact, normalized, none")):
        result = run_cli("data", "convert", path, "-o", str(tmp_path / "out.jsonl"), *args)
        assert result.returncode == 2 and result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr


def test_help_lists_the_data_commands():
    result = run_cli("data", "--help")
    assert result.returncode == 0 and "inspect" in result.stdout and "convert" in result.stdout


def test_the_main_command_does_not_import_data_libraries():
    code = "import sys, posttrain.cli; print([m for m in ('pyarrow', 'pandas', 'datasets', 'transformers', 'torch') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr

"""Instruction following, IFEval-style: each checker on right, wrong and edge answers; strict and loose
per prompt; the shipped `world_instructions` suite; a suite with instructions evaluated for real on the
embedded model through lm-eval; and a bad instruction in a suite is one line when the recipe is validated.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_cli, tiny_recipe
from posttrain.embedded import world
from posttrain.errors import RecipeError
from posttrain.eval.instructions import INSTRUCTION_TYPES, follows, instructions_problem, loose_variants
from posttrain.eval.metrics import METRICS, PROMPT_METRICS
from posttrain.eval.suites import INSTRUCTION_SUITE_FILE, instruction_suite, load_task_spec, local_tasks, metric_info
from posttrain.recipe import load_recipe


# -- each checker --------------------------------------------------------------------------------
@pytest.mark.parametrize("instruction, response, followed", [
    # json: the whole response (optionally fenced) is JSON; with keys, an object with them all
    ({"type": "json"}, '{"answer": "Paris"}', True),
    ({"type": "json"}, "[1, 2]", True),
    ({"type": "json", "keys": ["answer"]}, '```json\n{"answer": "Paris"}\n```', True),
    ({"type": "json", "keys": ["answer", "confidence"]}, '{"answer": "Paris"}', False),
    ({"type": "json", "keys": ["answer"]}, '["answer"]', False),  # JSON, but not an object
    ({"type": "json"}, 'Sure! {"answer": "Paris"}', False),
    ({"type": "json"}, '{"answer": "Paris"', False),
    # bullets: exactly `count` items, -, *, + or numbered; **bold** and -5 are not items
    ({"type": "bullets", "count": 3}, "- a\n* b\n+ c", True),
    ({"type": "bullets", "count": 3}, "Steps:\n1. a\n2) b\n  3. c", True),
    ({"type": "bullets", "count": 2}, "**Note**\n- a\n- b\nIt is -5 degrees.", True),
    ({"type": "bullets", "count": 2}, "- a\n- b\n- c", False),
    ({"type": "bullets", "count": 2}, "a, b", False),
    ({"type": "bullets", "count": 0}, "No list here.", True),
    # word limits: words are runs of letters/digits ("don't" is one; list markers and punctuation none)
    ({"type": "max_words", "limit": 3}, "- It is Paris.", True),
    ({"type": "max_words", "limit": 3}, "It is Paris, France.", False),
    ({"type": "max_words", "limit": 2}, "I don't know", False),
    ({"type": "min_words", "limit": 4}, "I don't know that one.", True),
    ({"type": "min_words", "limit": 4}, "Paris.", False),
    # sentences
    ({"type": "max_sentences", "limit": 1}, "It costs 3.5 euros.", True),
    ({"type": "max_sentences", "limit": 1}, "Paris. It is big!", False),
    ({"type": "max_sentences", "limit": 2}, "Paris. It is big! Really?", False),
    ({"type": "max_sentences", "limit": 2}, "Paris. It is big", True),  # a last sentence without a period counts
    # case
    ({"type": "lowercase"}, "the answer is paris.", True),
    ({"type": "lowercase"}, "the answer is Paris.", False),
    ({"type": "lowercase"}, "42.", True),  # no capital letter in it
    ({"type": "uppercase"}, "PARIS, FRANCE!", True),
    ({"type": "uppercase"}, "PARIs", False),
    # words that must not, or must, appear: whole words, any case
    ({"type": "forbidden_words", "words": ["capital"]}, "Paris.", True),
    ({"type": "forbidden_words", "words": ["capital", "city"]}, "The CAPITAL is Paris.", False),
    ({"type": "forbidden_words", "words": ["cat"]}, "Concatenate them.", True),
    ({"type": "keywords", "words": ["answer", "Paris"]}, "My answer: paris.", True),
    ({"type": "keywords", "words": ["answer", "Paris"]}, "Paris.", False),
    ({"type": "keywords", "words": ["New York"]}, "I love new york!", True),
    # start and end phrases: surrounding whitespace and quotes aside, any case (as IFEval)
    ({"type": "ends_with", "phrase": "Hope that helps."}, "Paris. hope that helps.  ", True),
    ({"type": "ends_with", "phrase": "Hope that helps."}, '"Paris. Hope that helps."', True),
    ({"type": "ends_with", "phrase": "Hope that helps."}, "Hope that helps. Paris.", False),
    ({"type": "starts_with", "phrase": "Answer:"}, "  answer: Paris.", True),
    ({"type": "starts_with", "phrase": "Answer:"}, "My answer: Paris.", False),
    # commas
    ({"type": "no_commas"}, "Paris is in France.", True),
    ({"type": "no_commas"}, "Paris, France.", False),
    # paragraphs: separated by blank lines or a *** / --- divider
    ({"type": "paragraphs", "count": 2}, "Paris.\n\nIt is big.", True),
    ({"type": "paragraphs", "count": 2}, "Paris.\n***\nIt is big.", True),
    ({"type": "paragraphs", "count": 2}, "\n\nParis.\n \n\n\nIt is big.\n\n", True),
    ({"type": "paragraphs", "count": 2}, "Paris.\nIt is big.", False),
    ({"type": "paragraphs", "count": 2}, "a\n\nb\n\nc", False),
])
def test_each_checker(instruction, response, followed):
    assert instructions_problem([instruction]) is None
    assert follows(instruction, response) is followed


@pytest.mark.parametrize("kind", list(INSTRUCTION_TYPES))
def test_an_empty_response_follows_no_instruction(kind):
    """As IFEval: else saying nothing would pass 'no commas', 'at most N words', 'forbidden words'."""
    example = {"count": 1, "limit": 5, "words": ["x"], "phrase": "x", "keys": ["x"]}
    instruction = {"type": kind, **{p: example[p] for p in INSTRUCTION_TYPES[kind].params}}
    assert instructions_problem([instruction]) is None
    assert not follows(instruction, "") and not follows(instruction, "  \n ", loose=True)


# -- per prompt: strict and loose ------------------------------------------------------------------
JSON_ANSWER = {"type": "json", "keys": ["answer"]}
ENDS_DONE = {"type": "ends_with", "phrase": "Done."}
NO_COMMAS = {"type": "no_commas"}


@pytest.mark.parametrize("instructions, response, strict, loose", [
    ([JSON_ANSWER], '{"answer": "Paris"}', 1.0, 1.0),
    ([JSON_ANSWER], 'Sure, here it is:\n{"answer": "Paris"}', 0.0, 1.0),  # a first line of chatter
    ([ENDS_DONE], "Paris. **Done.**", 0.0, 1.0),  # markdown emphasis
    ([NO_COMMAS], "Paris.\nAsk me again, any time.", 0.0, 1.0),  # a last line
    ([NO_COMMAS], "Paris, France.", 0.0, 0.0),  # no variant without the comma
    ([JSON_ANSWER, NO_COMMAS], 'Here you go, friend:\n{"answer": "Paris"}', 0.0, 1.0),  # each instruction on its own variant
    ([JSON_ANSWER, NO_COMMAS], '{"answer": "Paris", "extra": 1}', 0.0, 0.0),  # one of two followed
    ([JSON_ANSWER, {"type": "max_words", "limit": 1}], "", 0.0, 0.0),
])
def test_prompt_strict_and_loose(instructions, response, strict, loose):
    doc = {"prompt": "q", "instructions": instructions}
    assert METRICS["prompt_strict"](doc, response) == strict
    assert METRICS["prompt_loose"](doc, response) == loose
    assert strict <= loose  # loose only ever accepts more


def test_loose_variants_are_ifevals():
    variants = loose_variants("Sure:\n**Paris**\nBye")
    assert variants == ["Sure:\n**Paris**\nBye", "**Paris**\nBye", "Sure:\n**Paris**", "**Paris**",
                        "Sure:\nParis\nBye", "Paris\nBye", "Sure:\nParis", "Paris"]


def test_instruction_metrics_apply_only_to_documents_with_that_instruction():
    doc = {"instructions": [{"type": "max_words", "limit": 3}, {"type": "no_commas"}, {"type": "no_commas"}]}
    assert METRICS["instruction_max_words"](doc, "Paris, France.") == 1.0
    assert METRICS["instruction_no_commas"](doc, "Paris, France.") == 0.0
    assert METRICS["prompt_strict"](doc, "Paris, France.") == 0.0
    assert METRICS["instruction_bullets"](doc, "- Paris") is None  # not asked: left out of the mean
    for metric in (*PROMPT_METRICS, "instruction_json"):
        assert METRICS[metric]({"prompt": "q"}, "Paris.") is None
        assert METRICS[metric]({"prompt": "q", "instructions": None}, "Paris.") is None
    # As `datasets` may hand a document over: the parameters of other types filled with None.
    padded = {"instructions": [{"type": "bullets", "count": 2, "limit": None, "words": None, "keys": None, "phrase": None}]}
    assert METRICS["instruction_bullets"](padded, "- a\n- b") == 1.0


# -- the shipped suite --------------------------------------------------------------------------
def test_the_shipped_instruction_suite_matches_its_generator_and_its_targets_follow_it():
    rows = instruction_suite()
    shipped = [json.loads(line) for line in INSTRUCTION_SUITE_FILE.read_text().splitlines()]
    assert shipped == rows == instruction_suite(), "regenerate with: python -m posttrain.eval.suites"
    held_out = {r["prompt"] for r in world.eval_rows("skills")}
    assert len(rows) > 40 and all(any(r["prompt"].startswith(q) for q in held_out) for r in rows)
    types = {i["type"] for r in rows for i in r["instructions"]}
    assert types == set(INSTRUCTION_TYPES)  # every instruction type is asked for
    assert any(len(r["instructions"]) > 1 for r in rows)
    for r in rows:  # each target follows its row's instructions, strictly: the suite asks for nothing impossible
        assert instructions_problem(r["instructions"]) is None
        assert METRICS["prompt_strict"](r, r["target"]) == 1.0, r
        assert METRICS["prompt_strict"](r, "") == 0.0
    info = metric_info(["world_instructions"])["world_instructions"]
    assert set(info) == {*PROMPT_METRICS, *(f"instruction_{t}" for t in INSTRUCTION_TYPES)}
    assert all(m == {"higher_is_better": True, "group": "instruction following"} for m in info.values())


# -- a suite of your own with instructions -------------------------------------------------------
OWN_ROWS = [
    {"prompt": "What is the capital of France? Do not use any commas.", "target": "Paris.",
     "instructions": [{"type": "no_commas"}]},
    {"prompt": "What is the opposite of hot? Answer in at most 3 words, in lowercase.", "target": "cold.",
     "instructions": [{"type": "max_words", "limit": 3}, {"type": "lowercase"}]},
    {"prompt": 'What color is grass? Answer in JSON with the key "answer".', "target": '{"answer": "green"}',
     "instructions": [{"type": "json", "keys": ["answer"]}]},
    {"prompt": "What number comes after 7? Do not use any commas.", "target": "8.", "instructions": [{"type": "no_commas"}]},
    {"prompt": "What is the capital of Peru?", "target": "Lima."},  # no instructions: exact_match only
]
OWN_SUITE = {"task": "my_instructions", "data": "my_instructions.jsonl", "prompt_field": "prompt", "target_field": "target",
             "metrics": {"exact_match": {"higher_is_better": True, "group": "skills"}, "instructions": {"higher_is_better": True}}}


def _write_suite(root, rows=OWN_ROWS, suite=OWN_SUITE):
    folder = root / "mine"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_instructions.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    (folder / "my_instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_the_instructions_shorthand_names_every_metric_the_data_can_measure(tmp_path):
    tasks = _write_suite(tmp_path / "tasks")
    spec = load_task_spec(local_tasks([tasks])["my_instructions"])
    assert list(spec["metrics"]) == ["exact_match", "prompt_strict", "prompt_loose", "instruction_json",
                                     "instruction_max_words", "instruction_lowercase", "instruction_no_commas"]
    assert spec["metrics"]["instruction_json"] == {"group": "instruction following", "higher_is_better": True}
    assert spec["metrics"]["exact_match"] == {"higher_is_better": True, "group": "skills"}


@pytest.mark.parametrize("row, message", [
    ({"instructions": [{"type": "no_commas"}, {"type": "bulets", "count": 3}]},
     "instructions.1.type: unknown instruction type 'bulets' (did you mean 'bullets'?); known: json, bullets,"),
    ({"instructions": [{"type": "bullets", "count": "3"}]}, "instructions.0.count: expected an integer, got '3'"),
    ({"instructions": [{"type": "max_words", "limit": 0}]}, "instructions.0.limit: expected an integer >= 1, got 0"),
    ({"instructions": [{"type": "max_words", "limt": 5}]},
     "instructions.0.limt: unknown parameter of 'max_words' (did you mean 'limit'?); 'max_words' takes limit"),
    ({"instructions": [{"type": "max_words"}]}, "instructions.0: missing parameter 'limit' of 'max_words' (at most `limit` words)"),
    ({"instructions": [{"type": "forbidden_words", "words": "capital"}]},
     "instructions.0.words: expected a non-empty list of non-empty strings, got 'capital'"),
    ({"instructions": [{"type": "lowercase", "count": 1}]}, "instructions.0.count: unknown parameter of 'lowercase'; 'lowercase' takes no parameters"),
    ({"instructions": [{"limit": 3}]}, "instructions.0: missing 'type' (one of json, bullets,"),
    ({"instructions": {"type": "no_commas"}}, "instructions: expected a list of instructions, got {'type': 'no_commas'}"),
])
def test_a_bad_instruction_is_one_line_naming_file_line_and_key(tmp_path, row, message):
    rows = [OWN_ROWS[0], {"prompt": "What is the capital of Spain?", "target": "Madrid.", **row}]
    tasks = _write_suite(tmp_path / "tasks", rows)
    with pytest.raises(RecipeError) as err:
        load_task_spec(local_tasks([tasks])["my_instructions"])
    assert f"{tasks / 'mine' / 'my_instructions.jsonl'}:2: {message}" in str(err.value)
    assert "\n" not in str(err.value)


def test_an_instruction_metric_no_document_can_measure_is_refused(tmp_path):
    suite = {**OWN_SUITE, "metrics": {"instruction_bullets": {}}}
    tasks = _write_suite(tmp_path / "tasks", suite=suite)
    with pytest.raises(RecipeError, match="metrics.instruction_bullets: no document of my_instructions.jsonl has a 'bullets' "
                                          r"instruction, so it would never be measured \(its documents' types: json, max_words"):
        load_task_spec(local_tasks([tasks])["my_instructions"])
    tasks = _write_suite(tmp_path / "plain", rows=[OWN_ROWS[-1]], suite={**OWN_SUITE, "metrics": {"prompt_strict": {}}})
    with pytest.raises(RecipeError, match="metrics.prompt_strict: no document of my_instructions.jsonl carries `instructions`"):
        load_task_spec(local_tasks([tasks])["my_instructions"])


def test_a_bad_instruction_in_a_suite_is_one_line_at_validate(tmp_path, write_recipe):
    rows = [*OWN_ROWS[:2], {"prompt": "Name three colors.", "instructions": [{"type": "bullets", "count": 3}, {"type": "bulets"}]}]
    tasks = _write_suite(tmp_path / "tasks", rows)
    path = write_recipe(tiny_recipe(eval={"kind": "eval", "task_paths": [str(tasks)], "tasks": ["world_skills", "my_instructions"]}))
    result = run_cli("validate", str(path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: {path}: stages.eval.tasks.1: {tasks / 'mine' / 'my_instructions.jsonl'}:3: "
                               "instructions.1.type: unknown instruction type 'bulets' (did you mean 'bullets'?)")


def _gated(tasks, gates) -> dict:
    recipe = tiny_recipe(eval={"kind": "eval", "task_paths": [str(tasks)], "tasks": ["world_instructions", "my_instructions"],
                               "limit": LIMIT})
    recipe["profiles"] = {"ship": {"stages": ["eval"], "gates": gates}}
    recipe["default_profile"] = "ship"
    return recipe


LIMIT = 4
GATES = [{"metric": "world_instructions/prompt_strict", "model": "base", "op": ">=", "threshold": 0.0},
         {"metric": "world_instructions/instruction_json", "model": "base", "op": ">=", "threshold": 0.0},
         {"metric": "my_instructions/prompt_loose", "model": "base", "op": ">=", "threshold": 0.0},
         {"metric": "my_instructions/instruction_no_commas", "model": "base", "op": ">=", "threshold": 0.0}]


def test_instruction_metrics_are_gateable_and_checked_at_validation(tmp_path, write_recipe):
    tasks = _write_suite(tmp_path / "tasks")
    recipe = load_recipe(write_recipe(_gated(tasks, GATES)))
    assert [g.metric for g in recipe.spec.profiles["ship"].gates] == [g["metric"] for g in GATES]
    for metric, hint in (("world_instructions/prompt_stric", "world_instructions/prompt_strict"),
                         ("my_instructions/instruction_bullets", None)):  # no document of the suite has a bullets instruction
        with pytest.raises(RecipeError) as err:
            load_recipe(write_recipe(_gated(tasks, [{"metric": metric, "model": "base", "op": ">=", "threshold": 0}])))
        assert f"gates.0.metric: '{metric}' is not measured by stage 'eval'" in str(err.value)
        if hint:
            assert f"(did you mean '{hint}'?)" in str(err.value)


# -- evaluated for real -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def instructions_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("instructions")
    tasks = _write_suite(root / "tasks")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_gated(tasks, GATES), sort_keys=False))
    out = root / "run"
    result = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return tasks, out


def test_instruction_metrics_on_the_embedded_model_agree_with_the_saved_samples(instructions_run):
    tasks, out = instructions_run
    results = json.loads((out / "results.json").read_text())
    evaluation = results["evaluation"]
    scores = evaluation["models"]["base"]
    samples = [json.loads(line) for line in (out / "eval" / "samples" / "base.jsonl").read_text().splitlines()]
    sources = {"world_instructions": instruction_suite(), "my_instructions": OWN_ROWS}
    for task, rows in sources.items():
        docs = rows[:LIMIT]
        own = [s for s in samples if s["task"] == task]
        assert [s["prompt"] for s in own] == [d["prompt"] for d in docs] and scores[task]["n"] == LIMIT
        declared = metric_info([task], [tasks])[task]
        measured = {m for m in scores[task] if m in declared}
        # A per-type metric is measured on the documents that carry that instruction: here, of the first LIMIT.
        assert measured == {m for m in declared if any(METRICS[m](d, "x") is not None for d in docs)}
        assert {*PROMPT_METRICS, "instruction_json"} <= measured
        for metric in measured:
            values = [METRICS[metric](d, s["response"].strip()) for d, s in zip(docs, own)]
            values = [v for v in values if v is not None]
            assert scores[task][metric] == pytest.approx(sum(values) / len(values)), (task, metric)
            assert 0.0 <= scores[task][metric] <= 1.0
            assert f"{metric}_stderr" in scores[task]
            if declared[metric]["group"] == "instruction following":
                assert evaluation["higher_is_better"][task][metric] is True
        assert scores[task]["prompt_strict"] <= scores[task]["prompt_loose"]
    assert evaluation["groups"]["world_instructions"]["prompt_strict"] == "instruction following"
    assert evaluation["groups"]["my_instructions"] == {"exact_match": "skills",
                                                       **{m: "instruction following" for m in metric_info(["my_instructions"], [tasks])["my_instructions"]
                                                          if m != "exact_match"}}
    release = results["release"]
    assert release["releasable"] and [g["value"] for g in release["gates"]] == [
        scores["world_instructions"]["prompt_strict"], scores["world_instructions"]["instruction_json"],
        scores["my_instructions"]["prompt_loose"], scores["my_instructions"]["instruction_no_commas"]]
    assert "instruction following" in (out / "report.md").read_text()

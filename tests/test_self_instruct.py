"""The self_instruct data stage: a teacher writes instruction rows from seed tasks (posttrain/stages/self_instruct.py).

The teacher is a real local HTTP server speaking the OpenAI chat completions protocol whose replies are
a function of the request (so runs repeat exactly), or the embedded model generating on this machine.
The server's instructions are built to trip every filter: near-copies of listed tasks, tasks about
pictures, one-word tasks, empty outputs, outputs that repeat their input, answers cut off at the limit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rouge_score import rouge_scorer

from conftest import FAULT_PLUGIN, REPO, run_cli, run_cli_process, tiny_recipe

SEEDS = REPO / "tests" / "data" / "self_instruct_seeds.jsonl"
KEY = "sk-test-0123456789abcdefSECRET"  # what the server requires; must appear in no file a run writes
KEY_ENV = "SELF_INSTRUCT_TEST_KEY"

NEW_TASKS = [  # distinct enough from each other and from the seeds (ROUGE-L well below 0.7)
    "Write a recipe for pancakes.", "Explain the rules of chess to a child.", "List ways to save water at home.",
    "Draft a polite complaint letter about a late parcel.", "Summarize the history of tea in China.",
    "Give reasons to learn a second language.", "Plan a rainy weekend for two friends.", "Explain how bicycles stay upright.",
    "Compose a poem about autumn leaves.", "Suggest good names for a small bakery.", "Describe the benefits of walking daily.",
    "Make a checklist for moving house.", "Convert the temperature from Celsius to Fahrenheit.", "Find the largest number in the list.",
    "Recommend three novels for a long flight.", "Outline a speech for a school graduation.", "Count the vowels in the word.",
    "Create a grocery list for a week of dinners.", "Tell a joke about penguins.", "Predict tomorrow's weather from these clues.",
    "Correct the grammar of this paragraph.", "Propose a name for a new board game.", "Estimate how long a road trip takes.",
    "Invent a riddle whose answer is a candle.", "Shorten this email without losing its meaning.", "Rank these fruits by sweetness.",
    "Choose a gift for a retiring teacher.", "Break a big goal into weekly steps.", "Spot the odd one out among these animals.",
    "Answer the trivia question about planets.",
]


def _digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def teacher_reply(prompt: str) -> tuple[str, str]:
    """(content, finish_reason) for a request: fixed in advance, so every run gets the same."""
    h = _digest(prompt)
    if prompt.startswith("Come up with a new task"):
        listed = re.findall(r"^Task \d+: (.*)$", prompt, flags=re.MULTILINE)
        kind = h % 10
        if kind == 0:
            return f"Task {len(listed) + 1}: {listed[h % len(listed)]}", "stop"  # a copy of a listed task
        if kind == 1:
            return "Describe the picture of a sunset over the sea.", "stop"
        if kind == 2:
            return "Dance.", "stop"
        if kind == 3:
            return "Classify the sentiment of the tweet as positive or negative.", "stop"
        return f"Task {len(listed) + 1}: {NEW_TASKS[(h >> 8) % len(NEW_TASKS)]}\nTask 99: ignored", "stop"
    if prompt.startswith("Can the task be regarded"):
        last = prompt.rsplit("Task:", 1)[1]
        return ("Yes" if "positive or negative" in last else "No"), "stop"
    if prompt.startswith("Given the classification task"):
        return "Positive\nInput: What a lovely sunny day!", "stop"
    if prompt.startswith("Write an example input"):
        return ("Some notes about the topic" if _task_number(prompt.rsplit("Task:", 1)[1]) % 6 in (2, 3) else "None"), "stop"
    kind = _task_number(prompt) % 6  # an answer to the instruction (and its input)
    if kind == 0:
        return "", "stop"
    if kind == 1:
        return "Here is the start of a very long answer that", "length"
    if kind == 2 and "\n\n" in prompt:
        return prompt.split("\n\n", 1)[1], "stop"  # repeats its input
    if kind == 3:
        return prompt.split("\n\n", 1)[0], "stop"  # repeats its instruction
    return f"Answer {h % 1000}: here is a short, complete reply.", "stop"


def _task_number(text: str) -> int:
    """Which of NEW_TASKS the text starts with (-1: none): decides what the server answers for it."""
    return next((i for i, task in enumerate(NEW_TASKS) if text.strip().startswith(task)), -1)


class _Teacher(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests = self.failed_once = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.models: set[str] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _Teacher

    def log_message(self, *args):
        pass

    def _reply(self, status: int, payload: dict, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server = self.server
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._reply(401, {"error": {"message": "Incorrect API key provided"}})
        with server.lock:
            server.requests += 1
            first = server.requests == 1
            server.failed_once += first
        if first:  # overloaded once: the client must wait and retry
            return self._reply(503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"})
        prompt = request["messages"][0]["content"]
        content, finish = teacher_reply(prompt)
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(content.split())}
        with server.lock:
            server.models.add(request["model"])
            server.prompt_tokens += usage["prompt_tokens"]
            server.completion_tokens += usage["completion_tokens"]
        self._reply(200, {"id": "c", "object": "chat.completion", "model": request["model"], "usage": usage,
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}]})


@pytest.fixture
def teacher():
    server = _Teacher()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _recipe(server: _Teacher, write_recipe, **overrides) -> Path:
    stage = {"kind": "self_instruct", "seed_tasks": str(SEEDS), "num_instructions": 8, "batch_size": 3, "prompt_tasks": 5,
             "prompt_seed_tasks": 3, "few_shot": 2, "held_out": 2,
             "endpoint": {"base_url": server.base_url, "model": "teacher-1", "api_key_env": KEY_ENV, "backoff_s": 0.01}, **overrides}
    return write_recipe(tiny_recipe(gen=stage))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _manifest(run: Path) -> dict:
    return json.loads((run / "gen" / "stage.json").read_text())


def test_endpoint_teacher_rows_accounting_and_novelty(teacher, write_recipe, tmp_path):
    recipe, out = _recipe(teacher, write_recipe), tmp_path / "run"
    result = run_cli("run", str(recipe), "--output", str(out), "--quiet", env={KEY_ENV: KEY})
    assert result.returncode == 0, result.stderr

    candidates = _lines(out / "gen" / "candidates.jsonl")
    metrics = _manifest(out)["metrics"]
    kept = [c for c in candidates if c["kept"]]
    dropped = [c for c in candidates if not c["kept"]]
    # Every candidate is kept or dropped with its one reason, and the counts say so.
    assert len(kept) + len(dropped) == len(candidates) == metrics["candidates"]
    assert metrics["kept"] == len(kept) == 8 and metrics["dropped"] == len(dropped)
    assert all(c["reason"] is None for c in kept) and all(c["reason"] for c in dropped)
    by_reason = {r: sum(c["reason"] == r for c in dropped) for r in {c["reason"] for c in dropped}}
    assert by_reason == metrics["dropped_by_reason"] == _manifest(out)["data"]["dropped"]
    # The server's traps were each caught by their filter.
    for reason in ("similar_to_existing", "unsupported_modality", "instruction_too_short", "empty_output", "output_cut_off",
                   "output_copies_input", "output_copies_instruction"):
        assert by_reason.get(reason, 0) > 0, (reason, by_reason)
    assert not any("picture" in c["instruction"] for c in kept) and all(c["output"].strip() for c in kept)

    # No kept instruction is a near-duplicate (ROUGE-L >= 0.7) of a seed task or of another kept one.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = [json.loads(line)["instruction"] for line in SEEDS.read_text().splitlines()]
    for a, b in itertools.combinations([c["instruction"] for c in kept], 2):
        assert scorer.score(a, b)["rougeL"].fmeasure < 0.7, (a, b)
    for a in (c["instruction"] for c in kept):
        assert max(scorer.score(s, a)["rougeL"].fmeasure for s in seeds) < 0.7, a
    # Classification tasks were written output first: the label is the answer, the input was written for it.
    classified = [c for c in kept if c["is_classification"]]
    assert classified and all(c["output"] == "Positive" and c["input"] == "What a lovely sunny day!" for c in classified)

    # data.jsonl: chat rows a later stage trains on; the last `held_out` kept rows are in held_out.jsonl instead.
    rows, held_out = _lines(out / "gen" / "data.jsonl"), _lines(out / "gen" / "held_out.jsonl")
    assert len(rows) == metrics["rows_written"] == 6 and len(held_out) == 2
    expected = [[c["instruction"] + (f"\n\n{c['input']}" if c["input"] else ""), c["output"]] for c in kept]
    assert [[r["messages"][0]["content"], r["messages"][1]["content"]] for r in rows + held_out] == expected
    # Token counts are the endpoint's own (its `usage`), and the one refused request was retried.
    assert teacher.failed_once == 1 and teacher.models == {"teacher-1"}
    assert metrics["teacher_prompt_tokens"] == teacher.prompt_tokens and metrics["teacher_completion_tokens"] == teacher.completion_tokens
    assert metrics["teacher_requests"] == teacher.requests - 1
    assert not (out / "gen" / "generation").exists()  # the partial ledger is gone once the rows are committed

    # The key never reaches a file the run wrote.
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path

    # Unchanged recipe: cached, the teacher is not asked again.
    asked = teacher.requests
    again = run_cli("run", str(recipe), "--output", str(out), "--quiet", env={KEY_ENV: KEY})
    assert again.returncode == 0 and "gen (self_instruct): cached" in again.stderr and teacher.requests == asked


@pytest.mark.slow  # a subprocess (the fault plugin's SIGKILL) and three runs
def test_a_killed_generation_resumes_without_repeating_or_losing_rows(teacher, write_recipe, tmp_path):
    recipe = _recipe(teacher, write_recipe, held_out=0)
    reference = tmp_path / "reference"
    assert run_cli("run", str(recipe), "--output", str(reference), "--quiet", env={KEY_ENV: KEY}).returncode == 0

    out = tmp_path / "run"
    killed = run_cli_process("run", str(recipe), "--output", str(out), "--quiet",
                             env={"PYTHONPATH": str(FAULT_PLUGIN), "POSTTRAIN_TEST_FAULT": "gen:kill_at_step=2", KEY_ENV: KEY})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ledger = (out / "gen" / "generation" / "candidates.jsonl").read_text().splitlines()
    assert [json.loads(line)["committed_round"] for line in ledger if "committed_round" in line] == [1, 2]
    assert not (out / "gen" / "data.jsonl").exists()
    with open(out / "gen" / "generation" / "candidates.jsonl", "a") as f:
        f.write('{"round": 3, "instruction": "half a line')  # what a kill in the middle of a write leaves

    resumed = run_cli("run", str(recipe), "--output", str(out), "--quiet", env={KEY_ENV: KEY})
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after round 2" in resumed.stderr
    # Exactly the rows and the accounting of the run that was never interrupted: none repeated, none lost.
    assert (out / "gen" / "data.jsonl").read_text() == (reference / "gen" / "data.jsonl").read_text()
    assert (out / "gen" / "candidates.jsonl").read_text() == (reference / "gen" / "candidates.jsonl").read_text()
    prompts = [r["messages"][0]["content"] for r in _lines(out / "gen" / "data.jsonl")]
    assert len(prompts) == len(set(prompts)) == 8


@pytest.mark.slow  # generation and a training step on the embedded model
def test_the_embedded_model_as_teacher_feeds_a_later_sft_stage(write_recipe, tmp_path):
    stage = {"kind": "self_instruct", "teacher": "base", "seed_tasks": str(SEEDS), "num_instructions": 6, "batch_size": 6,
             "prompt_tasks": 3, "prompt_seed_tasks": 3, "few_shot": 2, "temperature": 1.0, "min_instruction_words": 1,
             "max_instruction_tokens": 12, "max_input_tokens": 8, "max_output_tokens": 12, "drop_cut_off": False, "max_candidates": 60}
    sft = {"kind": "sft", "data": "stage:gen", "max_steps": 1, "batch_size": 4, "logging_steps": 1, "save_steps": 0}
    recipe, out = write_recipe(tiny_recipe(gen=stage, sft=sft)), tmp_path / "run"
    result = run_cli("run", str(recipe), "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = _manifest(out)
    metrics, candidates = manifest["metrics"], _lines(out / "gen" / "candidates.jsonl")
    assert metrics["kept"] + metrics["dropped"] == metrics["candidates"] == len(candidates)
    assert metrics["teacher"] == "base" and metrics["teacher_requests"] > 0 and metrics["teacher_completion_tokens"] > 0
    rows = _lines(out / "gen" / "data.jsonl")
    assert len(rows) == metrics["rows_written"] == sum(c["kept"] for c in candidates)
    sft_manifest = json.loads((out / "sft" / "stage.json").read_text())
    assert sft_manifest["status"] == "completed" and sft_manifest["data"]["rows_read"] == len(rows)


@pytest.mark.parametrize("change, expected", [
    ({"teacher": "base"}, "gen.teacher: name one teacher"),
    ({"endpoint": None}, "gen.teacher: name one teacher"),
    ({"held_out": 8}, "gen.held_out: holds out 8 of 8 rows"),
    ({"seed_tasks": "missing_seeds.jsonl"}, "gen.seed_tasks"),
])
def test_bad_settings_are_one_line(teacher, write_recipe, change, expected):
    result = run_cli("validate", str(_recipe(teacher, write_recipe, **change)))
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_key_in_the_recipe_is_refused_without_repeating_it(teacher, write_recipe):
    recipe = _recipe(teacher, write_recipe, endpoint={"base_url": teacher.base_url, "model": "m", "api_key": KEY})
    result = run_cli("validate", str(recipe))
    assert result.returncode == 2 and "api_key_env" in result.stderr and KEY not in result.stderr + result.stdout


def test_an_unset_key_variable_stops_before_any_request(teacher, write_recipe, tmp_path):
    result = run_cli("run", str(_recipe(teacher, write_recipe)), "--output", str(tmp_path / "run"), "--quiet", env={KEY_ENV: None})
    assert result.returncode == 2 and f"environment variable {KEY_ENV} is not set" in result.stderr
    assert teacher.requests == 0


def test_a_bad_seed_task_names_its_line(teacher, write_recipe, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(SEEDS.read_text().splitlines()[0] + "\n" + '{"instruction": "Say hi.", "instances": [{"input": ""}]}\n')
    result = run_cli("run", str(_recipe(teacher, write_recipe, seed_tasks=str(seeds))), "--output", str(tmp_path / "run"), "--quiet",
                     env={KEY_ENV: KEY})
    assert result.returncode == 2 and f"{seeds}:2: field 'instances[0]' must be an object with a string 'output'" in result.stderr
    assert teacher.requests == 0


def test_a_missing_gguf_teacher_is_one_line_at_validate(teacher, write_recipe, tmp_path):
    missing = tmp_path / "teacher.gguf"
    result = run_cli("validate", str(_recipe(teacher, write_recipe, endpoint=None, teacher=str(missing))))
    assert result.returncode == 2 and "gen.teacher" in result.stderr and str(missing) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("reply, instruction", [
    ("Task 9: Write a haiku about rain.\nTask 10: Another one.", "Write a haiku about rain."),
    ("Here's a task for the exercises you requested:\n\n9. Name two rivers in Africa.", "Name two rivers in Africa."),
    ('- "Describe your favourite season."', "Describe your favourite season."),
    ("", ""),
])
def test_the_new_instruction_is_read_from_the_reply(reply, instruction):
    from posttrain.self_instruct.prompts import read_instruction

    assert read_instruction(reply) == instruction


@pytest.mark.parametrize("reply, expected", [
    (" None", ""), ("Not applicable.", ""), ("Task: Explain why the sky is blue.", ""),  # the teacher went on listing tasks: no input
    ("The cat sat on the mat.\nOutput: A cat.", "The cat sat on the mat."), ("Input: 3:45 pm", "3:45 pm"),
])
def test_the_instance_input_is_read_from_the_reply(reply, expected):
    from posttrain.self_instruct.prompts import read_input

    assert read_input(reply) == expected


def test_the_distillation_recipe_validates_and_its_held_out_prompts_are_novel():
    result = run_cli("validate", "recipes/distill.yaml")
    assert result.returncode == 0, result.stderr
    assert "4 stages: teach, seeds_only, student, eval" in result.stdout + result.stderr
    # The eval suite is the teacher's held-out rows: none of its instructions is a near-copy of a seed task.
    held_out = _lines(REPO / "recipes" / "distill" / "eval" / "distill_held_out.jsonl")
    assert len(held_out) == 12 and all(row["prompt"].strip() and row["answer"].strip() for row in held_out)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = [json.loads(line)["instruction"] for line in (REPO / "recipes" / "distill" / "seed_tasks.jsonl").read_text().splitlines()]
    assert max(scorer.score(seed, row["prompt"])["rougeL"].fmeasure for seed in seeds for row in held_out) < 0.7

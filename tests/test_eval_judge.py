"""The eval stage's pairwise judge: a chat model of the run, or an OpenAI-compatible endpoint.

The judge here is (a) the embedded SFT model, whose replies are noise: every verdict must then be
unparseable and counted as a tie; and (b) a real HTTP server on 127.0.0.1 speaking the chat
completions shape, whose verdicts are known in advance: the shorter answer wins, except on the
France prompts (it always names the answer shown first: a known position bias), the Spain prompts
(a reply that names no verdict) and the Germany prompts (a tie). It fails the first request with
HTTP 500 (retried), checks the API key, and counts the requests and how many were in flight at once.

One short SFT run is shared (its eval judged by the embedded model); the endpoint runs work on
copies of it, so only the eval stage runs again (its models come from the evaluation cache).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from conftest import quick_sft, run_cli, tiny_recipe
from posttrain.errors import RecipeError
from posttrain.eval.judge import DEFAULT_TEMPLATE, parse_verdict, render
from posttrain.eval.winrate import wilson_interval

LIMIT = 8  # the first 8 world_skills prompts: France x2, Italy x2, Spain x2, Germany x2
KEY_ENV = "POSTTRAIN_TEST_JUDGE_KEY"  # not one of posttrain.secrets' well-known names: redaction cannot be what hides it
KEY = "sk-test-" + secrets.token_hex(16)


# -- the verdict parser ---------------------------------------------------------------------------
@pytest.mark.parametrize("reply, verdict", [
    ("A", "A"), ("b", "B"), ("**B**", "B"), ("(A)", "A"), ("Answer: B.", "B"), (" tie ", "tie"), ("Equal.", "tie"),
    ("[[A]]", "A"), ("Verdict: B", "B"), ("Verdict: tie", "tie"), ("The better answer is A.", "A"),
    ("Answer A is better than answer B.", "A"), ("B. It is shorter and correct.", "B"), ("B is better", "B"), ("It's a tie.", "tie"),
    # what SmolLM2-135M wrote as a judge (docs/real-model.md)
    ("The answer that is better is B.", "B"), ("The correct answer is: B", "B"), ("A is the better answer.", "A"),
    ("The best response is A because it is shorter.", "A"),
    # no verdict: noise, the article "A", both letters claimed, nothing at all
    ("........", None), ("CountCountCount", None), ("A lot of people think so", None), ("[[A]] or maybe [[B]]", None), ("", None),
    ("Hard to say without more context.", None), (None, None),
])
def test_verdicts_are_read_robustly_and_noise_is_no_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_the_prompt_is_filled_in_one_pass():
    text = render(DEFAULT_TEMPLATE, "Give JSON {\"a\": 1}", "{answer_b}", "B's answer")
    assert "Give JSON {\"a\": 1}" in text and "[Answer A]\n{answer_b}\n" in text and "[Answer B]\nB's answer\n" in text


def test_a_local_judge_cuts_both_answers_to_fit_its_context_and_keeps_the_instruction():
    from posttrain.embedded.model import load_embedded_tokenizer
    from posttrain.eval.judge import JudgeSettings, LocalJudge
    from posttrain.model_store import ModelRef
    from posttrain.stage import Role

    tokenizer = load_embedded_tokenizer()
    judge = LocalJudge(None, ModelRef("sft", "unused", Role.POLICY, "f"), JudgeSettings(model="sft"))
    question = "What is the capital of France?"
    short, cut = judge._fit(tokenizer, (question, "Paris.", "Rome."), 240)
    assert not cut and len(short) < 240
    long_a, long_b = "Paris is the capital. " * 60, "Rome. " * 80
    ids, cut = judge._fit(tokenizer, (question, long_a, long_b), 240)
    text = tokenizer.decode(ids)
    assert cut and len(ids) <= 240 and question in text and text.rstrip().endswith("Reply with exactly one of: A, B, tie.<|end|><|assistant|>")
    kept_a = text.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
    kept_b = text.split("[Answer B]\n")[1].split("\n\nWhich answer")[0]
    assert long_a.startswith(kept_a) and long_b.startswith(kept_b.rstrip()) and 0 < len(kept_a) < len(long_a)
    tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (kept_a, kept_b)]
    assert abs(tokens[0] - tokens[1]) <= 1  # the same number of tokens each (up to a token merged at the cut)


# -- the recipe ------------------------------------------------------------------------------------
def _eval(**judge) -> dict:
    return {"kind": "eval", "models": ["base", "sft"], "compare_to": "base", "tasks": ["world_skills"], "limit": LIMIT, "judge": judge}


def _endpoint(url: str, **settings) -> dict:
    return {"endpoint": {"base_url": url, "model": "judge-1", "api_key_env": KEY_ENV, "backoff_s": 0.05, "concurrency": 2, **settings}}


@pytest.mark.parametrize("judge, expected", [
    ({"model": "sftt"}, "stages.eval.judge.model: 'sftt' is neither an earlier policy-training stage (did you mean 'sft'?)"),
    ({"model": "eval"}, "stages.eval.judge.model: 'eval' is not an earlier policy-training stage (it comes later in the recipe)"),
    ({"model": "judges/none.gguf"}, "stages.eval.judge.model: 'judges/none.gguf': a .gguf file is loaded only as the recipe's base"),
    ({"model": "someorg/not-downloaded"}, "not in the local hub cache (HF_HUB_OFFLINE=1)"),
    ({"model": "sft", "endpoint": {"base_url": "http://127.0.0.1:1/v1", "model": "m"}}, "stages.eval.judge.model: name one judge"),
    ({}, "stages.eval.judge.model: name one judge"),
    ({"model": "sft", "prompt": "Which is better? {question}"}, "stages.eval.judge.prompt: the judging prompt lacks {answer_a}, {answer_b}"),
    ({"endpoint": {"base_url": "127.0.0.1/v1", "model": "m"}}, "stages.eval.judge.endpoint.base_url: not an http(s) URL"),
    ({"endpoint": {"base_url": "http://x/v1", "model": "m", "api_key_env": KEY}}, "stages.eval.judge.endpoint.api_key_env: names the environment variable"),
    ({"endpoint": {"base_url": "http://x/v1", "model": "m", "api_key": KEY}}, "stages.eval.judge.endpoint.api_key: a key is never written in a recipe"),
], ids=["stage-typo", "later-stage", "gguf", "hub-id-offline", "two-judges", "no-judge", "template", "url", "key-as-env-name", "key-in-recipe"])
def test_a_bad_judge_is_one_line_when_the_recipe_loads(write_recipe, judge, expected):
    from posttrain.recipe import load_recipe

    path = write_recipe(tiny_recipe(sft=quick_sft(), eval=_eval(**judge)))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert expected in message and "\n" not in message and KEY not in message


def test_the_baseline_must_be_evaluated(write_recipe):
    from posttrain.recipe import load_recipe

    path = write_recipe(tiny_recipe(sft=quick_sft(), eval={**_eval(model="sft"), "compare_to": "sft", "models": ["sft"]}))
    with pytest.raises(RecipeError, match="stages.eval.judge: nothing to judge"):
        load_recipe(path)


def test_a_judge_stage_is_a_declared_input_its_fingerprint_covers(write_recipe, tmp_path):
    """The judge model is linked through the stage contract (StageInputs.models_read): a dependency of the eval
    stage even when it is not evaluated, so retraining it re-runs the evaluation; a directory judge is its files."""
    from posttrain.pipeline import Pipeline
    from posttrain.recipe import load_recipe

    recipe = tiny_recipe(judge=quick_sft(), sft=quick_sft(**{"from": "base"}), eval={**_eval(model="judge")})
    path = write_recipe(recipe)

    def eval_fingerprint(*overrides):
        planned = load_recipe(path, list(overrides))
        assert planned.stages[-1].dependencies == ["base", "sft", "judge"]
        return next(p.fingerprint for p in Pipeline(planned, tmp_path / "run").plan() if p.stage.name == "eval")

    assert eval_fingerprint() == eval_fingerprint() != eval_fingerprint("stages.judge.learning_rate=0.002")
    assert "judge_win_rate" in load_recipe(path).stages[-1].stage_cls.measured_metrics(load_recipe(path).stages[-1].config)

    directory = tmp_path / "judge_model"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    path = write_recipe({**recipe, "stages": {"sft": quick_sft(), "eval": _eval(model=str(directory))}}, "dir.yaml")
    before = next(p.fingerprint for p in Pipeline(load_recipe(path), tmp_path / "run").plan() if p.stage.name == "eval")
    (directory / "model.safetensors").write_bytes(b"new weights")
    after = next(p.fingerprint for p in Pipeline(load_recipe(path), tmp_path / "run").plan() if p.stage.name == "eval")
    assert before != after


# -- (a) the embedded model as the judge -------------------------------------------------------------
def _recipe(judge: dict) -> dict:
    recipe = tiny_recipe(sft=quick_sft(max_steps=12, learning_rate=3e-3, logging_steps=3), eval=_eval(**judge))
    recipe["profiles"] = {"ship": {"stages": ["sft", "eval"], "gates": [{"metric": "judge_win_rate", "op": ">=", "threshold": 0.5}]}}
    recipe["default_profile"] = "ship"
    return recipe


def _run(root, name: str, recipe: dict, out, *args, env=None):
    path = root / name
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return run_cli("run", str(path), "--output", str(out), "--quiet", *args, env=env)


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    out = root / "run"
    result = _run(root, "recipe.yaml", _recipe({"model": "sft", "max_new_tokens": 8}), out)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out


def _cached_replies(out) -> list[str]:
    files = list((out / "eval" / "judge_cache").glob("*.jsonl"))
    assert len(files) == 1
    return [json.loads(line)["reply"] for line in files[0].read_text().splitlines()]


def test_the_embedded_model_judges_noise_which_counts_as_unparseable_ties(judged_run):
    _, out = judged_run
    judged = _results(out)["evaluation"]["pairwise_judge"]
    assert (judged["judge"], judged["kind"], judged["max_new_tokens"]) == ("sft", "model", 8)
    w = judged["win_rates"]["sft_vs_base"]
    # Each of the 8 prompts judged in both orders; 16 distinct (prompt, A, B) triples asked, each once.
    assert (w["n"], w["verdicts"]) == (LIMIT, 2 * LIMIT)
    replies = _cached_replies(out)
    assert len(replies) == 2 * LIMIT == judged["cache"]["judged"] and judged["cache"]["from_cache"] == 0
    # The tiny model writes no verdict: every reply is unparseable, and each counts as a tie.
    assert all(parse_verdict(r) is None for r in replies), replies
    assert w["unparseable"] == 2 * LIMIT and w["decisive"] == 0 and w["first_position_rate"] is None
    assert (w["wins"], w["ties"], w["losses"], w["win_rate"]) == (0, LIMIT, 0, 0.5)
    assert w["flipped"] == 0 and w["flip_rate"] == 0.0
    assert w["ci95"] == pytest.approx(list(wilson_interval(LIMIT / 2, LIMIT)))
    # Gateable: judge_win_rate of sft (the release candidate) against base.
    gate = _results(out)["release"]["gates"][0]
    assert (gate["metric"], gate["model"], gate["value"], gate["passed"]) == ("judge_win_rate", "sft", 0.5, True)
    report = (out / "report.md").read_text()
    assert "### Pairwise judge: sft" in report
    assert f"| sft | base | {LIMIT} | 0.500 | {w['ci95'][0]:.3f}–{w['ci95'][1]:.3f} | 0 / {LIMIT} / 0 | 16 of 16 | 0 of {LIMIT} (0.000) | " \
           "n/a (no decisive verdict) |" in report
    assert 'data-judge-candidate="sft" data-value="0.5"' in (out / "report.html").read_text()


# -- (b) an OpenAI-compatible endpoint --------------------------------------------------------------
_PROMPT = re.compile(r"\[Question\]\n(.*)\n\n\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich answer", re.DOTALL)


def endpoint_verdict(question: str, answer_a: str, answer_b: str) -> str:
    """The test endpoint's judgement, known in advance."""
    if "France" in question:
        return "A"  # whatever it is shown first: a pure position bias
    if "Spain" in question:
        return "Hard to say without more context."  # names no verdict
    if "Germany" in question:
        return "tie"
    if len(answer_a) == len(answer_b):
        return "tie"
    return "[[A]]" if len(answer_a) < len(answer_b) else "Verdict: B"  # the shorter answer


class _Endpoint(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests = self.in_flight = self.max_in_flight = 0
        self.prompts: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: _Endpoint

    def log_message(self, *args):
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server = self.server
        with server.lock:
            server.requests += 1
            number = server.requests
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(0.05)  # long enough for concurrent requests to overlap
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            auth = self.headers.get("Authorization", "")
            if self.path != "/v1/chat/completions":
                return self._reply(404, {"error": {"message": f"no route {self.path}"}})
            if auth != f"Bearer {KEY}":  # echoes what it got, as careless servers do: posttrain must not repeat it
                return self._reply(401, {"error": {"message": f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"}})
            if number == 1:
                return self._reply(500, {"error": {"message": "the first request always fails"}})
            prompt = request["messages"][0]["content"]
            server.prompts.append(prompt)
            assert request["model"] == "judge-1" and request["temperature"] == 0
            content = endpoint_verdict(*_PROMPT.search(prompt).groups())
            return self._reply(200, {"id": f"c{number}", "object": "chat.completion", "model": request["model"],
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]})
        finally:
            with server.lock:
                server.in_flight -= 1


@pytest.fixture
def endpoint():
    """A fresh server per test: its first request fails, and its counts start at zero."""
    server = _Endpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _copy(judged_run, tmp_path):
    root, source = judged_run
    out = tmp_path / "run"
    shutil.copytree(source, out, ignore=shutil.ignore_patterns(".lock"))
    return root, out


def _samples(out, model: str) -> dict[str, str]:
    lines = (out / "eval" / "samples" / f"{model}.jsonl").read_text().splitlines()
    return {s["prompt"]: s["response"] for s in map(json.loads, lines)}


def _files_containing(directory, secret: str) -> list[str]:
    return [str(p) for p in directory.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_an_endpoint_judges_both_orders_and_its_position_bias_is_measured(judged_run, endpoint, tmp_path):
    root, out = _copy(judged_run, tmp_path)
    result = _run(root, "endpoint.yaml", _recipe(_endpoint(endpoint.base_url)), out, env={KEY_ENV: KEY})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sft (sft): cached" in result.stderr  # only the evaluation ran again

    results = _results(out)
    judged = results["evaluation"]["pairwise_judge"]
    assert judged["kind"] == "endpoint" and judged["judge"] == f"endpoint judge-1 at {endpoint.base_url}"
    w = judged["win_rates"]["sft_vs_base"]
    # 16 verdicts (8 prompts, both orders), plus the first request, which failed with 500 and was retried.
    assert judged["cache"] == {"judged": 16, "from_cache": 0} and endpoint.requests == 17 and len(endpoint.prompts) == 16
    assert endpoint.max_in_flight == 2  # the concurrency limit, used
    # Every pair was asked in both orders.
    sft, base = _samples(out, "sft"), _samples(out, "base")
    asked = {_PROMPT.search(p).groups() for p in endpoint.prompts}
    assert asked == {(q, sft[q], base[q]) for q in sft} | {(q, base[q], sft[q]) for q in sft}

    # Known in advance: France (2 prompts) flips with the order -> ties; Spain (2) unparseable -> ties (4 verdicts);
    # Germany (2) ties; Italy (2) the shorter answer wins in both orders.
    italy = [q for q in sft if "Italy" in q]
    assert len(italy) == 2 and all(len(sft[q]) != len(base[q]) for q in italy)  # the precondition of a decisive Italy pair
    italy_wins = sum(len(sft[q]) < len(base[q]) for q in italy)
    assert (w["n"], w["verdicts"], w["wins"], w["ties"], w["losses"]) == (8, 16, italy_wins, 6, 2 - italy_wins)
    assert w["unparseable"] == 4
    assert (w["flipped"], w["flip_rate"]) == (2, 0.25)  # the France pairs
    # Decisive verdicts: France 4 (all "A"), Italy 4 (one A and one B per pair): 6 of 8 name the first answer.
    assert (w["decisive"], w["first_position_rate"]) == (8, 0.75)
    assert w["win_rate"] == (italy_wins + 3) / 8
    assert w["ci95"] == pytest.approx(list(wilson_interval(italy_wins + 3, 8)))

    report = (out / "report.md").read_text()
    assert f"### Pairwise judge: endpoint judge-1 at {endpoint.base_url}" in report
    assert (f"| sft | base | 8 | {w['win_rate']:.3f} | {w['ci95'][0]:.3f}–{w['ci95'][1]:.3f} | {italy_wins} / 6 / {2 - italy_wins} | "
            "4 of 16 | 2 of 8 (0.250) | 0.750 of 8 decisive |") in report
    assert "Verdicts: 16 asked of the judge, 0 from the verdict cache" in report
    gate = results["release"]["gates"][0]
    assert gate["value"] == w["win_rate"] and gate["passed"] == (w["win_rate"] >= 0.5)

    # The key was sent (the server checked it) and is nowhere under the run directory, nor in the output.
    assert _files_containing(out, KEY) == [] and KEY not in result.stdout + result.stderr

    # Unchanged pairs are never judged again: the stage cached, then re-run by force with every verdict from the cache.
    again = _run(root, "endpoint.yaml", _recipe(_endpoint(endpoint.base_url)), out, env={KEY_ENV: KEY})
    assert again.returncode == 0 and "eval (eval): cached" in again.stderr and endpoint.requests == 17
    forced = _run(root, "endpoint.yaml", _recipe(_endpoint(endpoint.base_url)), out, "--force", "eval", env={KEY_ENV: KEY})
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert endpoint.requests == 17
    rejudged = _results(out)["evaluation"]["pairwise_judge"]
    assert rejudged["cache"] == {"judged": 0, "from_cache": 16} and rejudged["win_rates"] == judged["win_rates"]
    # Another judge identity (here: a longer verdict allowed) is judged afresh.
    longer = _run(root, "endpoint.yaml", _recipe(_endpoint(endpoint.base_url) | {"max_new_tokens": 12}), out, env={KEY_ENV: KEY})
    assert longer.returncode == 0 and endpoint.requests == 33
    assert _results(out)["evaluation"]["pairwise_judge"]["cache"] == {"judged": 16, "from_cache": 0}
    assert _files_containing(out, KEY) == []


def test_a_missing_key_is_one_line_before_anything_trains(endpoint, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(_endpoint(endpoint.base_url)), sort_keys=False))
    before = endpoint.requests
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "run"), "--quiet", env={KEY_ENV: None})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: judge.endpoint.api_key_env: environment variable {KEY_ENV} is not set (or empty); export the judge "
                      "endpoint's API key in it (it is read from there and never written)"]
    assert not (tmp_path / "run" / "sft" / "model").exists() and endpoint.requests == before


def test_a_rejected_key_is_one_line_and_never_repeated(judged_run, endpoint, tmp_path):
    root, out = _copy(judged_run, tmp_path)
    wrong = "sk-wrong-" + secrets.token_hex(16)
    result = _run(root, "endpoint.yaml", _recipe(_endpoint(endpoint.base_url, max_retries=0)), out, env={KEY_ENV: wrong})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "HTTP 401" in errors[0] and f"check the key in {KEY_ENV}" in errors[0], result.stderr
    assert "Incorrect API key provided: ***" in errors[0]  # the server echoed the key; the line does not
    assert wrong not in result.stdout + result.stderr and _files_containing(out, wrong) == []
    assert json.loads((out / "eval" / "stage.json").read_text())["status"] == "failed"

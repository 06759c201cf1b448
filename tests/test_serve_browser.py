"""`posttrain serve`: a real server process on a tiny trained run's two models, driven over HTTP and
through the page in a real (headless Chromium) browser; what people did is checked in the SQLite store.

The browser test needs Debian's chromium and chromium-driver (apt-get install chromium
chromium-driver) and selenium (the test extra); it is skipped, saying so, when they are missing.
"""

from __future__ import annotations

import json
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import call_api, quick_dpo, quick_sft, run_cli, serve_process, tiny_recipe
from posttrain.feedback.store import FeedbackStore

TOKEN = "test-token-" + uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`posttrain serve` (a separate process, with a token) on a run whose sft and align stages trained 2 steps each."""
    import yaml

    root = tmp_path_factory.mktemp("serve")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(sft=quick_sft(max_steps=2), align=quick_dpo(max_steps=2)), sort_keys=False))
    result = run_cli("run", str(recipe), "--output", str(root / "run"), "--quiet")
    assert result.returncode == 0, result.stderr
    store = root / "feedback.sqlite"
    with serve_process(str(root / "run"), "--port", "0", "--feedback", str(store), "--max-new-tokens", "8", "--token", TOKEN) as (process, url):
        assert TOKEN not in "".join(process.printed)  # the token is never printed
        yield {"url": url, "store": store, "run": root / "run", "process": process}


def call(served, path: str, body=None, token: str | None = TOKEN, data: bytes | None = None) -> tuple[int, object]:
    return call_api(served["url"], path, body, token, data)


HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.mark.slow
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(served):
    status, answer = call(served, "/api/chat", {"model": "sft", "messages": HELLO})
    assert status == 200 and answer["model"] == "sft", answer
    cases = [
        (call(served, "/api/info", token=None), 401, "missing or wrong token"),
        (call(served, "/api/info", token="wrong"), 401, "missing or wrong token"),
        (call(served, "/api/chat", data=b'{"model": "sft", "messages": ['), 400, "the request body is not valid JSON"),
        (call(served, "/api/chat", data=b"[1, 2]"), 400, "the request body must be a JSON object, not list"),
        (call(served, "/api/chat", {"model": "nope", "messages": HELLO}), 400, "unknown model 'nope'; this server has: sft, align"),
        (call(served, "/api/chat", data=json.dumps({"pad": "x" * 300_000}).encode()), 413, "at most 262144 are accepted"),
        (call(served, "/api/chat", {"model": "sft", "messages": [{"role": "user", "content": "y" * 9000}]}), 413,
         "'messages[0]' is 9000 characters; at most 8000 are accepted"),
        (call(served, "/api/chat", {"model": "sft", "messages": HELLO + [{"role": "assistant", "content": "hi"}]}), 400,
         "the last message must be the user's turn"),
        (call(served, "/api/feedback", {"kind": "rating", "answer_id": "f" * 32, "rating": 1}), 404, "is not known to this server"),
        (call(served, "/api/feedback", {"kind": "rating", "answer_id": answer["answer_id"], "rating": 5}), 400, "'rating' must be 1 (up) or -1 (down)"),
        (call(served, "/api/feedback", {"kind": "edit", "answer_id": answer["answer_id"], "correction": 42}), 400,
         "'correction' must be non-empty text"),
        (call(served, "/api/feedback", {"kind": "arena", "answer_id": answer["answer_id"], "other_id": answer["answer_id"], "choice": "a"}),
         400, "an arena vote names side A's answer"),
        (call(served, "/api/export?format=csv"), 400, "'format' must be one of: thumbs, pairs, kto, openai"),
    ]
    for (status, body), expected_status, message in cases:
        assert status == expected_status and message in body["error"], (status, body)
    assert served["process"].poll() is None
    status, info = call(served, "/api/info")
    assert status == 200 and info["models"] == ["sft", "align"] and info["arena"] is True


@pytest.mark.slow
def test_twenty_writers_over_http_lose_and_duplicate_nothing(served):
    status, answer = call(served, "/api/chat", {"model": "align", "messages": HELLO})
    assert status == 200
    before = FeedbackStore(served["store"]).count()
    events = [[f"w{w}-{n}-{uuid.uuid4().hex[:6]}" for n in range(50)] for w in range(20)]

    def writer(w: int) -> list[tuple[int, object]]:
        return [call(served, "/api/feedback", {"kind": "rating", "answer_id": answer["answer_id"], "rating": 1 if n % 2 else -1,
                                               "event_id": event, "user_id": f"writer-{w}"})
                for n, event in enumerate(events[w])]

    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = [reply for replies in pool.map(writer, range(20)) for reply in replies]
    assert [status for status, _ in replies] == [200] * 1000 and all(body["new"] for _, body in replies)
    stored = [j for j in FeedbackStore(served["store"]).judgements() if j.user_id.startswith("writer-")]
    assert len(stored) == 1000 == FeedbackStore(served["store"]).count() - before
    assert sorted(j.event_id for j in stored) == sorted(e for w in events for e in w)
    assert {(j.answer.model, j.answer.stage) for j in stored} == {("align", "align")}
    # Retried requests (the same event ids again) store nothing new.
    with ThreadPoolExecutor(max_workers=20) as pool:
        again = list(pool.map(writer, range(2)))
    assert all(body["new"] is False for replies in again for _, body in replies)
    assert FeedbackStore(served["store"]).count() - before == 1000


def _browser(download_dir):
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("headless Chromium is not installed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False})
    return webdriver.Chrome(options=options, service=Service(driver))  # Debian's driver: nothing is downloaded


@pytest.mark.slow
def test_the_page_chats_rates_edits_flags_and_compares_in_a_real_browser(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser(tmp_path)
    try:
        wait = WebDriverWait(browser, 240)
        find = browser.find_element
        browser.get(served["url"] + f"?token={TOKEN}")
        wait.until(lambda b: find(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        assert TOKEN not in browser.current_url  # taken out of the address bar
        user = browser.execute_script("return localStorage.getItem('posttrain-user')")

        def answers(log: str) -> list:
            return browser.find_elements(By.CSS_SELECTOR, f"{log} .message.assistant")

        def send(field: str, button: str, text: str, log: str, count: int):
            find(By.ID, field).send_keys(text)
            find(By.ID, button).click()
            wait.until(lambda b: len(answers(log)) >= count)

        def judge(element, button: str, note: str):
            element.find_element(By.CSS_SELECTOR, button).click()
            wait.until(lambda b: note in element.text)

        # One model: two turns, rate both, edit the first, flag the second.
        Select(find(By.ID, "model-select")).select_by_value("align")
        send("chat-input", "chat-send", "What is the capital of France?", "#chat-log", 1)
        send("chat-input", "chat-send", "And of Italy?", "#chat-log", 2)
        first, second = answers("#chat-log")
        # textContent: exactly what the page got (selenium's .text would normalise whitespace and control characters)
        first_text, second_text = (browser.execute_script("return arguments[0].querySelector('.text').textContent", e)
                                   for e in (first, second))
        judge(first, ".rate-up", "rated up")
        judge(second, ".rate-down", "rated down")
        first.find_element(By.CSS_SELECTOR, ".edit").click()
        editor = first.find_element(By.CSS_SELECTOR, ".edit-text")
        editor.clear()
        editor.send_keys("Paris.")
        judge(first, ".edit-save", "edited")
        judge(second, ".flag", "flagged as unsafe")

        # Two models side by side, anonymous until the vote.
        find(By.ID, "tab-arena").click()
        send("arena-input", "arena-send", "Tell me a joke.", "#arena-log-a", 1)
        wait.until(lambda b: answers("#arena-log-b"))
        labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#arena-view .message.assistant .who")]
        assert labels == ["Model A", "Model B"] and find(By.ID, "arena-reveal").text == ""  # anonymous until the vote
        find(By.ID, "vote-b").click()
        wait.until(lambda b: find(By.ID, "arena-reveal").text)
        reveal = find(By.ID, "arena-reveal").text
        a_model, b_model = reveal.removeprefix("Model A was ").removesuffix(".").split("; Model B was ")
        assert {a_model, b_model} == {"sft", "align"}

        # What was collected, and its download.
        find(By.ID, "tab-collected").click()
        wait.until(lambda b: "judgements collected" in find(By.ID, "collected-total").text)
        counts = {row.get_attribute("data-model"): row.text for row in browser.find_elements(By.CSS_SELECTOR, "#collected-counts tbody tr")}
        assert {"sft", "align"} <= set(counts)
        assert find(By.ID, "collected-recent").text.count("\n") >= 4
        Select(find(By.ID, "export-format")).select_by_value("pairs")
        find(By.ID, "export-download").click()
        download = tmp_path / "feedback-pairs.jsonl"
        wait.until(lambda b: download.is_file() and download.stat().st_size > 0)
    finally:
        browser.quit()

    mine = [j for j in FeedbackStore(served["store"]).judgements() if j.user_id == user]
    assert [j.kind for j in mine] == ["rating", "rating", "edit", "flag", "arena"]
    up, down, edit, flag, arena = mine
    assert (up.rating, up.answer.text, up.answer.model) == (1, first_text, "align")
    assert (down.rating, down.answer.text) == (-1, second_text)
    assert down.answer.conversation == [{"role": "user", "content": "What is the capital of France?"},
                                        {"role": "assistant", "content": first_text}, {"role": "user", "content": "And of Italy?"}]
    assert (edit.answer.text, edit.correction) == (first_text, "Paris.")
    assert (flag.flag, flag.answer.text) == ("unsafe", second_text)
    assert (arena.choice, arena.answer.model, arena.other.model) == ("b", a_model, b_model)
    assert arena.answer.conversation == arena.other.conversation == [{"role": "user", "content": "Tell me a joke."}]
    fingerprint = json.loads((served["run"] / "align" / "stage.json").read_text())["fingerprint"]
    assert {(j.source, j.answer.stage, j.answer.fingerprint) for j in mine[:4]} == {("serve", "align", fingerprint)}
    assert up.answer.sampling["max_new_tokens"] == 8
    # The download is the store's pairs: the edit prefers "Paris." to the first answer.
    pairs = [json.loads(line) for line in download.read_text().splitlines()]
    assert {"prompt": [{"role": "user", "content": "What is the capital of France?"}],
            "chosen": [{"role": "assistant", "content": "Paris."}],
            "rejected": [{"role": "assistant", "content": first_text}]} in pairs


def test_serving_beyond_this_machine_without_a_token_is_refused(tmp_path):
    result = run_cli("serve", str(tmp_path), "--host", "0.0.0.0")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --host 0.0.0.0 makes the page reachable from other machines; give --token T "
                                     "(or set POSTTRAIN_SERVE_TOKEN) so that only people with the token can use it")


def test_an_unknown_stage_in_models_is_one_line(tmp_path):
    for name in ("sft", "align"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stage.json").write_text(json.dumps({"name": name, "role": "policy"}))
    result = run_cli("serve", str(tmp_path), "--models", "sft,algin")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --models: 'algin' is not a stage of {tmp_path} (did you mean 'align'?); its stages: align, sft"

"""Pairwise judging: a chat model or an OpenAI-compatible endpoint compares two models' answers.

The eval stage's `judge:` compares every evaluated model (but `base` and the baseline) with its
`compare_to` baseline on the same held-out prompts. Each pair is judged twice, the candidate's
answer shown first (A) and then second (B), so a judge's preference for a position cancels out
and is measured:

  - each order's verdict scores the candidate 1 (its answer preferred), 0.5 (a tie, or a verdict
    the parser could not read: counted as such) or 0; the pair scores the mean of both orders;
  - a pair above 0.5 is a win, below a loss, at 0.5 a tie; the win rate counts ties half and
    its 95% interval is Wilson's (posttrain.eval.winrate, as for the reward model's win rate);
  - position bias: the share of pairs whose two orders disagree (`flip_rate`), and the share of
    decisive verdicts (A or B) that named the answer shown first (`first_position_rate`; 0.5 is
    none).

Verdicts are cached in `<eval stage>/judge_cache/<judge>.jsonl`, one line per verdict, keyed by the
judge's identity (model fingerprint, or endpoint URL and model; generation settings), the judging
prompt template, the prompt and both answers in their order. The line holds the judge's raw reply
(parsed when read, so a better parser needs no new requests): an unchanged pair is never judged
again, and an interrupted run keeps every verdict it received.

The endpoint's API key is read from the environment variable the recipe names (`api_key_env`) when
a request is made and is never written: not in the config, the cache, results or messages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from posttrain.errors import RecipeError, StageError
from posttrain.results import JudgeWinRate, PairwiseJudge, Sample, VerdictCacheStats, pair_samples
from posttrain.stage import BASE, setting_error

PLACEHOLDERS = ("question", "answer_a", "answer_b")
DEFAULT_TEMPLATE = """You are comparing two answers to the same question. Decide which answer is better: correct, helpful, safe and to the point.

[Question]
{question}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Which answer is better? Reply with exactly one of: A, B, tie."""
CACHE_DIRNAME = "judge_cache"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


# -- the recipe's `judge:` ------------------------------------------------------------------------
class EndpointSettings(BaseModel):
    """An OpenAI-compatible chat completions endpoint (`POST <base_url>/chat/completions`)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="The API's base URL, e.g. https://api.openai.com/v1 (requests go to <base_url>/chat/completions).")
    model: str = Field(min_length=1, description="The model name the endpoint serves, e.g. gpt-4o-mini.")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key (e.g. OPENAI_API_KEY); "
                                                      "read when requests are made, never written. None: no Authorization header.")
    api_key: Any = Field(None, exclude=True, description="Refused: a key is never written in a recipe; use api_key_env.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for one response.")
    max_retries: int = Field(4, ge=0, description="Retries of a request that failed with a timeout, a connection error, HTTP 429 or 5xx.")
    backoff_s: float = Field(1.0, ge=0, description="Wait before the first retry; doubled for each further one (a Retry-After header wins).")
    concurrency: int = Field(4, gt=0, description="Requests in flight at once.")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            raise setting_error("base_url", "not an http(s) URL; e.g. https://api.openai.com/v1")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        # The message never repeats the value: it may be the key itself, pasted in the wrong place.
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise setting_error("api_key_env", "names the environment variable that holds the key (e.g. OPENAI_API_KEY), "
                                               "not the key itself; export the key and put the variable's name here")
        return value

    @field_validator("api_key")
    @classmethod
    def _no_key_in_recipes(cls, value):
        if value is not None:
            raise setting_error("api_key", "a key is never written in a recipe (it would be copied into manifests); export it in an "
                                           "environment variable and name that variable in api_key_env")
        return None

    def label(self) -> str:
        """The endpoint in words, for results and reports: the URL without credentials, query or fragment."""
        parts = urlsplit(self.base_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"endpoint {self.model} at {urlunsplit((parts.scheme, netloc, parts.path, '', ''))}"


class JudgeSettings(BaseModel):
    """`judge:` of an eval stage: a local chat model (`model:`) or an endpoint (`endpoint:`), and how to judge."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="A chat model: base, an earlier policy stage, a model directory or a hub id (org/name).")
    endpoint: EndpointSettings | None = Field(None, description="An OpenAI-compatible endpoint: base_url, model, api_key_env, ...")
    max_new_tokens: int = Field(16, gt=0, description="Longest verdict the judge may write.")
    prompt: str = Field(DEFAULT_TEMPLATE, description="The judging prompt template: {question}, {answer_a} and {answer_b} are filled in.")
    max_pairs: int | None = Field(None, gt=0, description="Judge at most this many prompts per model, taken in turn from each task "
                                                          "(the same prompts in every run).")
    batch_size: int = Field(8, gt=0, description="Prompts generated at once by a local judge model.")

    @model_validator(mode="after")
    def _one_judge(self):
        if (self.model is None) == (self.endpoint is None):
            raise setting_error("model", "name one judge: model: <stage, directory or hub id>, or endpoint: {base_url, model, api_key_env}"
                                + ("" if self.model is None else ", not both"))
        missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in self.prompt]
        if missing:
            raise setting_error("prompt", f"the judging prompt lacks {', '.join('{' + p + '}' for p in missing)}; it must contain "
                                          f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
        return self

    def check_ready(self) -> None:
        """What can only be known when the run starts: the endpoint's key is in the environment."""
        env = self.endpoint.api_key_env if self.endpoint else None
        if env and not os.environ.get(env):
            raise RecipeError(f"judge.endpoint.api_key_env: environment variable {env} is not set (or empty); export the judge "
                              "endpoint's API key in it (it is read from there and never written)")

    @property
    def template_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode()).hexdigest()


# -- verdicts -------------------------------------------------------------------------------------
def render(template: str, question: str, answer_a: str, answer_b: str) -> str:
    """The judging prompt: placeholders filled in one pass (braces inside the texts stay as they are)."""
    values = {"question": question, "answer_a": answer_a, "answer_b": answer_b}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


_TIE_WORDS = r"tie|draw|equal|equally good|the same|neither|both"
_WHOLE = re.compile(r"[\s\W_]*(?:(?:answer|response|option|verdict)\s*[:\-]?\s*)?\(?\s*(A|B)\s*\)?[\s\W_]*", re.IGNORECASE)
_WHOLE_TIE = re.compile(r"[\s\W_]*(?:(?:verdict)\s*[:\-]?\s*)?(?:it'?s\s+a\s+)?(?:" + _TIE_WORDS + r")[\s\W_]*", re.IGNORECASE)
_MARKED = [  # in order of trust; the first that finds a verdict decides (two different verdicts: none)
    re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.IGNORECASE),  # [[A]], the MT-Bench convention
    re.compile(r"\b(?:verdict|winner|choice|decision|final answer|(?:better|best|correct) (?:answer|response|one)"
               r"|(?:answer|response|one) that is (?:better|best))\s*(?:is)?\s*[:=\-]?\s*\**\s*(?:answer\s+)?\(?(A|B|tie)\b",
               re.IGNORECASE),
    re.compile(r"\b(?:answer|response|option)\s+\(?(A|B)\)?\s+is\s+(?:better|preferred|the better)", re.IGNORECASE),
    re.compile(r"^[\s*_#>\-]*\(?(A|B)\)?(?:\s+is\s+(?:the\s+)?(?:better|best|preferred)|[.:)]|\s*$)", re.MULTILINE),  # "B. It is shorter" (capitals only)
]
_TIE_PHRASE = re.compile(r"\b(?:it'?s a tie|(?:they are|both are|both answers are) (?:equally good|equal|the same))\b", re.IGNORECASE)


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'tie' from a judge's reply, or None when it names none (or contradicts itself).

    Read: the letter alone ("A", "**B**", "(a)", "Answer: B."), a tie word alone ("tie", "Equal."),
    "[[A]]", "Verdict: B", "The better answer is A", "The correct answer is: B", "The answer that is
    better is B", "Answer A is better", a line opening with a capital A or B and then '.', ':', ')',
    "is better" or "is the better answer" ("B. It is shorter"), "it's a tie". A
    capital A that opens a sentence ("A lot of ...") is the article, not a verdict."""
    if not text or not text.strip():
        return None
    text = text.strip()
    whole = _WHOLE.fullmatch(text)
    if whole:
        return whole.group(1).upper()
    if _WHOLE_TIE.fullmatch(text):
        return "tie"
    for pattern in _MARKED:
        found = {m.group(1).upper() if m.group(1).lower() != "tie" else "tie" for m in pattern.finditer(text)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None  # names both: not a verdict
    return "tie" if _TIE_PHRASE.search(text) else None


# -- the cache ------------------------------------------------------------------------------------
class VerdictCache:
    """`<eval stage>/judge_cache/<judge digest>.jsonl`, one {"key", "reply", "truncated"} line per verdict, appended
    as verdicts arrive. Without a directory (the eval stage's `cache: false`) it only computes keys."""

    def __init__(self, directory: Path | None, judge_identity: str, template: str):
        self._identity = (judge_identity, hashlib.sha256(template.encode()).hexdigest())
        digest = hashlib.sha256(judge_identity.encode()).hexdigest()[:20]
        self.path = Path(directory) / f"{digest}.jsonl" if directory is not None else None
        self.replies: dict[str, tuple[str, bool]] = {}  # key -> (the judge's reply, its answers were cut to fit)
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines() if self.path is not None else []
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                row = json.loads(line)
                self.replies[row["key"]] = (str(row["reply"]), bool(row.get("truncated", False)))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line (an interrupted run) is a miss, never an error

    def key(self, question: str, answer_a: str, answer_b: str) -> str:
        return hashlib.sha256(json.dumps([*self._identity, question, answer_a, answer_b]).encode()).hexdigest()

    def add(self, key: str, reply: str, truncated: bool) -> None:
        self.replies[key] = (reply, truncated)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "reply": reply, "truncated": truncated}) + "\n")


# -- judges ---------------------------------------------------------------------------------------
Item = tuple[str, str, str]  # (question, answer_a, answer_b)
OnReply = Callable[[int, str, bool], None]  # (item index, reply, its answers were cut to fit)


class LocalJudge:
    """A chat model of this run (or a directory, or a hub id) that generates verdicts greedily."""

    kind = "model"

    def __init__(self, store, ref, settings: JudgeSettings):
        self.store, self.ref, self.settings = store, ref, settings
        self.label = ref.name
        self.fingerprint = ref.fingerprint
        self.identity = f"model|{ref.fingerprint}|max_new_tokens={settings.max_new_tokens}|greedy"

    def judge(self, items: list[Item], on_reply: OnReply, progress=None) -> None:
        import torch

        if not items:
            return
        tokenizer = self.store.load_tokenizer(self.ref)
        if not tokenizer.chat_template:
            raise StageError(f"judge model '{self.ref.name}' has no chat template; a judge must be a chat model")
        model = self.store.load_model(self.ref)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).eval()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        budget = self._context(model, tokenizer) - self.settings.max_new_tokens
        if budget < 32:
            raise StageError(f"judge model '{self.ref.name}': its context is too short for max_new_tokens={self.settings.max_new_tokens}")
        prompts, cut = zip(*(self._fit(tokenizer, item, budget) for item in items))
        size = self.settings.batch_size
        for start in range(0, len(prompts), size):
            batch = prompts[start:start + size]
            width = max(len(p) for p in batch)
            input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=self.settings.max_new_tokens,
                                     do_sample=False, pad_token_id=pad)
            for j, row in enumerate(out[:, width:]):
                on_reply(start + j, tokenizer.decode(row, skip_special_tokens=True), cut[start + j])
            if progress is not None:
                progress(min(start + size, len(prompts)))

    @staticmethod
    def _context(model, tokenizer) -> int:
        limits = [n for n in (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length)
                  if isinstance(n, int) and 0 < n < 10**7]
        return min(limits) if limits else 4096

    def _fit(self, tokenizer, item: Item, budget: int) -> tuple[list[int], bool]:
        """The chat-formatted judging prompt's tokens, its answers cut (to the same number of tokens
        each) when it would not fit the judge's context; whether they were cut."""
        question, a, b = item

        def encode(answer_a: str, answer_b: str) -> list[int]:
            text = render(self.settings.prompt, question, answer_a, answer_b)
            chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
            return tokenizer(chat, add_special_tokens=False, verbose=False)["input_ids"]

        ids = encode(a, b)
        if len(ids) <= budget:
            return ids, False
        ta, tb = (tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"] for t in (a, b))
        low, high = 0, max(len(ta), len(tb))  # the most tokens per answer that fit
        while low < high:
            mid = (low + high + 1) // 2
            if len(encode(tokenizer.decode(ta[:mid]), tokenizer.decode(tb[:mid]))) <= budget:
                low = mid
            else:
                high = mid - 1
        ids = encode(tokenizer.decode(ta[:low]), tokenizer.decode(tb[:low]))
        return ids[-budget:], True  # the question or template alone too long: its end (the instruction) is kept


class EndpointJudge:
    """An OpenAI-compatible chat completions endpoint.

    HTTP goes through the standard library (urllib.request): neither httpx nor openai is installed in
    this environment (only huggingface_hub's `httpx2` fork, which is not ours to depend on), and one
    JSON POST needs neither. Requests run in a thread pool of `concurrency` workers; a timeout, a
    connection error, HTTP 429 or 5xx is retried with exponential backoff (a Retry-After header wins);
    any other HTTP error stops the stage with one line. The key is never in a message.
    """

    kind = "endpoint"

    def __init__(self, settings: JudgeSettings):
        self.settings, self.endpoint = settings, settings.endpoint
        self.label = self.endpoint.label()
        self.url = self.endpoint.base_url.rstrip("/") + "/chat/completions"
        # Identity: where and which model, and how it is asked; never the key.
        self.identity = f"endpoint|{self.endpoint.base_url.rstrip('/')}|{self.endpoint.model}|max_tokens={settings.max_new_tokens}|temperature=0"
        self.fingerprint = hashlib.sha256(self.identity.encode()).hexdigest()[:16]

    def _key(self) -> str | None:
        env = self.endpoint.api_key_env
        if env is None:
            return None
        key = os.environ.get(env)
        if not key:
            raise StageError(f"judge endpoint: environment variable {env} is not set (or empty); export the API key in it")
        return key

    def _scrub(self, text: str, key: str | None) -> str:
        return text.replace(key, "***") if key else text

    def _ask(self, prompt: str, key: str | None) -> str:
        import http.client
        import urllib.error
        import urllib.request

        body = json.dumps({"model": self.endpoint.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": self.settings.max_new_tokens, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        attempts = self.endpoint.max_retries + 1
        for attempt in range(attempts):
            wait = self.endpoint.backoff_s * 2 ** attempt
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with _opener().open(request, timeout=self.endpoint.timeout_s) as response:
                    payload = response.read()
                return self._content(payload, key)
            except urllib.error.HTTPError as e:
                detail = self._scrub(e.read(300).decode("utf-8", "replace").strip().replace("\n", " "), key)
                problem = f"HTTP {e.code}" + (f": {detail[:200]}" if detail else "")
                if e.code != 429 and e.code < 500:
                    hint = f"; check the key in {self.endpoint.api_key_env}" if e.code in (401, 403) and self.endpoint.api_key_env else ""
                    raise StageError(f"judge {self.label}: {problem}{hint}") from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.strip().isdigit():
                    wait = min(float(retry_after), 60.0)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # timeouts and dropped connections too
                reason = getattr(e, "reason", e)
                problem = self._scrub(f"{type(reason).__name__}: {reason}", key)
            if attempt + 1 < attempts:
                time.sleep(wait)
        raise StageError(f"judge {self.label}: {problem} after {attempts} attempts; the verdicts received so far are cached, "
                         "run again to go on")

    def _content(self, payload: bytes, key: str | None) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            snippet = self._scrub(payload[:120].decode("utf-8", "replace"), key)
            raise StageError(f"judge {self.label}: not an OpenAI chat completions response ({snippet!r})") from None
        if isinstance(content, list):  # content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return self._scrub(content or "", key)  # a reply that repeats the key is not cached with it

    def judge(self, items: list[Item], on_reply: OnReply, progress=None) -> None:
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        if not items:
            return
        key = self._key()
        done = 0
        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency, thread_name_prefix="judge") as pool:
            futures = {pool.submit(self._ask, render(self.settings.prompt, *item), key): i for i, item in enumerate(items)}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
                    on_reply(futures[future], future.result(), False)  # in this thread: the cache has one writer
                    done += 1
                if progress is not None:
                    progress(done)


def _opener():
    """urllib without redirects: a redirected POST would carry the Authorization header to wherever it points."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # the 3xx surfaces as an HTTPError: one line, not retried

    return urllib.request.build_opener(NoRedirect)


def make_judge(settings: JudgeSettings, store, models_read: dict):
    if settings.endpoint is not None:
        return EndpointJudge(settings)
    return LocalJudge(store, models_read[settings.model], settings)


# -- judging the pairs ----------------------------------------------------------------------------
def _select(pairs: list[tuple[Sample, Sample]], max_pairs: int | None) -> list[tuple[Sample, Sample]]:
    """At most `max_pairs` pairs, taken in turn from each task (so every task is represented), in a fixed order."""
    if max_pairs is None or len(pairs) <= max_pairs:
        return pairs
    by_task: dict[str, list] = {}
    for pair in pairs:
        by_task.setdefault(pair[0].task, []).append(pair)
    chosen, i = [], 0
    while len(chosen) < max_pairs:
        for task in sorted(by_task):
            if i < len(by_task[task]) and len(chosen) < max_pairs:
                chosen.append(by_task[task][i])
        i += 1
    return chosen


_CANDIDATE_SCORE = {"A": 1.0, "B": 0.0, "tie": 0.5, None: 0.5}  # the candidate shown first; mirrored when shown second


def judge_models(judge, settings: JudgeSettings, samples: dict[str, list[Sample]], baseline: str, cache_dir: Path | None,
                 reporter=None, label: str = "judge") -> PairwiseJudge:
    """Every evaluated model but base and the baseline against the baseline, each pair in both orders.
    Only verdicts not in the cache are asked for (each distinct one once)."""
    from posttrain.eval.winrate import win_rate

    if baseline not in samples:
        raise StageError(f"judge: the baseline (compare_to: {baseline}) was not evaluated; evaluate it, or set compare_to to a model that is")
    selected = {}
    for name in (n for n in samples if n not in (baseline, BASE)):
        pairs = pair_samples(samples[name], samples[baseline])
        if pairs is None:
            raise StageError(f"judge: models '{name}' and '{baseline}' were not evaluated on the same documents")
        selected[name] = _select(pairs, settings.max_pairs)

    cache = VerdictCache(cache_dir, judge.identity, settings.prompt)
    wanted: dict[str, Item] = {}
    for pairs in selected.values():
        for c, b in pairs:
            for item in ((c.prompt, c.response, b.response), (c.prompt, b.response, c.response)):
                wanted.setdefault(cache.key(*item), item)
    todo = [(k, item) for k, item in wanted.items() if k not in cache.replies]
    from_cache = len(wanted) - len(todo)
    if todo:
        def judge_share(share: list[tuple[str, Item]]) -> list[tuple[str, bool]]:
            """This process's share of the verdicts, each appended to the cache as it arrives (one line per
            verdict, so several processes appending to one file never tear each other's lines)."""
            if reporter is not None:
                reporter.start(label, len(share))
            progress = (lambda done: reporter.update(done, len(share), judge.label)) if reporter is not None else None
            replies: list = [None] * len(share)

            def on_reply(i: int, reply: str, cut: bool) -> None:
                cache.add(share[i][0], reply, cut)
                replies[i] = (reply, cut)

            try:
                judge.judge([item for _, item in share], on_reply, progress)
            except BaseException:
                if reporter is not None:
                    reporter.finish(f"stopped; {sum(r is not None for r in replies)} of {len(share)} verdicts received (cached)")
                raise
            if reporter is not None:
                reporter.finish(f"{len(share)} verdicts from {judge.label}" + (f", {from_cache} from the cache" if from_cache else ""))
            return replies

        from posttrain import distributed

        # Several processes: each judges its share, and every process gets every verdict.
        for (key, _), reply in zip(todo, distributed.shared_map(todo, judge_share)):
            cache.replies[key] = reply

    win_rates = {}
    for name, pairs in selected.items():
        if not pairs:
            continue
        scores, flipped, decisive, first, unparseable, truncated = [], 0, 0, 0, 0, 0
        for c, b in pairs:
            replies = [cache.replies[cache.key(c.prompt, c.response, b.response)], cache.replies[cache.key(c.prompt, b.response, c.response)]]
            first_order, second_order = (parse_verdict(reply) for reply, _ in replies)  # candidate shown first, then baseline first
            s1, s2 = _CANDIDATE_SCORE[first_order], 1.0 - _CANDIDATE_SCORE[second_order]
            scores.append((s1 + s2) / 2)
            flipped += s1 != s2
            for verdict in (first_order, second_order):
                unparseable += verdict is None
                decisive += verdict in ("A", "B")
                first += verdict == "A"
            truncated += sum(cut for _, cut in replies)
        w = win_rate(scores, [0.5] * len(scores), [c.response for c, _ in pairs], [b.response for _, b in pairs])
        win_rates[JudgeWinRate.key(name, baseline)] = JudgeWinRate(
            candidate=name, baseline=baseline, **w, verdicts=2 * w["n"], unparseable=unparseable, flipped=flipped,
            flip_rate=flipped / w["n"], decisive=decisive, first_position_rate=first / decisive if decisive else None, truncated=truncated)
    return PairwiseJudge(
        judge=judge.label, kind=judge.kind, fingerprint=hashlib.sha256(judge.identity.encode()).hexdigest()[:16],
        template_sha256=settings.template_sha256, max_new_tokens=settings.max_new_tokens, max_pairs=settings.max_pairs,
        win_rates=win_rates, cache=VerdictCacheStats(judged=len(todo), from_cache=from_cache),
    )

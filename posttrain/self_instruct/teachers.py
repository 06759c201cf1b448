"""The teacher that writes self-instruct data: a local chat model or an OpenAI-compatible endpoint.

Both take a batch of user messages and return one `Reply` each, and count what they spent
(requests, prompt and completion tokens). A local model generates in batches (left padding);
sampling, when asked for, is seeded by the caller, so a resumed run asks the same questions and
gets the same answers as an uninterrupted one. The endpoint goes through the eval stage's
OpenAI-compatible client (posttrain.eval.judge.EndpointJudge: urllib, timeouts, retries with
backoff, the key read from the environment when a request is made and never written).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from posttrain.errors import StageError


@dataclass(frozen=True)
class Reply:
    text: str
    cut_off: bool  # generation stopped at the token limit, not at the end of the reply


class LocalTeacher:
    """A chat model (with its tokenizer's chat template) generating on this machine."""

    def __init__(self, model, tokenizer, label: str, batch_size: int):
        import torch

        if not tokenizer.chat_template:
            raise StageError(f"teacher '{label}' has no chat template; a self_instruct teacher must be a chat model")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = model.to(self.device).eval()
        self.tokenizer, self.label, self.batch_size = tokenizer, label, batch_size
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        limits = [n for n in (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length) if isinstance(n, int) and 0 < n < 10**7]
        self.context = min(limits) if limits else 4096
        self.tokens: Counter = Counter()

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[Reply]:
        import torch

        budget = self.context - max_new_tokens
        if budget < 16:
            raise StageError(f"teacher '{self.label}': its context ({self.context} tokens) is too short for {max_new_tokens} new tokens")
        encoded = []
        for prompt in prompts:
            chat = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(chat, add_special_tokens=False, verbose=False)["input_ids"]
            encoded.append(ids[-budget:])  # too long: the request's end (the question) is kept
        replies = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.tensor([[self.pad] * (width - len(ids)) + ids for ids in batch], device=self.device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {"do_sample": False}
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + start)  # the same prompts and seed: the same replies, also after a resume
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          pad_token_id=self.pad, **sampling)
            for row in out[:, width:].tolist():
                ended = next((i for i, token in enumerate(row) if token in self.eos), None)
                generated = row if ended is None else row[:ended]
                self.tokens["completion_tokens"] += len(generated) + (ended is not None)
                replies.append(Reply(self.tokenizer.decode(generated, skip_special_tokens=True).strip(), ended is None))
            self.tokens["prompt_tokens"] += sum(len(ids) for ids in batch)
            self.tokens["requests"] += len(batch)
        return replies


class EndpointTeacher:
    """An OpenAI-compatible chat completions endpoint, through the eval stage's client.

    One client per token limit (the shared client reads its limit from its settings); requests run
    `concurrency` at a time, at temperature 0 (the shared client's): the variety of new instructions
    comes from the tasks sampled into each request, as in the paper."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.label = endpoint.label()
        self.tokens: Counter = Counter()
        self._clients: dict[int, object] = {}
        self._lock = threading.Lock()
        self._finish = threading.local()  # the finish_reason of this thread's last response

    def _client(self, max_new_tokens: int):
        if max_new_tokens not in self._clients:
            from posttrain.eval.judge import EndpointJudge, JudgeSettings

            teacher = self

            class Client(EndpointJudge):
                def _content(self, payload: bytes, key):
                    import json

                    text = super()._content(payload, key)  # checks the shape, scrubs the key
                    body = json.loads(payload)
                    usage = body.get("usage") or {}
                    with teacher._lock:
                        teacher.tokens["requests"] += 1
                        for name in ("prompt_tokens", "completion_tokens"):
                            if isinstance(usage.get(name), int):
                                teacher.tokens[name] += usage[name]
                    teacher._finish.reason = (body.get("choices") or [{}])[0].get("finish_reason")
                    return text

            self._clients[max_new_tokens] = Client(JudgeSettings(endpoint=self.endpoint, max_new_tokens=max_new_tokens))
        return self._clients[max_new_tokens]

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, seed: int = 0) -> list[Reply]:
        from concurrent.futures import ThreadPoolExecutor

        client = self._client(max_new_tokens)
        key = client._key()

        def ask(prompt: str) -> Reply:
            try:
                text = client._ask(prompt, key)
            except StageError as e:  # the shared client speaks of a judge
                raise StageError(str(e).replace("judge ", "self_instruct teacher ", 1)) from None
            return Reply(text.strip(), getattr(self._finish, "reason", None) == "length")

        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency, thread_name_prefix="teacher") as pool:
            return list(pool.map(ask, prompts))

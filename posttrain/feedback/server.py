"""`posttrain serve RUN`: a local web page to chat with a run's models and judge their answers.

Chosen: starlette (routing, request parsing, static files) served by uvicorn. They are small,
well kept and widely deployed, and parse HTTP robustly; the stdlib's http.server documents
itself as not meant for anything but local testing, and the page may be opened to a team.
Model calls and SQLite writes block, so they run in starlette's thread pool; the store takes
concurrent writers (see store.py).

The page (static/: plain HTML, CSS and JavaScript, no CDN, nothing fetched from elsewhere)
talks to a small JSON API. Answers are generated and remembered by the server, and feedback
names an answer by its id: the provenance stored with a judgement (model, stage, fingerprint,
sampling) is the server's, never the page's word. In an arena the page never learns which
model wrote which side until the vote is in.

Bound to 127.0.0.1 by default. Bound to any other address it refuses to start without a
token; with a token every API call must carry it (`Authorization: Bearer T`). The token is
never logged (uvicorn's access log, which would show query strings, is off).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import random
import socket
import threading
import uuid
from collections import OrderedDict
from importlib.resources import files
from pathlib import Path

from posttrain.feedback.exporters import FORMATS, export, to_jsonl_text
from posttrain.feedback.models import ChatModel, Sampling, run_models
from posttrain.feedback.store import ARENA_CHOICES, FLAGS, KINDS, Answer, FeedbackError, FeedbackStore, Judgement, check_conversation
from posttrain.run_layout import RunLayout

STATIC = files("posttrain.feedback") / "static"
MAX_BODY_BYTES = 256 * 1024  # a request body larger than this is refused (413) before it is read whole
MAX_TEXT_CHARS = 8000  # one message or corrected answer
MAX_MESSAGES = 200
MAX_REMEMBERED_ANSWERS = 20000  # answers the page may still judge; the oldest are forgotten first


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FeedbackService:
    """What the API does, apart from HTTP: answers remembered by id, arena battles, judgements stored."""

    def __init__(self, models: dict[str, ChatModel], store: FeedbackStore, sampling: Sampling):
        self.models, self.store, self.sampling = models, store, sampling
        self._answers: OrderedDict[str, tuple[Answer, str | None, str | None]] = OrderedDict()  # id -> (answer, battle, side)
        self._battles: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def _remember(self, answer: Answer, battle: str | None = None, side: str | None = None) -> str:
        answer_id = uuid.uuid4().hex
        with self._lock:
            self._answers[answer_id] = (answer, battle, side)
            while len(self._answers) > MAX_REMEMBERED_ANSWERS:
                self._answers.popitem(last=False)
        return answer_id

    def _answer(self, answer_id, field: str) -> tuple[Answer, str | None, str | None]:
        if not isinstance(answer_id, str):
            raise BadRequest(400, f"'{field}' must be the id of an answer this page received")
        with self._lock:
            found = self._answers.get(answer_id)
        if found is None:
            raise BadRequest(404, f"answer '{answer_id[:40]}' is not known to this server (it restarted, or the id is wrong); ask again")
        return found

    def _model(self, name) -> ChatModel:
        if name not in self.models:
            raise BadRequest(400, f"unknown model '{name}'; this server has: {', '.join(self.models)}")
        return self.models[name]

    def _generate(self, model: ChatModel, messages) -> tuple[Answer, int]:
        try:
            return model.reply(_conversation(messages, "messages"), self.sampling)
        except FeedbackError as e:
            raise BadRequest(413 if "too long" in str(e) else 400, str(e)) from None

    def chat(self, body: dict) -> dict:
        model = self._model(body.get("model"))
        answer, dropped = self._generate(model, body.get("messages"))
        return {"answer_id": self._remember(answer), "text": answer.text, "model": model.name, "dropped": dropped}

    def arena(self, body: dict) -> dict:
        if len(self.models) < 2:
            raise BadRequest(400, "the arena needs two models; start the server with --models naming two stages")
        battle = body.get("battle")
        if battle is None:
            battle = uuid.uuid4().hex
            with self._lock:
                self._battles[battle] = tuple(random.sample(list(self.models), 2))
        with self._lock:
            names = self._battles.get(battle) if isinstance(battle, str) else None
        if names is None:
            raise BadRequest(404, "this arena battle is not known to the server (it restarted?); start a new one")
        out = {"battle": battle}
        for side, name, field in (("a", names[0], "messages_a"), ("b", names[1], "messages_b")):
            answer, _ = self._generate(self.models[name], body.get(field))
            out[side] = {"answer_id": self._remember(answer, battle, side), "text": answer.text}
        return out

    def feedback(self, body: dict) -> dict:
        kind = body.get("kind")
        if kind not in KINDS:
            raise BadRequest(400, f"'kind' must be one of: {', '.join(KINDS)}")
        answer, battle, side = self._answer(body.get("answer_id"), "answer_id")
        fields = {"user_id": _text(body.get("user_id", "anonymous-web"), "user_id", 100), "source": "serve"}
        if body.get("event_id") is not None:
            fields["event_id"] = _text(body["event_id"], "event_id", 100)
        if body.get("comment") is not None:
            fields["comment"] = _text(body["comment"], "comment", MAX_TEXT_CHARS)
        reveal = None
        if kind == "rating":
            if body.get("rating") not in (1, -1) or isinstance(body.get("rating"), bool):
                raise BadRequest(400, "'rating' must be 1 (up) or -1 (down)")
            fields["rating"] = body["rating"]
        elif kind == "edit":
            fields["correction"] = _text(body.get("correction"), "correction", MAX_TEXT_CHARS)
        elif kind == "flag":
            if body.get("flag", "unsafe") not in FLAGS:
                raise BadRequest(400, f"'flag' must be one of: {', '.join(FLAGS)}")
            fields["flag"] = body.get("flag", "unsafe")
            if body.get("correction") is not None:
                fields["correction"] = _text(body["correction"], "correction", MAX_TEXT_CHARS)
        else:
            if body.get("choice") not in ARENA_CHOICES:
                raise BadRequest(400, f"'choice' must be one of: {', '.join(ARENA_CHOICES)}")
            other, other_battle, other_side = self._answer(body.get("other_id"), "other_id")
            if battle is None or battle != other_battle or (side, other_side) != ("a", "b"):
                raise BadRequest(400, "an arena vote names side A's answer (answer_id) and side B's (other_id) of one battle")
            fields.update(other=other, choice=body["choice"])
            reveal = {"a": answer.model, "b": other.model}
        try:
            judgement = Judgement(kind, answer, **fields)
        except FeedbackError as e:
            raise BadRequest(400, str(e)) from None
        row, new = self.store.add(judgement)
        return {"id": row, "new": new, **({"models": reveal} if reveal else {})}

    def export(self, format) -> tuple[str, str]:
        if format not in FORMATS:
            raise BadRequest(400, f"'format' must be one of: {', '.join(FORMATS)}")
        result = export(self.store.judgements(), format)
        return to_jsonl_text(result.rows), result.line(f"feedback-{format}.jsonl")


def _text(value, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(400, f"'{field}' must be non-empty text")
    if len(value) > limit:
        raise BadRequest(413, f"'{field}' is {len(value)} characters; at most {limit} are accepted")
    return value


def _conversation(value, field: str) -> list[dict]:
    if isinstance(value, list) and len(value) > MAX_MESSAGES:
        raise BadRequest(413, f"'{field}' holds {len(value)} messages; at most {MAX_MESSAGES} are accepted; start a new conversation")
    try:
        messages = check_conversation(value, field)
    except FeedbackError as e:
        raise BadRequest(400, str(e)) from None
    for i, message in enumerate(messages):
        if len(message["content"]) > MAX_TEXT_CHARS:
            raise BadRequest(413, f"'{field}[{i}]' is {len(message['content'])} characters; at most {MAX_TEXT_CHARS} are accepted")
    return messages


def build_app(service: FeedbackService, token: str | None = None):
    """The starlette application: the page, its static files, and the JSON API."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    static_dir = Path(str(STATIC))

    async def read_json(request: Request) -> dict:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BadRequest(413, f"the request body is {declared} bytes; at most {MAX_BODY_BYTES} are accepted")
        body = b""
        async for chunk in request.stream():  # also caps bodies sent without a length
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise BadRequest(413, f"the request body is over {MAX_BODY_BYTES} bytes; at most that many are accepted")
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(400, f"the request body is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise BadRequest(400, f"the request body must be a JSON object, not {type(data).__name__}")
        return data

    def api(handler, needs_body: bool = True):
        async def endpoint(request: Request):
            try:
                if token is not None:
                    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                    if not hmac.compare_digest(given.encode(), token.encode()):
                        raise BadRequest(401, "missing or wrong token: open the page with ?token=T, or send Authorization: Bearer T")
                argument = await read_json(request) if needs_body else request
                return await run_in_threadpool(handler, argument)
            except BadRequest as e:
                return JSONResponse({"error": e.message}, status_code=e.status)
            except FeedbackError as e:  # e.g. the store file became unreadable
                return JSONResponse({"error": str(e)}, status_code=500)
        return endpoint

    def info(_request):
        return JSONResponse({"models": list(service.models), "arena": len(service.models) >= 2, "sampling": service.sampling.record(),
                             "limits": {"body_bytes": MAX_BODY_BYTES, "text_chars": MAX_TEXT_CHARS, "messages": MAX_MESSAGES}})

    def download(request):
        text, line = service.export(request.query_params.get("format", "thumbs"))
        name = f"feedback-{request.query_params.get('format', 'thumbs')}.jsonl"
        return Response(text, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{name}"', "X-Posttrain-Export": line})

    def page(_request):
        return FileResponse(static_dir / "index.html")

    def respond(handler):
        return lambda body: JSONResponse(handler(body))

    routes = [
        Route("/", page),
        Route("/api/info", api(info, needs_body=False)),
        Route("/api/chat", api(respond(service.chat)), methods=["POST"]),
        Route("/api/arena", api(respond(service.arena)), methods=["POST"]),
        Route("/api/feedback", api(respond(service.feedback)), methods=["POST"]),
        Route("/api/summary", api(lambda _r: JSONResponse(service.store.summary()), needs_body=False)),
        Route("/api/export", api(download, needs_body=False)),
        Mount("/static", StaticFiles(directory=static_dir)),
    ]
    return _SecurityHeaders(Starlette(routes=routes))


class _SecurityHeaders:
    """ASGI wrapper: the page may load nothing from anywhere else (no CDN, fonts or trackers)."""

    HEADERS = [(b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'"),
               (b"x-content-type-options", b"nosniff")]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def serve(run: Path, model_names: list[str] | None, host: str, port: int, feedback: Path | None, token: str | None,
          sampling: Sampling, announce=print) -> None:
    """Load the models, open the store, bind, and serve until Ctrl-C."""
    if token is not None and not token.strip():
        raise FeedbackError("--token is empty; give a token people must present, or leave it out on 127.0.0.1")
    if not is_loopback(host) and not token:
        raise FeedbackError(f"--host {host} makes the page reachable from other machines; give --token T (or set "
                            f"POSTTRAIN_SERVE_TOKEN) so that only people with the token can use it")
    sources = run_models(run, model_names)
    store = FeedbackStore(feedback or RunLayout(Path(run)).feedback_store)
    models = {source.name: ChatModel(source) for source in sources}
    app = build_app(FeedbackService(models, store, sampling), token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise FeedbackError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    import uvicorn

    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    announce(f"serving {', '.join(models)} at http://{url_host}:{bound}/  (feedback: {store.path}; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    server.run(sockets=[sock])

"""The HTTP server: the OpenAI API over the batcher, with API keys, limits and memories loaded on demand.

    GET  /v1/models                 the base ('base') and the memories this key may use
    GET  /v1/models/{model}
    POST /v1/completions            prompt -> text; "stream": true for server-sent events
    POST /v1/chat/completions       messages -> an answer (see `render_chat`)

`model` is 'base', a memory name ('acme': its newest version, checked on every request, so a newly
published version is served without a restart) or a pinned version ('acme@3'). The response's `model` says
which version answered. A memory the key may not use answers exactly like one that does not exist.

Run as:
    inweights serve --base DIR
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inweights.errors import InweightsError
from inweights.models import Base, load_base
from inweights.serve.adapters import AdapterCache
from inweights.serve.batcher import Batcher, Generation, QueueFull
from inweights.serve.config import ServeConfig, is_loopback
from inweights.serve.tenants import OPEN, KeyStore, Tenant, default_keys_file
from inweights.store import MemoryVersion, Workspace
from inweights.prompt import chat_text, has_chat_template, qa_prompt

log = logging.getLogger(__name__)

BASE_MODEL = "base"
"""The name under which the plain base model is served (a memory called 'base' is not reachable)."""


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or {401: "authentication_error", 429: "rate_limit_error"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error")

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Server:
    """Everything a running server holds: the base model, the memory cache, the batcher, keys and counters."""

    def __init__(self, base: Base, config: ServeConfig, workspace: Workspace | None = None):
        self.base = base
        self.config = config
        self.workspace = workspace or Workspace()
        self.keys = _key_store(config)
        if self.keys is None and not is_loopback(config.host):
            raise InweightsError(f"no API keys file, so the server runs open and may only listen on loopback, not "
                                 f"{config.host!r}; add a key with `inweights keys add TENANT --memories NAMES` or "
                                 "use --host 127.0.0.1")
        self.adapters = AdapterCache(base.model, base.fingerprint, config.max_memories, config.max_memory_bytes,
                                     pinned=config.pin)
        for name in config.pin:  # load pinned memories now, so their first request is fast
            version = self.workspace.get(name)
            self.adapters.acquire(version)
            self.adapters.release(version.ref)
        self.batcher = Batcher(base.model, base.tokenizer, self.adapters, config.max_batch, config.max_queue)
        stop = set(base.stop_token_ids)
        self.end_ids = frozenset(stop - {base.newline_id})  # completions: end of text / end of turn
        self.answer_end_ids = frozenset(stop)  # chat: answers end at the newline, as memories are trained
        self.max_context = getattr(base.model.config, "max_position_embeddings", None)
        self._active: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self.batcher.start()

    def close(self) -> None:
        self.batcher.stop()
        self.adapters.close()

    # --- who is calling, and what may they use --------------------------------------------------------------

    def authenticate(self, request: Request) -> Tenant:
        if self.keys is None:
            return OPEN
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        tenant = self.keys.authenticate(token)
        if tenant is None:
            raise ApiError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'; keys are "
                                "made with `inweights keys add`.", code="invalid_api_key")
        return tenant

    def resolve(self, model, tenant: Tenant) -> MemoryVersion | None:
        """The memory version `model` names for this caller; None for the base model."""
        if not isinstance(model, str) or not model:
            raise ApiError(400, "'model' must be 'base' or a memory name such as 'acme' or 'acme@3'", "model")
        if model == BASE_MODEL:
            return None
        not_found = ApiError(404, f"The model '{model}' does not exist or you do not have access to it.", "model",
                             "model_not_found")
        try:
            version = self.workspace.get(model)  # looked up even when forbidden: the same work, the same time
        except InweightsError:
            raise not_found from None  # invalid or missing
        if not tenant.may_use(version.name):
            raise not_found  # another tenant's: answered exactly like a missing one
        if version.manifest["base"]["fingerprint"] != self.base.fingerprint:
            raise ApiError(400, f"memory {version.ref} was trained on base {version.manifest['base']['name']!r}, not "
                                "on the base model this server runs; serve it from a server started with that base",
                           "model", "incompatible_base")
        return version

    def visible_memories(self, tenant: Tenant) -> list[MemoryVersion]:
        found = []
        for name in self.workspace.memories():
            if name != BASE_MODEL and tenant.may_use(name):
                newest = self.workspace.versions(name)[-1]
                if newest.manifest["base"]["fingerprint"] == self.base.fingerprint:
                    found.append(newest)
        return found

    def enter(self, tenant: Tenant) -> None:
        """Count a request against its key's concurrency limit; `leave` when the batcher has finished it."""
        with self._lock:
            if self._active.get(tenant.key_id, 0) >= self.config.max_concurrent_per_key:
                raise ApiError(429, f"this key already has {self.config.max_concurrent_per_key} requests in "
                                    "progress (the limit); wait for one to finish", code="too_many_concurrent_requests")
            self._active[tenant.key_id] = self._active.get(tenant.key_id, 0) + 1

    def leave(self, tenant: Tenant) -> None:
        with self._lock:
            self._active[tenant.key_id] -= 1


def create_app(server: Server) -> FastAPI:
    """The FastAPI app over `server`; the batcher starts with the app and stops with it."""

    @asynccontextmanager
    async def lifespan(app):
        server.start()
        yield
        server.batcher.stop()

    app = FastAPI(title="inweights", lifespan=lifespan)
    app.state.server = server
    config = server.config

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return ApiError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        log.exception("unexpected error")
        return ApiError(500, f"internal error: {type(exc).__name__}").response()

    @app.get("/v1/models")
    async def list_models(request: Request):
        tenant = server.authenticate(request)
        data = [_model_card(BASE_MODEL, 0, "inweights")]
        data += [_model_card(v.name, int(v.path.stat().st_mtime), tenant.name, v.version)
                 for v in server.visible_memories(tenant)]
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model}")
    async def get_model(model: str, request: Request):
        tenant = server.authenticate(request)
        version = server.resolve(model, tenant)
        if version is None:
            return _model_card(BASE_MODEL, 0, "inweights")
        return _model_card(model, int(version.path.stat().st_mtime), tenant.name, version.version)

    @app.post("/v1/completions")
    async def completions(request: Request):
        tenant = server.authenticate(request)
        body = await _read_json(request, config.max_body_kb * 1024)
        version = server.resolve(body.get("model"), tenant)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "'prompt' must be one string (lists of prompts and token ids are not supported)",
                           "prompt")
        _reject_unsupported(body, ("echo", "logprobs", "suffix", "best_of"))
        return await _generate(server, request, tenant, body, version, prompt, server.end_ids, _CompletionFormat())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        tenant = server.authenticate(request)
        body = await _read_json(request, config.max_body_kb * 1024)
        version = server.resolve(body.get("model"), tenant)
        prompt = render_chat(body.get("messages"), server.base.tokenizer)
        _reject_unsupported(body, ("logprobs", "tools", "functions", "response_format"))
        return await _generate(server, request, tenant, body, version, prompt, server.answer_end_ids, _ChatFormat())

    return app


def render_chat(messages, tokenizer=None) -> str:
    """Messages as one prompt. A base with a chat template (an instruct model) gets them in its template, the
    format its memories were trained in (`inweights.prompt.render`), the last user message as "Question: ...".
    A base without one gets one plain prompt, as its memories are trained on `inweights.prompt.QA_TEMPLATE`:
    system messages and earlier turns first as plain lines, then the last user message as
    "Question: ...\\nAnswer:". The answer ends at the end of its line, or of the assistant's turn."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", "messages")
    texts = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise ApiError(400, f"messages[{i}] needs a role of system, user or assistant", "messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be text", "messages")
        texts.append(content.strip())
    if messages[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's question", "messages")
    if tokenizer is not None and has_chat_template(tokenizer):
        turns = [{"role": "system" if m["role"] == "developer" else m["role"], "content": t}
                 for m, t in zip(messages[:-1], texts[:-1])]
        return chat_text(tokenizer, turns + [{"role": "user", "content": f"Question: {texts[-1]}"}])
    earlier = "\n".join(t for t in texts[:-1] if t)
    question = qa_prompt(texts[-1])
    return f"{earlier}\n{question}" if earlier else question


# --- one generation, plain or streamed ---------------------------------------------------------------------


async def _generate(server: Server, request: Request, tenant: Tenant, body: dict, version, prompt: str, stop_ids,
                    fmt) -> JSONResponse | StreamingResponse:
    config = server.config
    params = _sampling(body, config)
    prompt_ids = server.base.tokenizer(prompt)["input_ids"]
    param = "messages" if fmt.chat else "prompt"
    if len(prompt_ids) > config.max_prompt_tokens:
        raise ApiError(400, f"the prompt is {len(prompt_ids)} tokens; this server accepts at most "
                            f"{config.max_prompt_tokens}. Shorten it.", param, "context_length_exceeded")
    if server.max_context and len(prompt_ids) + params["max_tokens"] > server.max_context:
        raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({params['max_tokens']}) exceeds "
                            f"the model's context of {server.max_context} tokens", param, "context_length_exceeded")
    stream = body.get("stream") is True
    include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def on_event(kind, data):  # called from the batcher's thread; every request gets one final event
        if kind != "text":
            server.leave(tenant)
        try:
            loop.call_soon_threadsafe(events.put_nowait, (kind, data))
        except RuntimeError:  # the event loop is gone: the server is shutting down
            pass

    generation = Generation(prompt_ids, params["max_tokens"], version, on_event, stop_ids=stop_ids,
                            stop_strings=params["stop"], temperature=params["temperature"], top_p=params["top_p"],
                            seed=params["seed"])
    server.enter(tenant)
    try:
        server.batcher.submit(generation)
    except QueueFull as exc:
        server.leave(tenant)
        raise ApiError(429, str(exc), code="server_overloaded") from None
    label = generation.ref
    meta = {"id": f"{fmt.id_prefix}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": label}

    if not stream:
        try:
            parts = []
            while True:
                kind, data = await events.get()
                if kind == "text":
                    parts.append(data)
                elif kind == "error":
                    raise ApiError(data[0], data[1])
                else:
                    return JSONResponse(fmt.whole(meta, "".join(parts), data))
        finally:
            if generation.finish_reason is None:  # the client went away
                server.batcher.cancel(generation)

    async def sse():
        try:
            if fmt.chat:
                yield _sse(fmt.chunk(meta, None, None, first=True))
            while True:
                kind, data = await events.get()
                if kind == "text":
                    text = fmt.clean_delta(data)
                    if text:
                        yield _sse(fmt.chunk(meta, text, None))
                elif kind == "error":
                    yield _sse(ApiError(data[0], data[1]).body())
                    break
                else:
                    yield _sse(fmt.chunk(meta, None, data["finish_reason"]))
                    if include_usage:
                        yield _sse(fmt.usage_chunk(meta, data))
                    break
            yield "data: [DONE]\n\n"
        finally:
            if generation.finish_reason is None:  # the client went away mid-stream
                server.batcher.cancel(generation)

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class _CompletionFormat:
    chat = False
    id_prefix = "cmpl"

    def clean_delta(self, text: str) -> str:
        return text

    def whole(self, meta: dict, text: str, done: dict) -> dict:
        return {**meta, "object": "text_completion", "usage": _usage(done),
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": done["finish_reason"]}]}

    def chunk(self, meta: dict, text: str | None, finish_reason: str | None, first: bool = False) -> dict:
        return {**meta, "object": "text_completion",
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]}

    def usage_chunk(self, meta: dict, done: dict) -> dict:
        return {**meta, "object": "text_completion", "choices": [], "usage": _usage(done)}


class _ChatFormat:
    """Chat answers drop the space the QA format puts after 'Answer:'."""

    chat = True
    id_prefix = "chatcmpl"

    def __init__(self):
        self.started = False

    def clean_delta(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return text

    def whole(self, meta: dict, text: str, done: dict) -> dict:
        return {**meta, "object": "chat.completion", "usage": _usage(done),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text.strip()},
                             "logprobs": None, "finish_reason": done["finish_reason"]}]}

    def chunk(self, meta: dict, text: str | None, finish_reason: str | None, first: bool = False) -> dict:
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        return {**meta, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    def usage_chunk(self, meta: dict, done: dict) -> dict:
        return {**meta, "object": "chat.completion.chunk", "choices": [], "usage": _usage(done)}


def _usage(done: dict) -> dict:
    return {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"],
            "total_tokens": done["prompt_tokens"] + done["completion_tokens"]}


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _model_card(model_id: str, created: int, owner: str, version: int | None = None) -> dict:
    card = {"id": model_id, "object": "model", "created": created, "owned_by": owner}
    if version is not None:
        card["version"] = version
    return card


# --- request parsing ---------------------------------------------------------------------------------------


async def _read_json(request: Request, limit: int) -> dict:
    too_large = ApiError(413, f"the request body is larger than this server's limit of {limit // 1024} KiB", None,
                         "request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        data = json.loads(body)
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _sampling(body: dict, config: ServeConfig) -> dict:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = min(config.default_max_tokens, config.max_tokens)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, f"max_tokens must be a positive integer, not {max_tokens!r}", "max_tokens")
    if max_tokens > config.max_tokens:
        raise ApiError(400, f"max_tokens is {max_tokens}; this server allows at most {config.max_tokens}",
                       "max_tokens", "max_tokens_too_large")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)  # greedy unless asked: answers are recall
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ApiError(400, "'seed' must be an integer", "seed")
    if body.get("n", 1) != 1:
        raise ApiError(400, "only n=1 is supported", "n")
    return {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "stop": tuple(stop), "seed": seed}


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number from {low} to {high}", name)
    return float(value)


def _reject_unsupported(body: dict, names: tuple[str, ...]) -> None:
    for name in names:
        if body.get(name) not in (None, False, 0, "", []):
            raise ApiError(400, f"'{name}' is not supported by this server", name, "unsupported_parameter")


def _key_store(config: ServeConfig) -> KeyStore | None:
    if config.keys_file:
        path = Path(config.keys_file).expanduser()
        if not path.is_file():
            raise InweightsError(f"keys file {path} does not exist; create it with `inweights keys add`")
        return KeyStore(path)
    return KeyStore(default_keys_file()) if default_keys_file().is_file() else None


# --- entry point -------------------------------------------------------------------------------------------


def serve(base: Base | str, config: ServeConfig | None = None, workspace: Workspace | None = None) -> None:
    """Load the base model and serve it and the workspace's memories until interrupted."""
    import uvicorn

    config = config or ServeConfig()
    server = Server(load_base(base) if isinstance(base, str) else base, config, workspace)
    mode = f"API keys from {server.keys.path}" if server.keys else "open, no keys file: loopback only"
    print(f"serving {server.base.name} and its memories at http://{config.host}:{config.port}/v1 ({mode})", flush=True)
    try:
        uvicorn.run(create_app(server), host=config.host, port=config.port, log_level="warning")
    finally:
        server.close()

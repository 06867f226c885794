"""An OpenAI-compatible HTTP server over the :class:`~.engine.Engine` (FastAPI + uvicorn).

Endpoints follow OpenAI's and vLLM's conventions (docs/serve.md): ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (server-sent events ending with ``data: [DONE]``
when ``stream`` is true), ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` (vLLM's bodies),
``GET /health`` and ``GET /metrics`` (Prometheus text). The request's ``model`` field picks the adapter;
the base model answers under its own name. Errors use OpenAI's JSON shape
``{"error": {"message", "type", "param", "code"}}`` with the HTTP status in ``code``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from prolora.tuner.saved import check_adapter_name

from .adapter_bank import EXPANDED_CACHE_BYTES, AdapterBank
from .engine import (
    KV_CACHE_MEMORY_BYTES,
    MAX_LOGPROBS,
    MAX_NUM_BATCHED_TOKENS,
    MAX_NUM_SEQS,
    SEED_MAX,
    Engine,
    Event,
    SamplingParams,
    ShuttingDown,
)
from .generation import AdapterSpec
from .registry import AdapterBusy, AdapterInUse, AdapterRegistry, UnknownAdapter


# ------------------------------------------------------------------------------------------ bodies
def _utf8(text: str) -> str:
    """JSON may carry lone UTF-16 surrogates (``"\\ud800"``) that no UTF-8 text holds: refuse them (400)
    rather than let the tokenizer or the response encoder fail (500)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"the text holds {exc.object[exc.start : exc.end]!r}, a lone UTF-16 surrogate: send valid Unicode"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


MAX_N = 32  # most choices per request (n); each is a row of the batch
# most choices of one completions request, prompts × n: each is a queued request of the engine, and a
# 40 KB list of 2,000 one-token prompts with n=32 (64,000 choices) held the server for over five minutes
MAX_CHOICES = 1024


class StreamOptions(_Body):
    include_usage: bool = False  # a last chunk with no choices and the request's usage


class _Sampling(_Body):
    model: Text
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    ignore_eos: bool = False  # vLLM's extension


class CompletionBody(_Sampling):
    # token ids are JSON integers: true, false or 1.0 are not token ids (OpenAI refuses them too)
    prompt: Text | list[Text] | list[StrictInt] | list[list[StrictInt]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class Message(_Body):
    role: Literal["system", "user", "assistant"]
    content: Text


class ChatBody(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)


class LoadBody(_Body):
    lora_name: Text = Field(min_length=1)
    lora_path: Text = Field(min_length=1)


class UnloadBody(_Body):
    lora_name: Text = Field(min_length=1)
    lora_int_id: int | None = None


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def _error(
    status: int, message: str, kind: str = "invalid_request_error", param: str | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}}, status)


MAX_REQUEST_BYTES = 4 * 2**20  # default body cap: far above any prompt that fits the context (a 2,048-token
# chat is tens of KiB), far below what would strain memory when many clients send at once


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 (OpenAI error shape) before the
    app sees it. A declared ``Content-Length`` over the cap is refused without reading; otherwise the body
    is read up to the cap and handed on whole, and later ``receive`` calls (the client leaving) go through.
    """

    def __init__(self, app, max_bytes: int = MAX_REQUEST_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, scope, receive, send, size: str) -> None:
        message = (
            f"the request body ({size}) is over this server's limit of {self.max_bytes:,} bytes; send a "
            "shorter prompt, or start the server with a higher --max-request-bytes."
        )
        await _error(413, message)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send, f"{int(declared):,} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                chunks = None
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send, f"over {self.max_bytes:,} bytes")
            if not message.get("more_body", False):
                break
        if chunks is None:
            return await self.app(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


# ------------------------------------------------------------------------------------------ errors
# The one exception -> HTTP status table: an error is answered with the row of the most specific class in
# its MRO. The server's own exceptions are answered so wherever a route raises them (FastAPI exception
# handlers, see create_app); ValueError and OSError only inside `answering`, where the failing call read
# the request: anywhere else they are bugs, answered 500.
STATUS: dict[type[Exception], tuple[int, str]] = {
    ShuttingDown: (503, "service_unavailable"),
    AdapterBusy: (503, "service_unavailable"),  # no room: every resident adapter has requests in flight
    AdapterInUse: (409, "conflict_error"),  # unload of an adapter with requests in flight
    UnknownAdapter: (404, "not_found_error"),
    ValueError: (400, "invalid_request_error"),
    OSError: (400, "invalid_request_error"),
}
_SERVER_ERRORS = (ShuttingDown, AdapterBusy, UnknownAdapter)  # answered by the table wherever raised

# per exception class: the request field to name (``param``) and the message (default: the exception's)
Wording = dict[type[Exception], tuple[str | None, Callable[[Exception], str] | None]]


def _row(exc: Exception, table: dict):
    return next((table[c] for c in type(exc).__mro__ if c in table), None)


def as_api_error(exc: Exception, param: str | None = None, message: str | None = None) -> APIError:
    """The :class:`APIError` of ``exc``'s row in :data:`STATUS`."""
    status, kind = _row(exc, STATUS)
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError's str quotes
    return APIError(status, message or text, kind, param)


@contextmanager
def answering(wording: Wording | None = None):
    """Errors of the block are the request's fault: one with a row in :data:`STATUS` is raised as that row's
    :class:`APIError`, worded as ``wording`` says for its class (else: no ``param``, its own text)."""
    try:
        yield
    except tuple(STATUS) as exc:
        param, say = _row(exc, wording or {}) or (None, None)
        raise as_api_error(exc, param, say(exc) if say else None) from None


async def _answer_api_error(_request, exc: Exception) -> JSONResponse:
    error = exc if isinstance(exc, APIError) else as_api_error(exc)
    return _error(error.status, error.message, error.kind, error.param)


async def _answer_invalid_body(_request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    # of a union's branches (prompt: str | list[str] | list[int]) report the one our validators refused
    first = next((e for e in errors if e.get("type") == "value_error"), errors[0] if errors else {})
    if first.get("type") == "json_invalid":  # loc is ("body", character offset)
        return _error(
            400,
            f"invalid request: the body is not valid JSON ({first.get('ctx', {}).get('error', '')} "
            f"at character {first.get('loc', ('', '?'))[-1]}).",
        )
    # the path of the field, without pydantic's union-branch and validator tags ("str", "function-after[...]")
    where = ".".join(
        str(p)
        for p in first.get("loc", ())[1:]
        if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool")))
    )
    where = where or None
    return _error(
        400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed body')}", param=where
    )


async def _answer_http_error(_request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found_error", 405: "invalid_request_error", 400: "invalid_request_error"}
    return _error(exc.status_code, str(exc.detail), kind.get(exc.status_code, "api_error"))


# ----------------------------------------------------------------------------------------------- app
@dataclass(frozen=True)
class ServerSettings:
    """What a route needs besides the engine (``app.state.settings``; the engine is ``app.state.engine``).

    Attributes:
        base_name: the name under which the base model answers (``model`` field, ``/v1/models``).
        api_key: when set, every ``/v1`` route needs ``Authorization: Bearer <api_key>``.
        chat_format: ``"tulu"`` or ``"template"``: for chats with the base model and with adapters whose
            training run recorded none.
        shutdown_timeout: seconds running requests get when the app shuts down.
    """

    base_name: str
    api_key: str | None = None
    chat_format: str = "tulu"
    shutdown_timeout: float = 30.0


def create_app(
    engine: Engine,
    base_name: str,
    api_key: str | None = None,
    chat_format: str | None = None,
    shutdown_timeout: float = 30.0,
    max_request_bytes: int = MAX_REQUEST_BYTES,
) -> FastAPI:
    """The FastAPI app serving ``engine`` (started here if needed; stopped when the app shuts down).

    Args:
        base_name, api_key, shutdown_timeout: see :class:`ServerSettings`.
        chat_format: ``"tulu"`` or ``"template"`` (default: the tokenizer's chat template if it has one,
            else tulu).
        max_request_bytes: a larger request body is answered 413 (:class:`BodyLimit`).
    """
    if chat_format is None:
        from prolora.data.chat import base_chat_format

        chat_format = base_chat_format(engine.tokenizer)  # the same default as prolora generate and chat
    app = FastAPI(title="prolora serve", lifespan=_lifespan)
    app.state.engine = engine
    app.state.settings = ServerSettings(base_name, api_key, chat_format, shutdown_timeout)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)
    app.add_exception_handler(RequestValidationError, _answer_invalid_body)
    app.add_exception_handler(StarletteHTTPException, _answer_http_error)
    for kind in (APIError, *_SERVER_ERRORS):
        app.add_exception_handler(kind, _answer_api_error)
    app.include_router(router)
    app.include_router(v1)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    app.state.engine.start()
    yield
    await run_in_threadpool(app.state.engine.shutdown, app.state.settings.shutdown_timeout)


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(_engine)]
SettingsDep = Annotated[ServerSettings, Depends(_settings)]


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header, else ``None``. The scheme is
    case-insensitive and separated from the token by one or more spaces (RFC 7235 section 2.1)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authorize(request: Request, settings: SettingsDep) -> None:
    import hmac

    api_key = settings.api_key
    if api_key is None:
        return
    token = bearer_token(request.headers.get("authorization"))
    if token is None or not hmac.compare_digest(token.encode(), api_key.encode()):  # constant time
        raise APIError(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'.", "authentication_error"
        )


router = APIRouter()  # open routes
v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])  # the OpenAI/vLLM routes, behind the key


# --------------------------------------------------------------------------------------------- routes
@router.get("/health")
async def health(engine: EngineDep):
    if not engine.accepting:
        return _error(503, "shutting down", "service_unavailable")
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(engine: EngineDep):
    return Response(_prometheus_text(engine), media_type="text/plain; version=0.0.4; charset=utf-8")


@v1.get("/models")
async def models(engine: EngineDep, settings: SettingsDep):
    created, base_name, registry = int(time.time()), settings.base_name, engine.registry
    card = {"object": "model", "created": created, "owned_by": "prolora"}
    data = [{"id": base_name, **card, "root": base_name, "parent": None}]
    for name in registry.names():
        entry = registry.entries.get(name)
        data.append({"id": name, **card, "root": entry.path if entry else name, "parent": base_name})
    return {"object": "list", "data": data}


@v1.post("/completions")
async def completions(body: CompletionBody, request: Request, engine: EngineDep, settings: SettingsDep):
    adapter = _resolve(engine, settings, body.model)
    prompt = body.prompt
    if not prompt:
        raise APIError(400, "prompt is empty.", param="prompt")
    # a list of strings or of token-id lists is several prompts (OpenAI's batch); one string or one id
    # list is one; a long prompt takes seconds to tokenize: off the event loop
    texts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt[0], str) else None
    if texts is not None:
        prompts = (await run_in_threadpool(engine.tokenizer, texts))["input_ids"]
    else:
        prompts = [list(prompt)] if isinstance(prompt[0], int) else [list(p) for p in prompt]
    for ids in prompts:
        if not ids or any(not 0 <= t < engine.vocab_size for t in ids):
            raise APIError(
                400, f"prompt token ids must be non-empty and in [0, {engine.vocab_size}).", param="prompt"
            )
    if len(prompts) * body.n > MAX_CHOICES:
        raise APIError(
            400,
            f"{len(prompts)} prompts × n={body.n} is {len(prompts) * body.n} choices; send at most "
            f"{MAX_CHOICES} per request (split the prompt list).",
            param="prompt",
        )
    if body.echo and texts is None:
        texts = [engine.tokenizer.decode(ids) for ids in prompts]
    jobs = [(ids, _sampling(engine, body, body.max_tokens or 16, len(ids))) for ids in prompts]
    return await _generate(
        request, engine, adapter, jobs, body, chat=False, echo=texts if body.echo else None
    )


@v1.post("/chat/completions")
async def chat_completions(body: ChatBody, request: Request, engine: EngineDep, settings: SettingsDep):
    from prolora.data.chat import render

    adapter = _resolve(engine, settings, body.model)
    fmt = (engine.registry.entry(adapter).chat_format if adapter else None) or settings.chat_format
    messages = [m.model_dump() for m in body.messages]
    tokenizer = engine.tokenizer

    def tokenize() -> list[int]:  # off the event loop (a long chat takes seconds)
        text, _ = render(tokenizer, messages, fmt, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=fmt == "tulu")["input_ids"]  # as prolora generate does

    with answering({ValueError: ("messages", None)}):
        ids = await run_in_threadpool(tokenize)
    params = _sampling(engine, body, body.max_completion_tokens or body.max_tokens, len(ids))
    return await _generate(request, engine, adapter, [(ids, params)], body, chat=True)


@v1.post("/load_lora_adapter")
async def load_lora_adapter(body: LoadBody, engine: EngineDep, settings: SettingsDep):
    name, path = body.lora_name, body.lora_path
    if name == settings.base_name:
        raise APIError(400, f"'{name}' is the base model's name; pick another.", param="lora_name")
    with answering({ValueError: ("lora_name", None)}):
        check_adapter_name(name)
    cannot = ("lora_path", lambda exc: f"cannot load adapter '{name}' from {path}: {exc}")
    with answering({ValueError: cannot, OSError: cannot}):
        await run_in_threadpool(engine.registry.register, name, path)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@v1.post("/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadBody, engine: EngineDep):
    name = body.lora_name
    unknown = ("lora_name", lambda _exc: f"The lora adapter '{name}' cannot be found.")
    with answering({UnknownAdapter: unknown, AdapterInUse: ("lora_name", None)}):
        await run_in_threadpool(engine.registry.unload, name)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


# ------------------------------------------------------------------------------------ route helpers
def _resolve(engine: Engine, settings: ServerSettings, model: str) -> str | None:
    """The adapter of a request's ``model`` (None: the base model); 404 lists what exists."""
    if model == settings.base_name:
        return None

    def unknown(_exc) -> str:
        known = ", ".join([settings.base_name, *engine.registry.names()])
        return f"The model '{model}' does not exist. Available models: {known}."

    with answering({UnknownAdapter: ("model", unknown)}):
        engine.registry.entry(model)
    return model


def _sampling(engine: Engine, body: _Sampling, max_tokens: int | None, prompt_len: int) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if max_tokens is None:
        max_tokens = max(engine.max_context - prompt_len, 1)
    if isinstance(body, ChatBody):
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    else:
        logprobs = body.logprobs
    echo_logprobs = logprobs if isinstance(body, CompletionBody) and body.echo else None
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=echo_logprobs,
    )


def _choice_seed(seed: int | None, j: int) -> int | None:
    """The seed of choice ``j`` of ``n``: ``seed + j`` (``seed - j`` at the top of the range), so that the
    choices differ and the request stays reproducible."""
    if seed is None or j == 0:
        return seed
    return seed + j if seed + j <= SEED_MAX else seed - j


def _check_stream_options(body: _Sampling) -> None:
    if body.stream_options is not None and not body.stream:
        raise APIError(400, "stream_options needs stream: true.", param="stream_options")  # as OpenAI


async def _generate(
    request: Request,
    engine: Engine,
    adapter: str | None,
    jobs: list[tuple[list[int], SamplingParams]],
    body: _Sampling,
    chat: bool,
    echo: list[str] | None = None,
):
    """Submit every prompt of ``jobs`` ``body.n`` times (choice ``i·n + j``, as OpenAI numbers them); the
    answer streamed (server-sent events, each chunk one choice's delta) or whole."""
    _check_stream_options(body)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    handles = []
    try:
        for ids, params in jobs:
            for j in range(body.n):
                index = len(handles)

                def sink(event: Event, index=index) -> None:
                    loop.call_soon_threadsafe(events.put_nowait, (index, event))

                choice = dataclasses.replace(params, seed=_choice_seed(params.seed, j))
                unknown = ("model", lambda exc: f"The model '{exc.args[0]}' does not exist.")
                with answering({UnknownAdapter: unknown}):  # unloaded since _resolve
                    handles.append(await run_in_threadpool(engine.submit, ids, adapter, choice, sink))
    except BaseException:
        for handle in handles:  # all choices or none
            handle.cancel()
        raise
    answer = _Answer(engine, handles, [ids for ids, _ in jobs for _ in range(body.n)], body, chat, echo)
    if body.stream:
        return StreamingResponse(_stream(events, answer), media_type="text/event-stream")
    return await _collect(request, events, answer)


class _Answer:
    """The OpenAI shapes of one request's choices: ids, chunks, logprobs, usage."""

    def __init__(self, engine, handles, prompts, body, chat, echo):
        self.engine, self.handles, self.prompts, self.body, self.chat = engine, handles, prompts, body, chat
        self.echo = [e for e in (echo or []) for _ in range(body.n)] if echo else None
        self.id = ("chatcmpl-" if chat else "cmpl-") + handles[0].id
        self.created = int(time.time())
        self.kind = "chat.completion" if chat else "text_completion"
        self.offsets = [0] * len(handles)  # characters of each choice's text so far (text_offset)
        self.roles_sent: set[int] = set()  # chat streams: choices whose first delta (with the role) went

    def usage(self) -> dict:
        prompt = sum(len(ids) for ids in self.prompts[:: self.body.n])  # each prompt once, as OpenAI
        completion = sum(len(h.output_ids) for h in self.handles)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _token(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id])

    def logprobs(self, index: int, entries, prompt: bool = False) -> dict | None:
        """Choice ``index``'s logprobs of ``entries`` (:class:`~.engine.Logprob`, None for a first prompt
        token) in the completions shape (tokens, token_logprobs, top_logprobs, text_offset) or chat's."""
        if entries is None:
            return None
        if self.chat:
            return {
                "content": [
                    {
                        "token": (t := self._token(e.token_id)),
                        "logprob": e.logprob,
                        "bytes": list(t.encode()),
                        "top_logprobs": [
                            {"token": (s := self._token(i)), "logprob": lp, "bytes": list(s.encode())}
                            for i, lp in e.top
                        ],
                    }
                    for e in entries
                ]
            }
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        ids = self.prompts[index] if prompt else [e.token_id for e in entries]
        for token_id, e in zip(ids, entries, strict=True):
            text = self._token(token_id)
            out["tokens"].append(text)
            out["token_logprobs"].append(None if e is None else e.logprob)
            top = None if e is None else {}
            for i, lp in e.top if e is not None else ():
                top.setdefault(self._token(i), lp)  # tokens of one text (partial bytes): the likeliest
            out["top_logprobs"].append(top)
            out["text_offset"].append(self.offsets[index])
            self.offsets[index] += len(text)
        return out

    def prefix(self, index: int) -> tuple[str, dict | None]:
        """The echoed prompt of choice ``index`` (completions with ``echo``) and its logprobs."""
        if self.echo is None:
            return "", None
        handle = self.handles[index]
        wanted = handle.params.prompt_logprobs is not None
        return self.echo[index], self.logprobs(index, handle.prompt_logprobs, prompt=True) if wanted else None

    def choice(self, index: int, text: str, reason: str | None, logprobs: dict | None, delta: bool) -> dict:
        if not self.chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
        if not delta:
            content = {"role": "assistant", "content": text}
        else:  # as OpenAI: the role in a choice's first delta only, and an empty delta with the finish reason
            content = {"content": text} if text or reason is None else {}
            if index not in self.roles_sent:
                self.roles_sent.add(index)
                content = {"role": "assistant", **content}
        out = {"index": index, "delta" if delta else "message": content, "finish_reason": reason}
        if self.body.logprobs:
            out["logprobs"] = logprobs
        return out

    def chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        body = {
            "id": self.id,
            "object": self.kind + (".chunk" if self.chat else ""),
            "created": self.created,
            "model": self.body.model,
            "choices": choices,
        }
        if usage is not None:
            body["usage"] = usage
        return "data: " + json.dumps(body) + "\n\n"


def _merge(a: dict | None, b: dict | None) -> dict | None:
    """Two logprobs dicts of one choice, concatenated field by field."""
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}


async def _collect(request: Request, events: asyncio.Queue, answer: _Answer) -> dict:
    """The whole answer of a non-streamed request; the client leaving cancels it."""

    async def watch_disconnect():  # the body is read: the next ASGI message is the client leaving
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for handle in answer.handles:
            handle.cancel()

    watcher = asyncio.create_task(watch_disconnect())
    count = len(answer.handles)
    parts, reasons, logprobs = [[] for _ in range(count)], [None] * count, [None] * count
    error = None
    try:
        while any(r is None for r in reasons):
            index, event = await events.get()
            if not parts[index]:  # its prompt is prefilled now: echo it first
                text, logprobs[index] = answer.prefix(index)
                parts[index].append(text)
            parts[index].append(event.text)
            logprobs[index] = _merge(logprobs[index], answer.logprobs(index, event.logprobs))
            if event.finish_reason is not None:
                reasons[index] = event.finish_reason
                error = error or event.error
    finally:
        watcher.cancel()
        for handle in answer.handles:
            if handle.finish_reason is None:
                handle.cancel()
    if error:
        raise APIError(503 if "shutting down" in error else 500, error, "api_error")
    choices = [
        answer.choice(i, "".join(parts[i]), reasons[i], logprobs[i], delta=False) for i in range(count)
    ]
    return {
        "id": answer.id,
        "object": answer.kind,
        "created": answer.created,
        "model": answer.body.model,
        "choices": choices,
        "usage": answer.usage(),
    }


async def _stream(events: asyncio.Queue, answer: _Answer):
    """Server-sent events of one request; closing it (client gone) cancels the generation."""
    count = len(answer.handles)
    open_, started = set(range(count)), set()
    try:
        while open_:
            index, event = await events.get()
            if answer.echo is not None and index not in started:  # its prompt is prefilled: echo it first
                started.add(index)
                text, logprobs = answer.prefix(index)
                yield answer.chunk([answer.choice(index, text, None, logprobs, delta=True)])
            if event.error:
                code = 503 if "shutting down" in event.error else 500
                error = {"message": event.error, "type": "api_error", "param": None, "code": code}
                yield "data: " + json.dumps({"error": error}) + "\n\n"
                break
            logprobs = answer.logprobs(index, event.logprobs)
            if event.text or event.finish_reason is None or logprobs:
                yield answer.chunk([answer.choice(index, event.text, None, logprobs, delta=True)])
            if event.finish_reason is not None:
                yield answer.chunk([answer.choice(index, "", event.finish_reason, None, delta=True)])
                open_.discard(index)
        else:
            options = answer.body.stream_options
            if options is not None and options.include_usage:
                yield answer.chunk([], answer.usage())
        yield "data: [DONE]\n\n"
    finally:
        for handle in answer.handles:
            if handle.finish_reason is None:
                handle.cancel()


def graceful_server(app, engine: Engine, grace: float = 25.0, **config):
    """A ``uvicorn.Server`` for ``app`` whose shutdown (SIGTERM, SIGINT) drains ``engine`` first.

    Running requests get ``grace`` seconds to finish; the engine then aborts the rest, so each open stream
    ends with an error chunk (code 503) and ``data: [DONE]`` and each waiting non-streamed request gets a
    503, before uvicorn closes the connections (``timeout_graceful_shutdown``, default 5 s, after that).
    Without this, uvicorn's own timeout cancelled the streams first: clients saw a cut connection.
    ``config``: keyword arguments of ``uvicorn.Config`` (``host``, ``port``, ``log_level``, ...).
    """
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            await asyncio.to_thread(engine.shutdown, grace)
            await super().shutdown(sockets)

    config.setdefault("timeout_graceful_shutdown", 5)
    return _Server(uvicorn.Config(app, **config))


def _prometheus_text(engine: Engine) -> bytes:
    """The engine's counters and gauges in the Prometheus text format (prometheus_client)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    counters, registry = engine.counters, engine.registry

    class _Collector:
        def collect(self):
            for name, key, doc in (
                ("requests", "requests", "Requests accepted"),
                ("requests_finished", "finished", "Requests finished (stop or length)"),
                ("requests_aborted", "aborted", "Requests cancelled or failed"),
                ("prompt_tokens", "prompt_tokens", "Prompt tokens processed"),
                ("generation_tokens", "generation_tokens", "Tokens generated"),
                ("decode_steps", "decode_steps", "Batched decode steps"),
            ):
                yield CounterMetricFamily(f"prolora_{name}", doc, value=counters[key])
            yield CounterMetricFamily("prolora_adapter_loads", "Adapter loads", value=registry.loads)
            yield CounterMetricFamily(
                "prolora_adapter_evictions", "Adapter LRU evictions", value=registry.evictions
            )
            for name, value, doc in (
                ("queue_length", engine.queue_length, "Requests waiting to join the batch"),
                ("requests_running", engine.running, "Requests in the running batch"),
                ("adapters_resident", len(registry.resident()), "Adapters resident in memory"),
                ("adapter_bytes_resident", engine.bank.resident_bytes, "Bytes of resident adapter tensors"),
                ("expanded_cache_bytes", engine.bank.expanded_bytes, "Bytes of cached expanded factors"),
            ):
                yield GaugeMetricFamily(f"prolora_{name}", doc, value=value)

    collectors = CollectorRegistry()
    collectors.register(_Collector())
    return generate_latest(collectors)


def build_engine(
    model: str | None,
    adapters: list[str],
    adapters_dir: str | None = None,
    max_resident: int | None = None,
    max_num_seqs: int = MAX_NUM_SEQS,
    expanded_cache_bytes: int = EXPANDED_CACHE_BYTES,
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
    kv_cache_memory_bytes: int = KV_CACHE_MEMORY_BYTES,
) -> Engine:
    """Load the base model and tokenizer, hook an :class:`AdapterBank` into it and register ``adapters``.

    ``adapters`` are ``[NAME=]PATH`` specs (run directories of ``prolora train`` or adapter directories);
    ``model`` defaults to the first run's base model, else the embedded SmolLM2-135M.

    Raises:
        ValueError / FileNotFoundError: a bad adapter, model or directory, naming it.
    """
    from prolora.base_models import load_model, load_tokenizer

    specs = [AdapterSpec.parse(s) for s in adapters]
    names = [s.name for s in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"adapter names {names} repeat; name them with NAME=PATH")
    run_models = [s.run_config.get("model") for s in specs if s.run_config.get("model")]
    model = model or (run_models[0] if run_models else None)
    tokenizer = load_tokenizer(model)
    base = load_model(model).eval()
    registry = AdapterRegistry(AdapterBank(base, expanded_cache_bytes), adapters_dir, max_resident)
    for spec in specs:
        registry.register(spec.name, spec.path)
    return Engine(base, tokenizer, registry, max_num_seqs, max_num_batched_tokens, kv_cache_memory_bytes)

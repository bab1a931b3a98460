"""`locus serve`: an OpenAI-compatible HTTP server over local chat models.

It is what vLLM offers on-prem, small enough to read: `/v1/chat/completions` (with SSE streaming),
`/v1/models` and `/health`. The demo and the integration tests use it as the on-prem locus and
reach it through LiteLLM's `hosted_vllm/` provider.

How a request flows:
  read the body (bounded) → validate it (OpenAI error format on any fault) → wait for a generation
  slot (bounded queue, then 429) → run the synchronous `ChatModel.stream_chat` in a worker thread →
  answer as one JSON body or as SSE chunks. A client that goes away sets the generation's `cancel`
  event, so the model stops at its next token and the slot frees.

Overload policy: at most `max_concurrency` generations run at once; up to `max_queue` more requests
wait for a slot; beyond that the server answers 429 with `Retry-After` (LiteLLM and the openai SDK
retry 429 with backoff, and the router's failover treats it as a transient failure of the locus).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from locus_llm.errors import ConfigError
from locus_llm.local.base import ChatModel, ContextWindowExceeded, Delta

logger = logging.getLogger("locus_llm.server")

CHAT_PATH = "/v1/chat/completions"
DEFAULT_MAX_TOKENS = 256  # when the request names no limit (the ChatModel protocol's default)
RETRY_AFTER_SECONDS = 1
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_AWAIT: Any = object()  # a streamed response has sent every queued delta: wait for the next one

# Parameters read from the request; anything else is refused unless listed below.
HANDLED = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "n",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "seed",
        "stop",
    }
)
# Accepted and ignored: they do not change what the model generates.
IGNORED = frozenset({"user", "metadata", "store", "service_tier", "parallel_tool_calls"})
# Accepted only with these neutral values: anything else asks for a feature this server lacks,
# and silently ignoring it would return something the caller did not ask for.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
}


# --- request validation -----------------------------------------------------------------------


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-format error response."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class ChatRequest:
    """A validated `/v1/chat/completions` request."""

    model_name: str
    model: ChatModel
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str] | None


def parse_chat_request(body: bytes, models: Mapping[str, ChatModel]) -> ChatRequest:
    """Validate a request body against the OpenAI chat schema, or raise RequestError."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"The request body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"The request body must be a JSON object, not {_kind(payload)}.")
    _refuse_unsupported(payload)

    model_name = payload.get("model")
    if not isinstance(model_name, str) or not model_name:
        raise RequestError(400, "'model' is required and must be a string.", param="model")
    if model_name not in models:
        raise RequestError(
            404,
            f"The model '{model_name}' does not exist on this server; "
            f"it serves: {', '.join(sorted(models)) or 'no models'}.",
            param="model",
            code="model_not_found",
        )

    stream = _optional(payload, "stream", bool, False)
    include_usage = False
    options = payload.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise RequestError(400, "'stream_options' must be an object.", param="stream_options")
        if not stream:
            raise RequestError(
                400,
                "'stream_options' is only allowed when 'stream' is true.",
                param="stream_options",
            )
        include_usage = _optional(options, "include_usage", bool, False, "stream_options.")

    n = _optional(payload, "n", int, 1)
    if n != 1:
        raise RequestError(400, f"'n' must be 1 on this server, got {n}.", param="n")

    max_tokens = _optional(payload, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = _optional(payload, "max_tokens", int, DEFAULT_MAX_TOKENS)
    if max_tokens < 1:
        raise RequestError(400, f"'max_tokens' must be at least 1, got {max_tokens}.", "max_tokens")

    temperature = float(_optional(payload, "temperature", float, 1.0))
    if not 0.0 <= temperature <= 2.0:
        raise RequestError(
            400, f"'temperature' must be between 0 and 2, got {temperature}.", param="temperature"
        )
    top_p = float(_optional(payload, "top_p", float, 1.0))
    if not 0.0 < top_p <= 1.0:
        raise RequestError(400, f"'top_p' must be in (0, 1], got {top_p}.", param="top_p")

    return ChatRequest(
        model_name=model_name,
        model=models[model_name],
        messages=_parse_messages(payload.get("messages")),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=_optional(payload, "seed", int, None),
        stop=_parse_stop(payload.get("stop")),
    )


def _refuse_unsupported(payload: dict[str, Any]) -> None:
    for name, value in payload.items():
        if name in HANDLED or name in IGNORED:
            continue
        if name not in NEUTRAL_VALUES:
            raise RequestError(400, f"Unrecognized request argument supplied: '{name}'.", name)
        if value not in NEUTRAL_VALUES[name]:
            raise RequestError(
                400, f"'{name}' = {json.dumps(value)[:200]} is not supported by this server.", name
            )


def _optional(
    payload: Mapping[str, Any], name: str, kind: type, default: Any, prefix: str = ""
) -> Any:
    """The value of an optional field of JSON type `kind` (null means absent)."""
    value = payload.get(name)
    if value is None:
        return default
    # JSON has no int/bool distinction in Python's sense: True is not a number here.
    valid = isinstance(value, bool) if kind is bool else not isinstance(value, bool)
    if kind is float:
        valid = valid and isinstance(value, int | float)
    elif kind is int:
        valid = valid and isinstance(value, int)
    if not valid:
        expected = {bool: "a boolean", int: "an integer", float: "a number"}[kind]
        raise RequestError(
            400,
            f"'{prefix}{name}' must be {expected}, not {_kind(value)}.",
            param=prefix + name,
        )
    return value


def _parse_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages as the ChatModel takes them: role and plain-text content."""
    if messages is None:
        raise RequestError(400, "'messages' is required.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array.", param="messages")
    parsed = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"'{where}' must be an object, not {_kind(message)}.", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(
                400,
                f"'{where}.role' is {json.dumps(role)}: expected one of {sorted(ROLES)}.",
                param=f"{where}.role",
            )
        parsed.append({"role": role, "content": _message_text(message, where)})
    return parsed


def _message_text(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if content is None:
        if message["role"] == "assistant":  # an assistant turn that only called tools
            return ""
        raise RequestError(400, f"'{where}.content' is required.", param=f"{where}.content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(
            400,
            f"'{where}.content' must be a string or an array of parts, not {_kind(content)}.",
            param=f"{where}.content",
        )
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise RequestError(
                400,
                f"'{where}.content[{j}]' must be a text part; this server serves text-only models.",
                param=f"{where}.content[{j}]",
            )
        if not isinstance(part.get("text"), str):
            raise RequestError(
                400, f"'{where}.content[{j}].text' must be a string.", f"{where}.content[{j}]"
            )
        texts.append(part["text"])
    return "".join(texts)


def _parse_stop(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise RequestError(400, "'stop' must be a string or an array of strings.", param="stop")
    return [s for s in stop if s] or None


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


# --- responses --------------------------------------------------------------------------------


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(_error_body(error), status_code=error.status, headers=error.headers)


def _error_body(error: RequestError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.type,
            "param": error.param,
            "code": error.code,
        }
    }


async def _send_json(
    send: Send, status: int, content: Any, headers: Mapping[str, str] | None = None
) -> None:
    """A JSON response straight onto the ASGI `send`: the bytes Starlette's JSONResponse sends."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _completion(request_id: str, chat: ChatRequest, text: str, last: Delta | None) -> dict:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": chat.model_name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": _finish_reason(last),
            }
        ],
        "usage": last.usage if last else None,
    }


def _chunk(
    request_id: str,
    chat: ChatRequest,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> str:
    """One SSE event of a streamed completion; `delta=None` makes the choice-less usage chunk."""
    chunk: dict[str, Any] = {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": chat.model_name,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if chat.include_usage:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"


def _finish_reason(last: Delta | None) -> str:
    return (last.finish_reason if last else None) or "stop"


def generation_error(error: BaseException, *, started: bool) -> RequestError:
    """How a runtime failure is reported: the caller's fault (400) or the server's (500).

    Runtimes raise ValueError for input they cannot take (a chat template refusing the roles, say);
    once tokens have come out, any failure is the server's.
    """
    if isinstance(error, ContextWindowExceeded):
        return RequestError(400, str(error), "messages", code="context_length_exceeded")
    if isinstance(error, ValueError) and not started:
        return RequestError(400, f"The model cannot take this request: {error}", "messages")
    logger.error("generation failed", exc_info=error)
    return RequestError(
        500,
        f"The model failed while generating: {type(error).__name__}: {error}",
        type="server_error",
    )


# --- generation in worker threads -------------------------------------------------------------


def busy(what: str) -> RequestError:
    """429 with Retry-After: OpenAI clients back off and retry."""
    return RequestError(
        429,
        f"The server is busy ({what}); retry after {RETRY_AFTER_SECONDS} s.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


class Generations:
    """Admission (bounded running + bounded waiting) and the worker threads that run the models.

    A slot is released when the worker thread really finishes, not when the HTTP exchange ends, so
    a cancelled generation still counts against the bound until the model has stopped.
    """

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.running = 0
        self._waiting = 0
        self._slots = asyncio.Semaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="locus-generate")
        self._loop = asyncio.get_running_loop()
        # each admitted generation's cancel event → the future its worker settles, and the job
        self._cancels: dict[threading.Event, tuple[asyncio.Future, Future]] = {}

    async def admit(self) -> None:
        """Wait for a slot, or raise 429 when the queue is full."""
        if self._slots.locked() and self._waiting >= self.max_queue:
            raise busy(f"{self.running} generations running, {self._waiting} waiting")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self.running += 1

    def run(self, work: Any, cancel: threading.Event) -> asyncio.Future:
        """Run `work()` in a worker thread of an admitted request; frees the slot when it ends.

        The worker hands its outcome back with one call into the event loop, which frees the slot
        and settles the future (`run_in_executor` takes two, and chains two futures).
        """
        future = self._loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            self._release(cancel)
            if future.done():  # cancelled meanwhile
                return
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

        def job() -> None:
            try:
                result = work()
            except BaseException as error:  # noqa: BLE001 - handed to the event loop
                self._call_in_loop(settle, None, error)
            else:
                self._call_in_loop(settle, result, None)

        self._cancels[cancel] = (future, self._pool.submit(job))
        return future

    def start_stream(self, chat: ChatRequest, cancel: threading.Event) -> asyncio.Queue:
        """Run a streamed generation; its deltas (then an exception or None) arrive in the queue."""
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()

        def produce() -> None:
            try:
                for delta in _stream_chat(chat, cancel):
                    self._call_in_loop(queue.put_nowait, delta)
                self._call_in_loop(queue.put_nowait, None)
            except BaseException as error:  # noqa: BLE001 - handed to the event loop
                self._call_in_loop(queue.put_nowait, error)

        self.run(produce, cancel)
        return queue

    def cancel_all(self) -> None:
        for cancel in list(self._cancels):
            cancel.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for future, job in list(self._cancels.values()):
            if job.cancelled():  # it never ran, so nothing else settles its future
                future.cancel()

    def _release(self, cancel: threading.Event) -> None:
        self._cancels.pop(cancel, None)
        self.running -= 1
        self._slots.release()

    def _call_in_loop(self, function: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self._loop.call_soon_threadsafe(function, *args)


def _stream_chat(chat: ChatRequest, cancel: threading.Event) -> Iterator[Delta]:
    return chat.model.stream_chat(
        chat.messages,
        max_tokens=chat.max_tokens,
        temperature=chat.temperature,
        top_p=chat.top_p,
        seed=chat.seed,
        stop=chat.stop,
        cancel=cancel,
    )


@dataclass(frozen=True)
class Completion:
    """A whole (non-streamed) generation: its text, last delta, the error that ended it, its time."""

    text: str
    last: Delta | None
    error: Exception | None
    seconds: float


def _generate_whole(chat: ChatRequest, cancel: threading.Event) -> Completion:
    pieces = []
    last = None
    error = None
    started = time.perf_counter()
    try:
        for delta in _stream_chat(chat, cancel):
            pieces.append(delta.text)
            last = delta
    except Exception as failure:
        error = failure
    return Completion("".join(pieces), last, error, time.perf_counter() - started)


async def _cancel_on_disconnect(receive: Receive, cancel: threading.Event) -> None:
    """Set `cancel` when the client goes away (the body is already read, so only that remains)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


# --- endpoints --------------------------------------------------------------------------------


async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    """POST /v1/chat/completions, as a bare ASGI app.

    Requests reach it straight from the app's `__call__`, past Starlette's middleware, routing
    and Request/Response objects, and it writes its responses onto `send` itself, the same bytes
    as Starlette's JSONResponse: that saves a third of the server's Python calls per request
    (docs/serve-performance.md).
    """
    state = scope["app"].state
    try:
        if state.api_key is not None:
            _check_authorization(_header(scope, b"authorization"), state.api_key)
        body = await _receive_body(receive, _header(scope, b"content-length"), state.max_body_bytes)
        chat = parse_chat_request(body, state.models)
        generations: Generations = state.generations
        await generations.admit()
    except RequestError as error:
        await _send_json(send, error.status, _error_body(error), error.headers)
        return
    except ClientDisconnect:  # gone before its request was read: nobody to answer
        return

    cancel = threading.Event()
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    if chat.stream:
        response = await _stream_response(receive, chat, cancel, request_id, generations)
        await response(scope, receive, send)
        return

    watcher = asyncio.create_task(_cancel_on_disconnect(receive, cancel))
    try:
        # shielded: the worker must run (and free its slot) even if this request is cancelled
        work = generations.run(lambda: _generate_whole(chat, cancel), cancel)
        completion: Completion = await asyncio.shield(work)
    finally:
        watcher.cancel()
        cancel.set()  # no-op when finished; stops the model if this task was cancelled
    if completion.error is not None:
        error = generation_error(completion.error, started=completion.last is not None)
        await _send_json(send, error.status, _error_body(error), error.headers)
        return
    # Server-Timing tells a client how much of its wait was the model (benchmarks use it)
    timing = {"Server-Timing": f"generation;dur={completion.seconds * 1000:.3f}"}
    content = _completion(request_id, chat, completion.text, completion.last)
    await _send_json(send, 200, content, timing)


class _ChatEndpoint:
    """`chat_completions` as a Route's ASGI app (Starlette would wrap a function as a Request
    endpoint); the route serves what the fast path in `_ServeApp.__call__` does not take."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await chat_completions(scope, receive, send)


async def _stream_response(
    receive: Receive,
    chat: ChatRequest,
    cancel: threading.Event,
    request_id: str,
    generations: Generations,
) -> Response:
    queue = generations.start_stream(chat, cancel)
    # Wait for the first delta before answering, so that a prompt that is too long (or any
    # early failure) still gets a proper HTTP error status instead of a broken stream.
    watcher = asyncio.create_task(_cancel_on_disconnect(receive, cancel))
    try:
        first = await queue.get()
    except BaseException:
        cancel.set()
        raise
    finally:
        watcher.cancel()
    if isinstance(first, BaseException):
        return error_response(generation_error(first, started=False))
    return GenerationStream(sse_events(request_id, chat, first, queue), cancel)


async def sse_events(
    request_id: str, chat: ChatRequest, first: Delta, queue: asyncio.Queue
) -> AsyncIterator[str]:
    """The SSE events of a streamed completion: `first`, then what the generation queues.

    The queue carries deltas, then None (done) or the exception that ended the generation.
    Deltas that queued up while the loop was busy go out as one chunk: when the server falls
    behind the model, it sends (and the client parses) fewer events instead of a backlog.
    """
    yield _chunk(request_id, chat, {"role": "assistant", "content": ""})
    item: Delta | BaseException | None = first
    last = None
    while isinstance(item, Delta):
        texts = []
        while isinstance(item, Delta):
            last = item
            texts.append(item.text)
            if queue.empty():
                item = _AWAIT
                break
            item = queue.get_nowait()
        if text := "".join(texts):
            yield _chunk(request_id, chat, {"content": text})
        if item is _AWAIT:
            item = await queue.get()
    if isinstance(item, BaseException):
        error = generation_error(item, started=True)
        payload = {"error": {"message": error.message, "type": error.type}}
        yield f"data: {json.dumps(payload)}\n\n"
    else:
        yield _chunk(request_id, chat, {}, _finish_reason(last))
        if chat.include_usage:
            yield _chunk(request_id, chat, None, usage=last.usage if last else None)
    yield "data: [DONE]\n\n"


class GenerationStream(StreamingResponse):
    """An SSE response that stops its generation however it ends: done, client gone, shutdown."""

    def __init__(self, events: AsyncIterator[str], cancel: threading.Event) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self.cancel = cancel

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.cancel.set()


async def list_models(request: Request) -> Response:
    state = request.app.state
    try:
        _check_api_key(request, state.api_key)
    except RequestError as error:
        return error_response(error)
    data = [
        {
            "id": name,
            "object": "model",
            "created": state.started_at,
            "owned_by": "locus",
            "max_model_len": model.context_window,
        }
        for name, model in state.models.items()
    ]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    generations: Generations | None = getattr(request.app.state, "generations", None)
    running = generations.running if generations else 0
    return JSONResponse(
        {"status": "ok", "models": list(request.app.state.models), "running": running}
    )


def _check_api_key(request: Request, api_key: str | None) -> None:
    if api_key is not None:
        _check_authorization(request.headers.get("authorization", ""), api_key)


def _check_authorization(authorization: str, api_key: str) -> None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), api_key):
        raise RequestError(
            401,
            "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
        )


def _header(scope: Scope, name: bytes) -> str:
    """A request header's value ('' when absent); `name` in lower case, as ASGI gives names."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


async def _read_body(request: Request, limit: int) -> bytes:
    """The body of a Starlette request, or 413 past `limit` bytes (see `_receive_body`)."""
    return await _receive_body(request.receive, request.headers.get("content-length", ""), limit)


async def _receive_body(receive: Receive, declared: str, limit: int) -> bytes:
    """The body, or 413 past `limit` bytes; ClientDisconnect if the client goes away first.

    An oversized body is still read to its end (and thrown away, up to a hard cap), because a
    server that answers and closes mid-upload makes most clients report a broken pipe instead of
    the 413.
    """
    too_large = RequestError(
        413,
        f"The request body is larger than this server's limit of {limit:,} bytes.",
        code="request_too_large",
    )
    if declared.isdigit() and int(declared) > 16 * limit:
        raise too_large
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 16 * limit:
            break
        if not message.get("more_body", False):
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


async def _http_error(request: Request, error: Exception) -> Response:
    """Routing errors (unknown path, wrong method) in OpenAI's error format."""
    assert isinstance(error, HTTPException)
    return error_response(
        RequestError(
            error.status_code,
            f"{request.method} {request.url.path}: {error.detail}",
            code="not_found" if error.status_code == 404 else None,
            headers=error.headers,
        )
    )


async def _unexpected_error(request: Request, error: Exception) -> Response:
    return error_response(_unexpected(error))


def _unexpected(error: Exception) -> RequestError:
    return RequestError(500, f"Internal server error: {type(error).__name__}", type="server_error")


# --- application and running it ----------------------------------------------------------------


class _ServeApp(Starlette):
    """Starlette, except that `POST /v1/chat/completions` goes straight to `chat_completions`.

    Everything else (other paths and methods, lifespan) takes Starlette's way. A fault the
    endpoint does not handle is logged and gets the OpenAI-format 500 that Starlette's error
    middleware gives; unlike there, the connection stays open for the client's next request.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != CHAT_PATH or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        try:
            await chat_completions(scope, receive, send)
        except Exception as error:
            logger.error("unexpected failure in %s", CHAT_PATH, exc_info=error)
            try:
                await _send_json(send, 500, _error_body(_unexpected(error)))
            except RuntimeError:  # the response had started: only dropping the connection is left
                raise error from None


def create_app(
    models: Mapping[str, ChatModel],
    *,
    max_concurrency: int = 4,
    max_queue: int = 16,
    max_body_bytes: int = 4_000_000,
    api_key: str | None = None,
) -> Starlette:
    """The ASGI app serving `models` (name → ChatModel) with OpenAI's chat completions API.

    `max_concurrency` generations run at once, `max_queue` more wait, the rest get 429.
    With `api_key` set, `/v1/*` requires `Authorization: Bearer <api_key>` (`/health` stays open).
    """
    if max_concurrency < 1 or max_queue < 0 or max_body_bytes < 1:
        raise ConfigError(
            f"create_app: max_concurrency must be ≥ 1, max_queue ≥ 0, max_body_bytes ≥ 1; got "
            f"{max_concurrency}, {max_queue}, {max_body_bytes}"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.generations = Generations(max_concurrency, max_queue)
        try:
            yield
        finally:
            app.state.generations.cancel_all()

    app = _ServeApp(
        routes=[
            Route(CHAT_PATH, _ChatEndpoint(), methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.state.models = dict(models)
    app.state.max_body_bytes = max_body_bytes
    app.state.api_key = api_key
    app.state.started_at = int(time.time())
    return app


def serve(
    models: Mapping[str, ChatModel],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_concurrency: int = 4,
    max_queue: int = 16,
    max_body_bytes: int = 4_000_000,
    api_key: str | None = None,
    graceful_timeout: float = 10.0,
    access_log: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get `graceful_timeout` seconds to finish.

    uvicorn runs on httptools and uvloop when they are installed (its "auto" choice): a plain
    request takes 418 Python calls instead of 1,080 with h11 and asyncio. The access log is off
    unless asked for: uvicorn's line adds 140 more and a write (docs/serve-performance.md).
    """
    app = create_app(
        models,
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        max_body_bytes=max_body_bytes,
        api_key=api_key,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        timeout_graceful_shutdown=graceful_timeout,
        access_log=access_log,
    )
    _QuietServer(config).run()


class _QuietServer(uvicorn.Server):
    """uvicorn's server, except that a stop signal ends `run()` normally after the graceful shutdown.

    uvicorn re-raises the signal afterwards, which ends `locus serve` with a KeyboardInterrupt
    traceback or a killed-by-signal status instead of exit code 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class ServerThread:
    """Serve an app on loopback from a background thread: `with ServerThread(app) as base_url:`.

    Binds an ephemeral port (unless one is given), returns once the server answers `/health`, and
    on exit shuts down gracefully (in-flight requests get `graceful_timeout` seconds).
    """

    def __init__(
        self,
        app: Starlette,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        startup_timeout: float = 10.0,
        graceful_timeout: float = 5.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.graceful_timeout = graceful_timeout
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> str:
        sock = _listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self.base_url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(
            self.app,
            lifespan="on",
            log_config=None,  # leave the embedding program's logging alone
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=self.graceful_timeout,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="locus-serve", daemon=True
        )
        self._thread.start()
        try:
            self._wait_until_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            sock.close()
            raise
        return self.base_url

    def __exit__(self, *exc_info: object) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(self.graceful_timeout + 5.0)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5.0)

    def _wait_until_healthy(self) -> None:
        assert self._server is not None and self._thread is not None
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server on {self.base_url} stopped while starting")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server on {self.base_url} did not start in time")
            time.sleep(0.002)
        with socket.create_connection((self.host, self.port), timeout=self.startup_timeout) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: locus\r\nConnection: close\r\n\r\n")
            status_line = s.makefile("rb").readline()
        if b" 200 " not in status_line:
            raise RuntimeError(f"GET {self.base_url}/health answered {status_line!r}")


def _listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready to hand to uvicorn.

    Its protocol must say TCP explicitly: asyncio sets TCP_NODELAY only on connections whose
    socket has proto == IPPROTO_TCP, and without it every response waits ~40 ms for a delayed ACK
    (Nagle) between its header and body writes.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


# --- command line -------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve local models, or the router as a gateway, over an OpenAI-compatible HTTP API",
        description="Serve local models at /v1/chat/completions, /v1/models and /health "
        "(what vLLM offers on-prem); or, with --config/--router, run the router as a gateway: "
        "/v1/chat/completions routed through the policy, /v1/route (the decision only) and "
        "/health. Stops gracefully on SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help="a prepared local model to serve; repeat for several (default: smollm2)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=4, help="generations running at once (default 4)"
    )
    parser.add_argument(
        "--max-queue", type=int, default=16, help="requests waiting beyond that; then 429"
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per request (off by default: it costs CPU on every request's path)",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="require 'Authorization: Bearer <key>' with the key read from this variable",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="gateway mode: route every call with this locus config (see locus_llm.gateway)",
    )
    parser.add_argument(
        "--router",
        action="store_true",
        help="gateway mode with LOCUS_CONFIG (or the built-in default config)",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=64,
        help="gateway mode: calls handled at once; then 429 (default 64)",
    )
    parser.set_defaults(handler=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that variable is unset or empty")
    if getattr(args, "config", None) or getattr(args, "router", False):
        return _serve_gateway(args, api_key)
    from locus_llm.local.models import load  # the runtime is heavy: only when serving

    names = args.models or ["smollm2"]
    models = {name: load(name) for name in names}
    serve(
        models,
        host=args.host,
        port=args.port,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        api_key=api_key,
        access_log=args.access_log,
    )
    return 0


def _serve_gateway(args: argparse.Namespace, api_key: str | None) -> int:
    if args.models:
        raise ConfigError(
            "--model serves local models, --config/--router runs the router: "
            "choose one (the router reaches local models through its loci)"
        )
    from locus_llm.gateway import serve_gateway
    from locus_llm.router import Router

    router = Router.from_file(args.config) if args.config else Router.default()
    serve_gateway(
        router, host=args.host, port=args.port, max_inflight=args.max_inflight, api_key=api_key
    )
    return 0

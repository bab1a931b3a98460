"""A real OpenAI-compatible HTTP server on loopback whose answers are scripted, faults included.

It stands in for vLLM and cloud endpoints in tests. It speaks HTTP/1.1 over a raw asyncio socket
server (not a framework) because several faults live below HTTP: a connection reset before any
byte, a socket that accepts and never answers, a stream cut without its terminator.

    with FaultServer() as server:
        server.script("gpt", [status(503), ok("fine")])   # first call 503, then answers
        ... litellm.completion(model="openai/gpt", api_base=server.url + "/v1", ...)
        server.requests  # what arrived: (model, body) per request
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Behaviour:
    kind: str  # ok | status | reset | hang
    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    code: str | None = None
    message: str = ""
    first_token_delay_s: float = 0.0  # streaming: headers at once, first token later
    cut_after: int | None = None  # streaming: close after N content chunks, no terminator
    stall_after: int | None = None  # streaming: go silent after N chunks for stall_s
    stall_s: float = 30.0
    malformed_at: int | None = None  # streaming: one garbage event before chunk N
    no_done: bool = False  # streaming: complete but without `data: [DONE]`
    echo: bool = False  # answer with the last user message (to see what arrived)
    reject_prefill: bool = False  # 400 when the last message is the assistant's (a prefill)
    until: float | None = None  # time.monotonic() deadline: repeat this behaviour until then


def ok(text: str = "Hello from the loopback server.", **kw: Any) -> Behaviour:
    return Behaviour("ok", text=text, **kw)


def status(
    code: int,
    message: str = "",
    *,
    error_code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Behaviour:
    return Behaviour(
        "status",
        status=code,
        code=error_code,
        headers=headers or {},
        message=message or f"scripted {code}",
    )


def reset() -> Behaviour:
    return Behaviour("reset")


def hang() -> Behaviour:
    return Behaviour("hang")


class FaultServer:
    def __init__(self) -> None:
        self.scripts: dict[str, list[Behaviour]] = {}
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._lock = threading.Lock()
        self._writers: set[asyncio.StreamWriter] = set()

    # scripting -----------------------------------------------------------------------------
    def script(self, model: str, behaviours: list[Behaviour]) -> None:
        """Requests for `model` take the behaviours in order; the last one repeats."""
        with self._lock:
            self.scripts[model] = list(behaviours)

    def calls(self, model: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r["model"] == model)

    def _next(self, model: str) -> Behaviour:
        with self._lock:
            queue = self.scripts.get(model)
            while queue and queue[0].until is not None and len(queue) > 1:
                if time.monotonic() < queue[0].until:
                    return queue[0]
                queue.pop(0)  # its time is over: on to the next behaviour
            if not queue:
                return ok(echo=True)
            return queue.pop(0) if len(queue) > 1 and queue[0].until is None else queue[0]

    # lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> FaultServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._closing = asyncio.Event()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            self._closing.set()  # hanging and stalled connections end now, not at exit
            for writer in list(self._writers):
                writer.transport.abort()
            for _ in range(100):
                if not self._writers:
                    break
                await asyncio.sleep(0.01)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # HTTP ----------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                keep_open = await self._respond(request, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _respond(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        method, path, body = request["method"], request["path"], request["body"]
        if method == "GET" and path.endswith("/models"):
            await _send_json(
                writer,
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": name, "object": "model", "owned_by": "fault-server"}
                        for name in self.scripts
                    ],
                },
            )
            return True
        if method == "GET" and path == "/health":
            await _send_json(writer, 200, {"status": "ok"})
            return True
        if not path.endswith("/chat/completions"):
            await _send_json(writer, 404, {"error": {"message": f"no route {path}"}})
            return True
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            await _send_json(writer, 400, {"error": {"message": "invalid JSON"}})
            return True
        model = payload.get("model", "")
        with self._lock:
            self.requests.append({"model": model, "body": payload, "time": time.monotonic()})
        behaviour = self._next(model)
        if behaviour.kind == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if behaviour.kind == "hang":
            await self._closing.wait()
            return False
        messages = payload.get("messages") or [{}]
        if behaviour.reject_prefill and messages[-1].get("role") == "assistant":
            error = {
                "message": "assistant prefill is not supported",
                "type": "invalid_request",
                "code": "prefill_unsupported",
                "param": "messages",
            }
            await _send_json(writer, 400, {"error": error})
            return True
        if behaviour.kind == "status":
            error = {
                "message": behaviour.message,
                "type": "scripted",
                "code": behaviour.code,
                "param": None,
            }
            await _send_json(writer, behaviour.status, {"error": error}, behaviour.headers)
            return True
        text = behaviour.text
        if behaviour.echo:
            last = next(
                (m for m in reversed(payload.get("messages", [])) if m.get("role") == "user"), {}
            )
            content = last.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
        if payload.get("stream"):
            await self._stream(writer, model, text, behaviour, payload)
            return False
        await _send_json(writer, 200, _completion(model, text, payload))
        return True

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        model: str,
        text: str,
        b: Behaviour,
        payload: dict[str, Any],
    ) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        if b.first_token_delay_s:
            await asyncio.sleep(b.first_token_delay_s)
        pieces = _tokens(text)
        base = {
            "id": "chatcmpl-fault",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        first = {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
        writer.write(_event(first))
        for i, piece in enumerate(pieces):
            if b.cut_after is not None and i >= b.cut_after:
                writer.transport.abort()
                return
            if b.stall_after is not None and i == b.stall_after:
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), b.stall_s)
            if b.malformed_at is not None and i == b.malformed_at:
                writer.write(b"data: {this is not json\n\n")
            chunk = {
                **base,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
            writer.write(_event(chunk))
            await writer.drain()
        final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        writer.write(_event(final))
        if (payload.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": _usage(payload, text)}
            writer.write(_event(usage))
        if not b.no_done:
            writer.write(b"data: [DONE]\n\n")
        await writer.drain()
        writer.close()


def _tokens(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _usage(payload: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", ""))) for m in payload.get("messages", [])) // 4 + 1
    completion = len(_tokens(text))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(model: str, text: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": _usage(payload, text),
    }


def _event(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _send_json(
    writer: asyncio.StreamWriter,
    code: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    data = json.dumps(body).encode()
    head = [
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers = {}
    while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return {"method": method, "path": path.split("?")[0], "headers": headers, "body": body}


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

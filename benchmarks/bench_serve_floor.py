"""Is issue 5's HTTP-path target reachable behind LiteLLM's `hosted_vllm/` client at all?

Target (issue 5): through `locus serve` and LiteLLM, the HTTP path adds at most 2 ms per request
over calling the runtime directly; read as `litellm(hosted_vllm → server)` minus
`litellm(locus-onnx, in process)` (docs/serve-performance.md).

This script puts a *floor* server in place of `locus serve`: the cheapest OpenAI-compatible
responder there can be on loopback, a raw asyncio Protocol (on uvloop when installed) that finds
the end of one HTTP/1.1 request (headers, Content-Length), keeps the connection alive and writes a
canned, valid chat.completion of the same shape, size and headers as `locus serve`'s answer for
the zero-cost model. It parses no JSON and runs no framework: it picks the canned answer by a
bytes search for the prompt. Whatever LiteLLM adds over its in-process path when talking to that
server is the client's own cost of going over HTTP; if it is above 2 ms, no server can meet the
target as we read it.

All paths run in one process, interleaved request by request, the order rotating (load from
other processes hits all alike); each pair of paths is compared on the same prompt in the same
round. Per request: wall time, CPU time of this process (all threads, LiteLLM's background
logging included: it is let finish, untimed, before the next request), of the calling thread
alone, and of the server process (all its threads). The zero-cost model echoes the prompt's
words, so the model's time is nil and every path does the same work:

  direct              `ZeroCostModel.stream_chat` in this process (the baseline of no LiteLLM)
  litellm-local       `litellm.completion("locus-onnx/zero-cost")`: LiteLLM's in-process path
  httpx-floor         httpx (keep-alive) → floor server
  litellm-floor       `litellm.completion("hosted_vllm/…")` → floor, price registered
  httpx-serve         httpx → `locus serve` (zero-cost model, child process)
  litellm-serve       `litellm.completion("hosted_vllm/…")` → `locus serve`, price registered
  litellm-router-serve  the same with what the router adds (timeout, max_retries=0, num_retries=0)
  httpx-before, litellm-before  with --baseline-server FILE: the same through another version of
                      locus_llm/server.py (a before/after comparison of the server in one run)

Then a profiler (sys.setprofile), on the calling thread, counts where a LiteLLM call's Python function calls and
exclusive time go (HTTP client, OpenAI transform and pydantic, logging, pricing, the rest), for
the in-process path and the floor path. Counts are deterministic; times are cProfile's (inflated).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_serve_floor.py [--rounds 60]

About 1-2 minutes on 2 cores (most of it importing LiteLLM and starting two servers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import httpx  # noqa: E402
from bench_serve import (  # noqa: E402 - the sibling benchmark's server helpers and model
    PROMPTS,
    TARGET_ADDED_MS,
    ZeroCostModel,
    _server,
    _server_cpu_ms,
    _settle_litellm,
    _track_litellm,
)

MAX_TOKENS = 8
PRICED = "zero-cost-priced"  # the served name whose price LiteLLM is told (register_price)


class Sample(NamedTuple):
    wall_ms: float
    cpu_ms: float  # this process, all threads + the server process, all threads
    client_cpu_ms: float  # this process, all threads (LiteLLM's background logging included)
    thread_cpu_ms: float  # the calling thread alone
    server_cpu_ms: float


Path = Callable[[list[dict[str, str]]], str]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60, help="passes over the prompts")
    parser.add_argument("--profile-calls", type=int, default=100, help="calls per profiled path")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline-server",
        metavar="FILE",
        help="also serve through this copy of locus_llm/server.py (e.g. `git show "
        "HEAD~1:locus_llm/server.py > /tmp/server_before.py`): paths httpx-before, litellm-before",
    )
    parser.add_argument("--serve-zero-cost", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--server-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_floor:
        serve_floor(args.serve_floor)
        return 0
    if args.serve_zero_cost:
        serve = _server_module(args.server_file).serve
        serve({"zero-cost": ZeroCostModel(), PRICED: ZeroCostModel()}, port=args.serve_zero_cost)
        return 0

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    me = [sys.executable, __file__]
    commands = {  # server → the command that runs it (the port is appended)
        "floor": [*me, "--serve-floor"],
        "serve": [*me, "--serve-zero-cost"],
    }
    if args.baseline_server:
        commands["before"] = [*me, "--server-file", args.baseline_server, "--serve-zero-cost"]
    with contextlib.ExitStack() as stack:
        servers = {name: stack.enter_context(_server(c, "")) for name, c in commands.items()}
        paths, litellm_calls = _paths({name: url for name, (url, _) in servers.items()})
        # the server each path reaches (its name ends the path's), whose CPU time is counted
        pids = {path: servers.get(path.split("-")[-1], ("", 0))[1] for path in paths}
        timings = _interleave(paths, args.rounds, pids)
        profiles = {
            name: _profile(call, args.profile_calls) for name, call in litellm_calls.items()
        }
    print(
        f"zero-cost model, max_tokens {MAX_TOKENS}, {len(PROMPTS)} prompts x {args.rounds} rounds; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average "
        f"{load_before:.2f} → {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
        f"{time.monotonic() - started:.0f} s"
    )
    _report(timings, profiles)
    return 0


def _server_module(path: str | None) -> Any:
    """locus_llm.server, or another version of it loaded from `path` (for --baseline-server)."""
    if not path:
        import locus_llm.server

        return locus_llm.server
    spec = importlib.util.spec_from_file_location("baseline_server", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# --- the floor server --------------------------------------------------------------------------


def canned_responses() -> dict[bytes, bytes]:
    """prompt → the whole HTTP response `locus serve` gives for it (zero-cost model), canned."""
    model = ZeroCostModel()
    responses = {}
    for prompt in PROMPTS:
        deltas = list(model.stream_chat([{"role": "user", "content": prompt}], max_tokens=8))
        body = {
            "id": "chatcmpl-" + "0" * 32,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": PRICED,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(d.text for d in deltas)},
                    "logprobs": None,
                    "finish_reason": deltas[-1].finish_reason,
                }
            ],
            "usage": deltas[-1].usage,
        }
        content = json.dumps(body, separators=(",", ":")).encode()
        head = (
            "HTTP/1.1 200 OK\r\n"
            f"date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
            "server: uvicorn\r\n"
            "server-timing: generation;dur=0.039\r\n"
            f"content-length: {len(content)}\r\n"
            "content-type: application/json\r\n\r\n"
        )
        responses[json.dumps(prompt).encode()] = head.encode() + content
    return responses


class FloorProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection answered with canned responses, nothing parsed."""

    def __init__(self, responses: dict[bytes, bytes]) -> None:
        self.responses = responses
        self.fallback = next(iter(responses.values()))
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            if (at := head.find(b"content-length:")) >= 0:
                stop = head.find(b"\r\n", at)
                length = int(head[at + 15 : stop if stop >= 0 else end])
            if len(self.buffer) < end + 4 + length:
                return  # the body is still arriving
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            answer = next((r for p, r in self.responses.items() if p in body), self.fallback)
            self.transport.write(answer)


def serve_floor(port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    responses = canned_responses()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: FloorProtocol(responses), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


# --- the paths ---------------------------------------------------------------------------------


def _paths(urls: dict[str, str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """The paths to time (each server in `urls` through httpx and LiteLLM), and those to profile."""
    import litellm

    from locus_llm.local import models
    from locus_llm.local.provider import register, register_price

    register()
    _track_litellm()
    litellm.suppress_debug_info = True
    model = ZeroCostModel()
    load = models.load  # `locus-onnx/zero-cost` must reach this model: the provider calls load
    models.load = lambda name: model if name == model.name else load(name)
    register_price(f"hosted_vllm/{PRICED}", 0.0, 0.0)
    params: dict[str, Any] = {"max_tokens": MAX_TOKENS, "temperature": 0}
    router_params = {"timeout": 600.0, "max_retries": 0, "num_retries": 0}
    remote = {"model": f"hosted_vllm/{PRICED}", "api_key": "none"}

    def direct(messages: list[dict[str, str]]) -> str:
        return "".join(d.text for d in model.stream_chat(messages, max_tokens=MAX_TOKENS))

    def litellm_local(messages: list[dict[str, str]]) -> str:
        response = litellm.completion(model="locus-onnx/zero-cost", messages=messages, **params)
        return response.choices[0].message.content

    def with_httpx(base_url: str) -> Path:
        client = httpx.Client(base_url=base_url, timeout=60)

        def call(messages: list[dict[str, str]]) -> str:
            body = {"model": PRICED, "messages": messages} | params
            response = client.post("/v1/chat/completions", json=body)
            return response.json()["choices"][0]["message"]["content"]

        return call

    def with_litellm(base_url: str, extra: dict[str, Any]) -> Path:
        def call(messages: list[dict[str, str]]) -> str:
            target = remote | {"api_base": base_url + "/v1"}
            response = litellm.completion(messages=messages, **target, **params, **extra)
            return response.choices[0].message.content

        return call

    paths = {"direct": direct, "litellm-local": litellm_local}
    for server, url in urls.items():
        paths[f"httpx-{server}"] = with_httpx(url)
        paths[f"litellm-{server}"] = with_litellm(url, {})
    paths["litellm-router-serve"] = with_litellm(urls["serve"], router_params)
    for name, path in paths.items():  # warm up, and check that every path does the same work
        for prompt in PROMPTS:
            conversation = [{"role": "user", "content": prompt}]
            expected = direct(conversation)
            if (got := path(conversation)) != expected:
                raise SystemExit(f"{name} returned {got!r}, direct returned {expected!r}")
    to_profile = {name: paths[name] for name in ("litellm-local", "litellm-floor")}
    return paths, to_profile


def _interleave(paths: dict[str, Path], rounds: int, pids: dict[str, int]) -> dict[str, list]:
    timings: dict[str, list[Sample]] = {name: [] for name in paths}
    order = list(paths)
    for round_number in range(rounds):
        for prompt in PROMPTS:
            conversation = [{"role": "user", "content": prompt}]
            shift = round_number % len(order)
            for name in order[shift:] + order[:shift]:
                pid = pids[name]
                _settle_litellm()
                server = _server_cpu_ms(pid) if pid else 0.0
                process, thread = time.process_time(), time.thread_time()
                started = time.perf_counter()
                paths[name](conversation)
                wall = (time.perf_counter() - started) * 1000
                thread = (time.thread_time() - thread) * 1000
                _settle_litellm()  # the request's background logging is part of its CPU time
                process = (time.process_time() - process) * 1000
                server = (_server_cpu_ms(pid) - server) if pid else 0.0
                timings[name].append(Sample(wall, process + server, process, thread, server))
    return timings


# --- where a LiteLLM call goes: profile counts by category ------------------------------------

# A function whose file (or name) matches one of these sets its category; any other function
# (the stdlib, builtins, LiteLLM's generic modules) counts toward its caller's category, so that
# e.g. the enum and dict work done while pricing is pricing. Outside all of them: "LiteLLM other".
CATEGORIES = [
    (
        "HTTP client (httpx, httpcore, h11, socket)",
        ("/httpx/", "/httpcore/", "/h11/", "/custom_httpx/http_handler", "socket.py", "ssl.py"),
    ),
    (
        "pricing (cost map lookups, cost of the response)",
        ("cost_calc", "cost_calculator", "per_call_pricing", ":get_model_info", "_model_info"),
    ),
    (
        "logging object and debug logging",
        ("litellm_logging", "/logging/__init__", "/_logging.py", "logging_utils"),
    ),
    (
        "OpenAI transform, response objects (pydantic)",
        (
            "/pydantic",
            "/llms/openai/",
            "/llms/hosted_vllm/",
            "/llms/base_llm/",
            "llm_response_utils",
            "/litellm/types/",
            "prompt_templates",
        ),
    ),
]
OTHER = "LiteLLM other (main, utils, parameters, providers)"


def _category(code: Any) -> str | None:
    where = f"{code.co_filename}:{code.co_name}"
    return next((name for name, marks in CATEGORIES if any(m in where for m in marks)), None)


def _profile(call: Path, calls: int) -> dict[str, tuple[float, float]]:
    """category → (function calls per request, share of the profiled time), calling thread.

    Counts include calls of C functions (builtins, pydantic-core). Times are taken under the
    profiler, which inflates small calls: read them as shares, not milliseconds.
    """
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    counts: dict[str, int] = {}
    times: dict[str, float] = {}
    stack = [OTHER]
    clock = [time.perf_counter()]
    categories: dict[Any, str | None] = {}

    def charge() -> None:
        now = time.perf_counter()
        times[stack[-1]] = times.get(stack[-1], 0.0) + now - clock[0]
        clock[0] = now

    def profile(frame: Any, event: str, arg: Any) -> None:
        charge()
        if event == "call":
            code = frame.f_code
            if code not in categories:
                categories[code] = _category(code)
            stack.append(categories[code] or stack[-1])
        elif event == "c_call":
            stack.append(stack[-1])
        elif event in ("return", "c_return", "c_exception") and len(stack) > 1:
            stack.pop()
            return
        else:
            return
        counts[stack[-1]] = counts.get(stack[-1], 0) + 1

    for i in range(calls):
        _settle_litellm()
        del stack[1:]
        clock[0] = time.perf_counter()
        sys.setprofile(profile)
        call(conversations[i % len(conversations)])
        sys.setprofile(None)
    _settle_litellm()
    total = sum(times.values()) or 1.0
    names = [name for name, _ in CATEGORIES] + [OTHER]
    return {name: (counts.get(name, 0) / calls, times.get(name, 0.0) / total) for name in names}


# --- report ------------------------------------------------------------------------------------


def _paired(
    timings: dict[str, list[Sample]], over: str, under: str, measure: Callable[[Sample], float]
) -> float:
    pairs = zip(timings[over], timings[under], strict=True)
    return statistics.median(measure(a) - measure(b) for a, b in pairs)


def _report(
    timings: dict[str, list[Sample]], profiles: dict[str, dict[str, tuple[float, float]]]
) -> None:
    print("\nmedians per request, ms")
    print(
        f"{'path':20} {'wall':>7} {'p10':>6} {'p90':>6} {'CPU':>6} "
        f"{'client':>6} {'thread':>6} {'server':>6}"
    )
    for name, samples in timings.items():
        walls = [s.wall_ms for s in samples]
        deciles = statistics.quantiles(walls, n=10)
        print(
            f"{name:20} {statistics.median(walls):7.3f} {deciles[0]:6.2f} {deciles[-1]:6.2f} "
            + " ".join(
                f"{statistics.median(getattr(s, field) for s in samples):6.3f}"
                for field in ("cpu_ms", "client_cpu_ms", "thread_cpu_ms", "server_cpu_ms")
            )
        )

    def wall(s: Sample) -> float:
        return s.wall_ms

    def cpu(s: Sample) -> float:
        return s.cpu_ms

    def client(s: Sample) -> float:
        return s.client_cpu_ms

    def thread(s: Sample) -> float:
        return s.thread_cpu_ms

    readings = [
        ("litellm-floor", "litellm-local", "LiteLLM over HTTP to a server doing nothing"),
        ("httpx-floor", "direct", "a lean client over HTTP to a server doing nothing"),
        ("litellm-serve", "litellm-local", "the target's reading: LiteLLM → locus serve"),
        ("litellm-router-serve", "litellm-local", "the same with the router's parameters"),
        ("litellm-router-serve", "litellm-serve", "what the router's parameters change"),
        ("httpx-serve", "direct", "locus serve + hop, lean client"),
        ("httpx-serve", "httpx-floor", "locus serve over the floor server"),
        ("litellm-serve", "litellm-floor", "the same, behind LiteLLM"),
        ("litellm-local", "direct", "LiteLLM's own cost, in process"),
    ]
    if "httpx-before" in timings:
        readings += [
            ("httpx-before", "httpx-serve", "the baseline server over this one, httpx"),
            ("litellm-before", "litellm-serve", "the same, behind LiteLLM"),
            ("litellm-before", "litellm-local", "the target's reading with the baseline server"),
        ]
    print("\nmedians of paired differences (same prompt, same round), ms")
    print(f"{'difference':38} {'wall':>7} {'CPU':>7} {'client':>7} {'thread':>7}")
    for over, under, what in readings:
        print(
            f"{over + ' - ' + under:38} "
            + " ".join(
                f"{_paired(timings, over, under, measure):+7.3f}"
                for measure in (wall, cpu, client, thread)
            )
            + f"  {what}"
        )

    print("\nprofile, calling thread: function calls per request (share of profiled time)")
    print(f"{'category':50} " + " ".join(f"{name:>20}" for name in profiles))
    for category in [name for name, _ in CATEGORIES] + [OTHER]:
        print(
            f"{category:50} "
            + " ".join(f"{p[category][0]:10.0f} ({p[category][1]:5.1%})" for p in profiles.values())
        )
    print(
        f"{'total':50} "
        + " ".join(f"{sum(c for c, _ in p.values()):10.0f} {'':8}" for p in profiles.values())
    )

    # A request waits for the calling thread's work and the server's, one after the other; the
    # logging thread runs after the answer is back. So the calling thread's extra CPU is what no
    # server can take away, and the floor's wall time is the least a real server can add to.
    floor_thread = _paired(timings, "litellm-floor", "litellm-local", thread)
    floor_cpu = _paired(timings, "litellm-floor", "litellm-local", cpu)
    floor_wall = _paired(timings, "litellm-floor", "litellm-local", wall)
    served_wall = _paired(timings, "litellm-serve", "litellm-local", wall)
    served_cpu = _paired(timings, "litellm-serve", "litellm-local", cpu)
    if floor_thread > TARGET_ADDED_MS:
        verdict = "NOT reachable behind LiteLLM's hosted_vllm client: its own extra work is over"
    elif floor_wall > TARGET_ADDED_MS:
        verdict = "NOT reachable in this run: a server that does nothing already adds more than"
    else:
        verdict = f"{TARGET_ADDED_MS - floor_wall:.2f} ms left for the server within"
    # CPU times move with the machine's state from run to run; this ratio moves far less
    local_thread = statistics.median(s.thread_cpu_ms for s in timings["litellm-local"])
    print(
        f"\nfloor: LiteLLM over HTTP to a server that does nothing, over its in-process path: "
        f"{floor_wall:+.2f} ms wall, {floor_cpu:+.2f} ms CPU, of which {floor_thread:+.2f} ms on "
        f"the calling thread ({floor_thread / local_thread:.2f} x the calling thread's CPU of the "
        f"whole in-process call, {local_thread:.2f} ms); {verdict} {TARGET_ADDED_MS:.0f} ms\n"
        f"target's reading (LiteLLM → locus serve over LiteLLM in process): {served_wall:+.2f} ms "
        f"wall, {served_cpu:+.2f} ms CPU: "
        + ("met" if served_wall <= TARGET_ADDED_MS else "NOT met")
    )


if __name__ == "__main__":
    raise SystemExit(main())

"""What `locus serve` + LiteLLM add per request over calling the ONNX runtime directly.

Target (issue 5): through `locus serve` and LiteLLM's `hosted_vllm/` provider, the HTTP path adds
at most 2 ms per request over calling the runtime directly.

How the target is read. A LiteLLM call costs several ms of CPU in LiteLLM itself (parameter
mapping, logging objects, cost calculation, a success-logging thread), and exactly that cost is
paid by `litellm.completion("locus-onnx/smollm2")`, which calls the runtime in process. What the
HTTP path adds is therefore `litellm-http` minus `litellm-local`: the same LiteLLM call, once over
HTTP to `locus serve` and once in process. The script reports that (the verdict) beside the other
differences, so that a reader who reads the target otherwise can judge: `http` minus `direct`
(the server and the network hop with a lean client, no LiteLLM anywhere) and `litellm-http` minus
`direct` (everything, LiteLLM's own cost included).

Part 1, the real model: the same prompts, greedy, a small max_tokens, one request at a time, the
paths interleaved round by round (so that load from other processes hits all alike):
  direct          `model.stream_chat(...)` in this process (the baseline)
  litellm-local   `litellm.completion("locus-onnx/smollm2")`: LiteLLM's own cost, no HTTP
  http            httpx (keep-alive) → `locus serve` in a child process
  litellm-http    `litellm.completion("hosted_vllm/smollm2", api_base=...)` → `locus serve`
Every path must return the direct text, or the run stops: the work must be the same. "Added" is
measured per request: the request's total time minus the runtime's own time in that same request
(timed around `stream_chat` in this process, or reported by the server in its `Server-Timing:
generation;dur=...` header). The model's time swings with the load on a shared machine by far
more than 2 ms; subtracting it request by request leaves the cost of the path. Differences
between paths are paired: the same prompt in the same round, whose paths ran back to back.
Before each timed request, LiteLLM's background logging of the previous ones is let finish
(untimed), so that no path is charged another's logging.

Part 2, the path alone: the same server code in a child process serving a model that costs
nothing (it echoes words), so each request's whole time is the path's, streamed or not; the
`litellm-local` paths run the same model in process through the `locus-onnx` provider. On a
busy machine wall times are mostly waiting for a core (an HTTP request wakes four threads in
two processes, an in-process call none), so part 2 also counts each request's CPU time, which
load moves far less: this process's (all threads, LiteLLM's logging included) and the server's
(its threads' schedstat). On an idle machine a request's latency is about the sum of the two plus
a few thread wake-ups.
A streamed response from the zero-cost model arrives in fewer chunks than it has words: the
server sends deltas that queued up while it was busy as one chunk (the `chunks` column).

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/bench_serve.py [--rounds 30]

`bench_serve_floor.py` puts a do-nothing server in place of `locus serve`, to tell what LiteLLM's
HTTP client costs by itself (docs/serve-performance.md).

About 3-5 minutes on 2 cores (part 1 runs the real model 600 times).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import Any, NamedTuple

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from locus_llm.local.base import Delta  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "Say hello in Spanish.",
    "What is 2 + 2?",
    "Give me one word that rhymes with cat.",
]
TARGET_ADDED_MS = 2.0
_LITELLM_LOGGING: list[Future] = []  # LiteLLM's background logging tasks (see _track_litellm)


class Sample(NamedTuple):
    """One request: its wall time, the runtime's share of it, and the CPU time it took."""

    total_ms: float
    runtime_ms: float
    client_cpu_ms: float  # this process, all threads (LiteLLM's background logging included)
    server_cpu_ms: float  # the server process, all threads (0 for in-process paths)


Timings = dict[str, list[Sample]]  # path → one Sample per request, in the order they ran
Path = Callable[[list[dict[str, str]]], tuple[str, float]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=30, help="passes over the prompts (part 1)")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--path-rounds", type=int, default=60, help="passes in part 2")
    parser.add_argument("--serve-zero-cost", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_zero_cost:  # the child process of part 2
        from locus_llm.server import serve

        # the same model under a second name, whose price LiteLLM is told (see _measure_path)
        models = {"zero-cost": ZeroCostModel(), "zero-cost-priced": ZeroCostModel()}
        serve(models, port=args.serve_zero_cost)
        return 0

    from locus_llm.local.models import load, prepare_default

    if args.model == "smollm2":
        prepare_default()
    model = load(args.model)
    load_before = os.getloadavg()[0]
    serve_real = [sys.executable, "-m", "locus_llm.cli", "serve", "--model", args.model]
    serve_zero = [sys.executable, __file__, "--serve-zero-cost"]
    with _server(serve_real, "--port") as real_server, _server(serve_zero, "") as zero:
        real = _measure_real(model, args.model, *real_server, args.rounds, args.max_tokens)
        path, chunks = _measure_path(*zero, args.path_rounds, args.max_tokens)
    print(
        f"model {args.model}, max_tokens {args.max_tokens}, {len(PROMPTS)} prompts; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average "
        f"{load_before:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"server on {_server_stack()}"
    )
    _report(real, path, chunks, args)
    return 0


def _server_stack() -> str:
    """What uvicorn's "auto" choice runs on: httptools and uvloop when installed."""
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {uvicorn.__version__} ({http}, {loop})"


class ZeroCostModel:
    """A ChatModel that costs nothing: it echoes the prompt's words, `max_tokens` of them."""

    name = "zero-cost"
    context_window = 4096

    def stream_chat(
        self, messages: list[dict[str, Any]], *, max_tokens: int = 256, **options: Any
    ) -> Iterator[Delta]:
        words = str(messages[-1]["content"]).split()[:max_tokens]
        for word in words:
            yield Delta(word + " ")
        usage = {"prompt_tokens": 10, "completion_tokens": len(words)}
        usage["total_tokens"] = 10 + len(words)
        yield Delta("", finish_reason="length", usage=usage)


# --- part 1: the real model ------------------------------------------------------------------


def _measure_real(
    model: Any, name: str, base_url: str, server_pid: int, rounds: int, max_tokens: int
) -> Timings:
    import litellm

    from locus_llm.local.provider import register

    register()
    _track_litellm()
    litellm.suppress_debug_info = True
    client = httpx.Client(base_url=base_url, timeout=60)
    params = {"max_tokens": max_tokens, "temperature": 0}
    remote = {"model": f"hosted_vllm/{name}", "api_base": base_url + "/v1", "api_key": "none"}
    generation_ms = _time_generations(model)  # this process's runtime records its time here

    def direct(messages: list[dict[str, str]]) -> tuple[str, float]:
        deltas = model.stream_chat(messages, max_tokens=max_tokens, temperature=0.0)
        return "".join(d.text for d in deltas), generation_ms.pop()

    def litellm_local(messages: list[dict[str, str]]) -> tuple[str, float]:
        response = litellm.completion(model=f"locus-onnx/{name}", messages=messages, **params)
        return response.choices[0].message.content, generation_ms.pop()

    def http(messages: list[dict[str, str]]) -> tuple[str, float]:
        body = {"model": name, "messages": messages} | params
        response = client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        content = response.json()["choices"][0]["message"]["content"]
        return content, _server_generation_ms(response.headers["server-timing"])

    def litellm_http(messages: list[dict[str, str]]) -> tuple[str, float]:
        response = litellm.completion(messages=messages, **remote, **params)
        headers = response._hidden_params["additional_headers"]
        server_timing = headers["llm_provider-server-timing"]
        return response.choices[0].message.content, _server_generation_ms(server_timing)

    paths = {
        "direct": direct,
        "litellm-local": litellm_local,
        "http": http,
        "litellm-http": litellm_http,
    }
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    expected = [direct(c)[0] for c in conversations]
    for path in paths.values():  # warm up every path, and check that all do the same work
        for conversation, text in zip(conversations, expected, strict=True):
            got = path(conversation)[0]
            if got != text:
                raise SystemExit(f"{path.__name__} returned {got!r}, direct returned {text!r}")
    timings = _interleave(paths, conversations, rounds, server_pid)
    client.close()
    return timings


def _time_generations(model: Any) -> list[float]:
    """Wrap `model.stream_chat` so that each generation appends its milliseconds to the list."""
    recorded: list[float] = []
    original = model.stream_chat

    def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        yield from original(*args, **kwargs)
        recorded.append((time.perf_counter() - started) * 1000)

    model.stream_chat = timed
    return recorded


def _server_generation_ms(server_timing: str) -> float:
    """`generation;dur=12.345` → 12.345 (the server's own time in the model)."""
    return float(server_timing.split("dur=", 1)[1].split(",", 1)[0])


# --- part 2: the path alone ------------------------------------------------------------------


def _measure_path(
    base_url: str, server_pid: int, rounds: int, max_tokens: int
) -> tuple[Timings, dict[str, float]]:
    import litellm

    from locus_llm.local import models
    from locus_llm.local.provider import register, register_price

    register()
    client = httpx.Client(base_url=base_url, timeout=60)
    model = ZeroCostModel()
    # `locus-onnx/zero-cost` must reach this model: the provider loads models through models.load
    load = models.load
    models.load = lambda name: model if name == model.name else load(name)
    params = {"max_tokens": max_tokens, "temperature": 0}
    local = {"model": f"locus-onnx/{model.name}"}
    remote = {"model": "hosted_vllm/zero-cost", "api_base": base_url + "/v1", "api_key": "none"}
    # LiteLLM prices every response; for a model missing from its cost map it searches name
    # variants first, about 1,400 Python calls per request. A caller that registers the price
    # (the router knows each locus's price) skips that search: the `litellm-http-priced` path.
    priced = remote | {"model": "hosted_vllm/zero-cost-priced"}
    register_price(priced["model"], 0.0, 0.0)
    chunks: dict[str, list[int]] = {}  # path → content chunks per streamed response

    def direct(messages: list[dict[str, str]]) -> tuple[str, float]:
        return "".join(d.text for d in model.stream_chat(messages, max_tokens=max_tokens)), 0.0

    def litellm_local(messages: list[dict[str, str]]) -> tuple[str, float]:
        response = litellm.completion(messages=messages, **local, **params)
        return response.choices[0].message.content, 0.0

    def http(messages: list[dict[str, str]]) -> tuple[str, float]:
        body = {"model": "zero-cost", "messages": messages} | params
        return client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"][
            "content"
        ], 0.0

    def litellm_http(messages: list[dict[str, str]]) -> tuple[str, float]:
        response = litellm.completion(messages=messages, **remote, **params)
        return response.choices[0].message.content, 0.0

    def litellm_http_priced(messages: list[dict[str, str]]) -> tuple[str, float]:
        response = litellm.completion(messages=messages, **priced, **params)
        return response.choices[0].message.content, 0.0

    def http_stream(messages: list[dict[str, str]]) -> tuple[str, float]:
        body = {"model": "zero-cost", "messages": messages, "stream": True} | params
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = "".join(response.iter_text())
        chunks.setdefault("http-stream", []).append(text.count('"content":') - 1)  # - the role
        return text, 0.0

    def litellm_stream_with(target: dict[str, str], name: str) -> Path:
        def stream(messages: list[dict[str, str]]) -> tuple[str, float]:
            pieces = [
                c.choices[0].delta.content
                for c in litellm.completion(messages=messages, stream=True, **target, **params)
                if c.choices and c.choices[0].delta.content
            ]
            chunks.setdefault(name, []).append(len(pieces))
            return "".join(pieces), 0.0

        return stream

    paths = {
        "direct": direct,
        "litellm-local": litellm_local,
        "http": http,
        "litellm-http": litellm_http,
        "litellm-http-priced": litellm_http_priced,
        "http-stream": http_stream,
        "litellm-local-stream": litellm_stream_with(local, "litellm-local-stream"),
        "litellm-stream": litellm_stream_with(remote, "litellm-stream"),
    }
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    expected = [direct(c)[0] for c in conversations]
    for name, path in paths.items():  # warm up; the non-streamed paths must agree with direct
        for conversation, text in zip(conversations, expected, strict=True):
            got = path(conversation)[0]
            if "stream" not in name and got != text:
                raise SystemExit(f"{name} returned {got!r}, direct returned {text!r}")
    chunks.clear()
    timings = _interleave(paths, conversations, rounds, server_pid)
    client.close()
    models.load = load
    return timings, {name: statistics.mean(counts) for name, counts in chunks.items()}


def _client_cpu_ms() -> float:
    return time.process_time() * 1000  # every thread of this process, ns resolution


def _server_cpu_ms(pid: int) -> float:
    """CPU time of every thread of the server process, in ns precision (Linux schedstat)."""
    total_ns = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{thread}/schedstat"
        with contextlib.suppress(FileNotFoundError), open(path) as stat:
            total_ns += int(stat.read().split()[0])
    return total_ns / 1e6


# --- measuring and reporting -------------------------------------------------------------------


def _interleave(
    paths: dict[str, Path],
    conversations: list[list[dict[str, str]]],
    rounds: int,
    server_pid: int,
) -> Timings:
    """Each round, each conversation through every path, the order rotating round by round."""
    timings: Timings = {name: [] for name in paths}
    order = list(paths)
    for round_number in range(rounds):
        for conversation in conversations:
            shift = round_number % len(order)
            for name in order[shift:] + order[:shift]:
                _settle_litellm()
                server_cpu, client_cpu = _server_cpu_ms(server_pid), _client_cpu_ms()
                started = time.perf_counter()
                _, runtime_ms = paths[name](conversation)
                total_ms = (time.perf_counter() - started) * 1000
                _settle_litellm()  # the request's logging is part of its CPU time
                client_cpu = _client_cpu_ms() - client_cpu
                server_cpu = _server_cpu_ms(server_pid) - server_cpu
                timings[name].append(Sample(total_ms, runtime_ms, client_cpu, server_cpu))
    return timings


def _settle_litellm() -> None:
    """Wait (untimed) until LiteLLM's background logging of the requests so far has finished.

    LiteLLM hands every finished call to a logging thread (about 1,000 Python calls even with no
    callbacks). Left running, it overlaps the next request and is charged to whichever path then
    waits on a socket, while an in-process path charges it to the runtime's time, which part 1
    subtracts. Settled, each request pays for its own work only; the logging's CPU time still
    counts in part 2's CPU columns.
    """
    wait(_LITELLM_LOGGING)
    _LITELLM_LOGGING.clear()


def _track_litellm() -> None:
    """Record the tasks LiteLLM submits to its logging executor, for _settle_litellm."""
    from litellm.litellm_core_utils.thread_pool_executor import executor

    submit = executor.submit

    def tracked(*args: Any, **kwargs: Any) -> Future:
        future = submit(*args, **kwargs)
        _LITELLM_LOGGING.append(future)
        return future

    executor.submit = tracked


def _report(
    real: Timings, path: Timings, chunks: dict[str, float], args: argparse.Namespace
) -> None:
    print(f"\npart 1, {args.model}: {args.rounds} rounds; added = total - runtime, per request")
    print(f"{'path':15} {'total ms':>9} {'runtime ms':>10} {'added ms':>9} {'p10':>7} {'p90':>7}")
    for name, samples in real.items():
        added = [s.total_ms - s.runtime_ms for s in samples]
        deciles = statistics.quantiles(added, n=10)
        print(
            f"{name:15} {statistics.median(s.total_ms for s in samples):9.2f} "
            f"{statistics.median(s.runtime_ms for s in samples):10.2f} "
            f"{statistics.median(added):9.2f} {deciles[0]:7.2f} {deciles[-1]:7.2f}"
        )
    print(
        f"\npart 2, a zero-cost model: {args.path_rounds} rounds; the whole time is the path's; "
        "medians per request"
    )
    print(
        f"{'path':21} {'wall ms':>9} {'p10':>7} {'p90':>7} {'client CPU':>10} "
        f"{'server CPU':>10} {'CPU sum':>8} {'chunks':>6}"
    )
    for name, samples in path.items():
        totals = [s.total_ms for s in samples]
        deciles = statistics.quantiles(totals, n=10)
        client_cpu = statistics.median(s.client_cpu_ms for s in samples)
        server_cpu = statistics.median(s.server_cpu_ms for s in samples)
        print(
            f"{name:21} {statistics.median(totals):9.2f} {deciles[0]:7.2f} {deciles[-1]:7.2f} "
            f"{client_cpu:10.2f} {server_cpu:10.2f} {statistics.median(_cpu(s) for s in samples):8.2f} "
            + (f"{chunks[name]:6.1f}" if name in chunks else f"{'':6}")
        )

    print("\nwhat each path adds: medians of paired differences (same prompt, same round), ms")
    print(f"{'difference':36} {'part 1 wall':>11} {'part 2 wall':>11} {'part 2 CPU':>10}")
    readings = [
        ("litellm-http", "litellm-local", "the HTTP path, LiteLLM on both sides (the target)"),
        ("litellm-http-priced", "litellm-local", "the same, LiteLLM told the served price"),
        ("http", "direct", "locus serve + hop, lean client, no LiteLLM"),
        ("litellm-http", "direct", "everything, LiteLLM's own cost included"),
        ("litellm-local", "direct", "LiteLLM's own cost, in process"),
    ]
    for over, under, what in readings:
        in_part_1 = f"{_paired(real, over, under):+11.2f}" if over in real else f"{'-':>11}"
        print(
            f"{over + ' - ' + under:36} {in_part_1} {_paired(path, over, under):+11.2f} "
            f"{_paired(path, over, under, _cpu):+10.2f}  {what}"
        )
    added = _paired(real, "litellm-http", "litellm-local")
    added_cpu = _paired(path, "litellm-http", "litellm-local", _cpu)
    verdict = "met" if added <= TARGET_ADDED_MS else "NOT met"
    local_total = statistics.median(s.total_ms for s in real["litellm-local"])
    served_total = statistics.median(s.total_ms for s in real["litellm-http"])
    print(
        f"\ntarget: the HTTP path adds <= {TARGET_ADDED_MS:.0f} ms per request (litellm-http - "
        f"litellm-local, part 1): +{added:.2f} ms, {verdict} (CPU, part 2: +{added_cpu:.2f} ms)\n"
        f"median totals with {args.model}: in process {local_total:.1f} ms, through locus serve "
        f"{served_total:.1f} ms, ratio {served_total / local_total:.3f} (the ratio moves with the "
        "model's time and the load)"
    )


def _added(sample: Sample) -> float:
    return sample.total_ms - sample.runtime_ms


def _cpu(sample: Sample) -> float:
    return sample.client_cpu_ms + sample.server_cpu_ms


def _paired(
    timings: Timings, over: str, under: str, measure: Callable[[Sample], float] = _added
) -> float:
    """Median over requests of measure(`over`) - measure(`under`), same prompt and round."""
    pairs = zip(timings[over], timings[under], strict=True)
    return statistics.median(measure(a) - measure(b) for a, b in pairs)


@contextlib.contextmanager
def _server(command: list[str], port_flag: str) -> Iterator[tuple[str, int]]:
    """Run a server command on a free port until the block ends; yields its URL and pid."""
    port = _free_port()
    argv = [*command, port_flag, str(port)] if port_flag else [*command, str(port)]
    # a file, not a pipe: a pipe nobody reads could fill up and stall the server
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_until_up(base_url, server, log)
            yield base_url, server.pid
        finally:
            server.terminate()
            server.wait(15)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(base_url: str, server: subprocess.Popen, log: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{server.args} exited:\n{log.read()}")
        try:
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{server.args} did not start within 120 s")


if __name__ == "__main__":
    raise SystemExit(main())

"""What `locus serve` + LiteLLM add per request over calling the ONNX runtime directly.

Target (issue 5): through `locus serve` and LiteLLM's `hosted_vllm/` provider, the HTTP path adds
at most 2 ms per request over calling the runtime directly.

One run measures, with the same prompts, greedy decoding and a small max_tokens, one request at a
time, the paths interleaved round by round (so that load from other processes hits all alike):
  direct          `model.stream_chat(...)` in this process (the baseline)
  litellm-local   `litellm.completion("locus-onnx/smollm2")`: LiteLLM's own cost, no HTTP
  http            httpx (keep-alive) → `locus serve` in a child process
  litellm-http    `litellm.completion("hosted_vllm/smollm2", api_base=...)` → `locus serve`
Every path must return the direct text, or the run stops: the work must be the same.

"Added" is measured per request: the request's total time minus the runtime's own time in that
same request (timed around `stream_chat` in this process, or reported by the server in its
`Server-Timing: generation;dur=...` header). The model's time swings with the load on a shared
machine far more than 2 ms; subtracting it request by request leaves only the cost of the path.
The ratio column is per request too: total / runtime time.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/bench_serve.py [--rounds 40]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "Say hello in Spanish.",
    "What is 2 + 2?",
    "Give me one word that rhymes with cat.",
]
TARGET_ADDED_MS = 2.0
Timings = dict[str, list[tuple[float, float]]]  # path → [(total ms, runtime ms)] per request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--rounds", type=int, default=40, help="passes over the prompts")
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()

    from locus_llm.local.models import load, prepare_default

    if args.model == "smollm2":
        prepare_default()
    model = load(args.model)
    port = _free_port()
    command = [sys.executable, "-m", "locus_llm.cli", "serve", "--port", str(port)]
    # a file, not a pipe: a pipe nobody reads could fill up and stall the server
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(
            [*command, "--model", args.model], stdout=log, stderr=subprocess.STDOUT, text=True
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_until_up(base_url, server, log)
            results = _measure(model, args.model, base_url, args.rounds, args.max_tokens)
        finally:
            server.terminate()
            server.wait(15)
    _report(results, args)
    return 0


def _measure(model: Any, name: str, base_url: str, rounds: int, max_tokens: int) -> Timings:
    import litellm

    from locus_llm.local.provider import register

    register()
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

    paths: dict[str, Callable[[list[dict[str, str]]], tuple[str, float]]] = {
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

    timings: Timings = {name: [] for name in paths}
    order = list(paths)
    for round_number in range(rounds):
        for conversation in conversations:
            shift = round_number % len(order)
            for path_name in order[shift:] + order[:shift]:  # rotate who goes first
                started = time.perf_counter()
                _, generation = paths[path_name](conversation)
                total = (time.perf_counter() - started) * 1000
                timings[path_name].append((total, generation))
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


def _report(timings: Timings, args: argparse.Namespace) -> None:
    print(
        f"model {args.model}, max_tokens {args.max_tokens}, {len(PROMPTS)} prompts x "
        f"{args.rounds} rounds, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print("added = total - the runtime's own time for that same request (per request)")
    print(
        f"{'path':14} {'total ms':>9} {'runtime ms':>10} {'added ms':>9} {'p90 added':>9} "
        f"{'ratio':>6}"
    )
    for name, pairs in timings.items():
        totals = [t for t, _ in pairs]
        added = [t - g for t, g in pairs]
        ratio = statistics.median(t / g for t, g in pairs)
        print(
            f"{name:14} {statistics.median(totals):9.2f} "
            f"{statistics.median(g for _, g in pairs):10.2f} {statistics.median(added):9.2f} "
            f"{statistics.quantiles(added, n=10)[-1]:9.2f} {ratio:6.3f}"
        )
    direct_total = statistics.median(t for t, _ in timings["direct"])
    served_total = statistics.median(t for t, _ in timings["litellm-http"])
    added = statistics.median(t - g for t, g in timings["litellm-http"])
    server_added = statistics.median(t - g for t, g in timings["http"])
    verdict = "met" if added <= TARGET_ADDED_MS else "NOT met"
    print(
        f"\nlocus serve + LiteLLM (hosted_vllm/) adds {added:.2f} ms per request over the runtime "
        f"(target <= {TARGET_ADDED_MS:.0f} ms: {verdict}); the server and HTTP alone "
        f"(httpx client) add {server_added:.2f} ms.\nmedian totals: direct {direct_total:.1f} ms, "
        f"through the server {served_total:.1f} ms (ratio {served_total / direct_total:.3f}; "
        "this one moves with the load on the machine)."
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_up(base_url: str, server: subprocess.Popen, log: IO[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise SystemExit(f"locus serve exited:\n{log.read()}")
        try:
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("locus serve did not start within 120 s")


if __name__ == "__main__":
    raise SystemExit(main())

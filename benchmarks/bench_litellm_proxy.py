"""The LiteLLM Proxy hook: proxy start-up, and what the hook adds per request.

Three measurements, on real parts (a real `litellm` proxy process, the scripted loopback server
as its deployments, the real analyzer):
  1. in process: `async_pre_call_hook` (analysis + policy + selection + record + rewrite) against
     `Router.route` alone, interleaved, for a short and a 100-word prompt;
  2. start-up: seconds until the proxy answers /health/liveliness, with and without the hook;
  3. through the proxy: request latency (openai client → proxy → loopback deployment) with the
     hook routing `model="locus"` against the same proxy without the hook asked for the same
     deployment by name.

    .venv/bin/python benchmarks/bench_litellm_proxy.py [--requests 60] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LOCUS_TEST_CLOUD_KEY", "sk-bench")

SHORT = "Write a haiku about autumn leaves."
LONG = " ".join(
    [
        "Summarise the quarterly operating review for the regional team, covering"
        " revenue, churn and hiring plans."
    ]
    * 6
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(values), 3),
        "p95_ms": round(percentile(values, 0.95), 3),
        "n": len(values),
    }


def in_process(requests: int) -> dict[str, object]:
    from litellm.proxy._types import UserAPIKeyAuth

    from locus_llm.config import config_from_dict
    from locus_llm.litellm_proxy import LocusProxyHook
    from locus_llm.router import Router
    from tests.test_litellm_proxy import locus_config

    router = Router(config_from_dict(locus_config("http://127.0.0.1:9/v1")))
    router.warm()
    hook = LocusProxyHook(router=router)
    key = UserAPIKeyAuth(team_id="bench")
    results: dict[str, object] = {}

    async def measure(
        messages: list[dict[str, str]], hooked: list[float], routed: list[float]
    ) -> None:
        for _ in range(requests):  # interleaved: noise hits both alike
            started = time.perf_counter()
            await hook.async_pre_call_hook(
                key, None, {"model": "auto", "messages": list(messages)}, "acompletion"
            )
            hooked.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            router.route(messages, {"tenant": "bench"})
            routed.append((time.perf_counter() - started) * 1000)

    for label, prompt in (("short", SHORT), ("100_words", LONG)):
        hooked: list[float] = []
        routed: list[float] = []
        asyncio.run(measure([{"role": "user", "content": prompt}], hooked, routed))
        added = statistics.median(hooked) - statistics.median(routed)
        results[label] = {
            "hook": summary(hooked),
            "route_alone": summary(routed),
            "hook_added_p50_ms": round(added, 3),
        }
    return results


def through_proxy(requests: int) -> dict[str, object]:
    """Two proxies on the same deployments, one with the hook, one without; requests alternate
    between them so the machine's load weighs on both alike."""
    from tests.fault_server import FaultServer
    from tests.test_litellm_proxy import running_proxy

    message = [{"role": "user", "content": SHORT}]
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(FaultServer())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        runs = {
            "with_hook": ({}, "auto"),
            "without_hook": ({"litellm_settings": {"callbacks": []}}, "cloud-mini"),
        }
        proxies, results = {}, {}
        for label, (extra, model) in runs.items():  # one after the other: start-up alone
            (folder / label).mkdir()
            proxy = stack.enter_context(
                running_proxy(folder / label, server.url + "/v1", extra=extra)
            )
            client = proxy.client()
            started = time.perf_counter()
            client.chat.completions.create(model=model, messages=message)
            proxies[label] = (client, model)
            results[label] = {
                "startup_s": round(proxy.startup_s, 2),
                "first_answer_s": round(time.perf_counter() - started, 3),
            }
        latencies: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(requests):
            for label, (client, model) in proxies.items():
                started = time.perf_counter()
                client.chat.completions.create(model=model, messages=message)
                latencies[label].append((time.perf_counter() - started) * 1000)
        for label, times in latencies.items():
            results[label]["request"] = summary(times)
        results["hook_added_p50_ms"] = round(
            statistics.median(latencies["with_hook"])
            - statistics.median(latencies["without_hook"]),
            3,
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = {
        "load_average": os.getloadavg(),
        "in_process": in_process(args.requests),
        "proxy": through_proxy(args.requests),
        "load_average_after": os.getloadavg(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

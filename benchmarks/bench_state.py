"""Shared-state overhead per routed call: `state: redis://` (loopback) over `state: memory`.

    .venv/bin/python benchmarks/bench_state.py [--calls 400] [--out results.json]

Two routers in one process, identical but for the state backend, route and run the same call to
the same loopback server (tests/fault_server.py), alternating so machine noise hits both alike.
The tenant has a budget and the locus a price, so each call does all the state work there is:
read the spend for the policy input, reserve the predicted cost, settle the actual cost, record
the outcome (breaker + profile). Analysis is stubbed (a constant estimate): it is the same for
both and would only add noise. Reported: p50/p99 per call for each backend, the added p50 (and
the median of paired differences), for a full call and for a decision only (`route()`), and
the raw Redis operations. Target: added p50 ≤ 1 ms for a full routed call.
A real redis-server is started on an ephemeral port (tests/redis_server.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_router import FixedClassifier, NoEntities, pct  # noqa: E402
from locus_llm.analysis import Analyzer  # noqa: E402
from locus_llm.config import config_from_dict  # noqa: E402
from locus_llm.router import Router  # noqa: E402
from tests.fault_server import FaultServer, ok  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 4), "p99": round(pct(values, 0.99), 4)}


def timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return (time.perf_counter() - start) * 1000


def compare(memory: Callable[[], Any], redis: Callable[[], Any], n: int) -> dict[str, Any]:
    """Alternate the two paths n times; per-call ms for each and the difference."""
    for _ in range(30):  # warm both: connection pools, script cache, pydantic caches
        memory()
        redis()
    on_memory, on_redis = [], []
    for i in range(n):
        first, second = (memory, redis) if i % 2 == 0 else (redis, memory)
        a, b = timed(first), timed(second)
        on_memory.append(a if first is memory else b)
        on_redis.append(b if first is memory else a)
    paired = [r - m for r, m in zip(on_redis, on_memory, strict=True)]
    return {
        "memory_ms": summary(on_memory),
        "redis_ms": summary(on_redis),
        "added_ms_p50": round(statistics.median(on_redis) - statistics.median(on_memory), 4),
        "added_ms_paired_p50": round(statistics.median(paired), 4),
    }


def raw_operations(router: Router, n: int) -> dict[str, Any]:
    """The Redis work alone: a spend read (cache miss), a reserve (+ a settle, queued)."""
    state = router.state
    # a tenant not read before: a real round trip, not the 200 ms per-tenant cache
    reads = [timed(lambda i=i: state.spent(f"raw-{i}")) for i in range(n)]

    def reserve_and_settle() -> None:
        reservation = state.reserve("raw", 1e-6, 1e9, ttl_s=60, locus="m")
        state.settle("raw", 1e-6, reservation)

    cycles = [timed(reserve_and_settle) for _ in range(n)]
    return {"spent_read_ms": summary(reads), "reserve_and_settle_ms": summary(cycles)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with FaultServer() as server, RedisServer() as redis_server:
        server.script("m", [ok("a short answer of a few words")])
        loci = [
            {
                "name": "m",
                "zone": "onprem",
                "model": "hosted_vllm/m",
                "api_base": server.url + "/v1",
                "usd_per_mtok_in": 0.1,
                "usd_per_mtok_out": 0.1,
                "timeout_s": 10,
            }
        ]
        base = {"loci": loci, "budgets": {"tenants": {"acme": 1e9}}}
        analyzer = Analyzer(classifier=FixedClassifier(), detector=NoEntities())
        memory = Router(config_from_dict({**base, "state": "memory"}), analyzer=analyzer)
        redis = Router(config_from_dict({**base, "state": redis_server.url}), analyzer=analyzer)
        messages = [{"role": "user", "content": "Say something short."}]
        context = {"tenant": "acme"}
        try:
            result = {
                "routed_call": compare(
                    lambda: memory.completion(messages, context=context, max_tokens=16),
                    lambda: redis.completion(messages, context=context, max_tokens=16),
                    args.calls,
                ),
                "decision_only": compare(
                    lambda: memory.route(messages, context, max_tokens=16),
                    lambda: redis.route(messages, context, max_tokens=16),
                    args.calls,
                ),
                "raw_redis": raw_operations(redis, args.calls),
                "calls": args.calls,
                "load_average_1m": round(os.getloadavg()[0], 2),
                "target": {"added_ms_p50": 1.0},
            }
        finally:
            memory.close()
            redis.close()
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

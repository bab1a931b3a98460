"""Routing-core overhead, measured in one process against one loopback server.

    .venv/bin/python benchmarks/bench_router.py [--calls 300]

(1) policy evaluation alone (the default bundle, three loci): p50/p99 in µs — target p50 ≤ 100 µs;
(2) the router's own added time per call — select + dispatch bookkeeping + record, analysis
    excluded — over a direct `litellm.completion` to the same loopback server: target p50 ≤ 1 ms.
Calls alternate between the two paths so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locus_llm.analysis import Analyzer  # noqa: E402
from locus_llm.config import config_from_dict  # noqa: E402
from locus_llm.dispatch import litellm_module  # noqa: E402
from locus_llm.profile import DataClass, TaskEstimate  # noqa: E402
from locus_llm.router import Router  # noqa: E402
from tests.fault_server import FaultServer, ok  # noqa: E402


class FixedClassifier:
    """Analysis is excluded from this benchmark: a constant estimate stands in for the model."""

    def classify(self, text: str) -> TaskEstimate:
        return TaskEstimate("open_qa", {"open_qa": 1.0}, 0.2)


class NoEntities:
    def detect(self, text: str) -> list:
        return []

    def data_class(self, entities: list) -> DataClass:
        return DataClass.PUBLIC


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_policy(router: Router, n: int = 5000) -> dict[str, float]:
    decision = router.route([{"role": "user", "content": "hello"}])
    policy_input = router.policy_input(decision.profile, decision.context)
    for _ in range(200):
        router.policy.evaluate(policy_input)
    times, cpu = [], []
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.thread_time()
        router.policy.evaluate(policy_input)
        cpu.append((time.thread_time() - start_cpu) * 1e6)
        times.append((time.perf_counter() - start) * 1e6)
    # thread CPU time as well as wall time: on a shared machine the wall clock counts waiting
    return {
        "p50_us": round(pct(times, 0.5), 1),
        "p99_us": round(pct(times, 0.99), 1),
        "cpu_p50_us": round(pct(cpu, 0.5), 1),
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    litellm = litellm_module()
    with FaultServer() as server:
        server.script("m", [ok("a short answer of a few words")])
        loci = [
            {
                "name": "m",
                "zone": "onprem",
                "model": "hosted_vllm/m",
                "api_base": server.url + "/v1",
                "usd_per_mtok_in": 0.1,
                "usd_per_mtok_out": 0.1,
            },
            {
                "name": "edge",
                "zone": "device",
                "model": "hosted_vllm/edge",
                "api_base": server.url + "/v1",
                "capability": 0,
                "usd_per_mtok_in": 0,
                "usd_per_mtok_out": 0,
            },
            {
                "name": "cloud",
                "zone": "cloud",
                "model": "openai/gpt-4o",
                "api_key_env": "LOCUS_BENCH_NO_KEY",
            },
        ]
        router = Router(
            config_from_dict({"loci": loci}),
            analyzer=Analyzer(classifier=FixedClassifier(), detector=NoEntities()),
        )
        policy = bench_policy(router)
        messages = [{"role": "user", "content": "Say something short."}]
        direct = {
            "model": "hosted_vllm/m",
            "api_base": server.url + "/v1",
            "max_retries": 0,
            "timeout": 10,
            "max_tokens": 16,
        }
        for _ in range(30):  # warm both paths: connection pools, pydantic caches
            litellm.completion(messages=messages, **direct)
            router.completion(messages, max_tokens=16)
        plain, routed, analysis = [], [], []
        for _ in range(args.calls):
            start = time.perf_counter()
            litellm.completion(messages=messages, **direct)
            plain.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            router.completion(messages, max_tokens=16)
            total = (time.perf_counter() - start) * 1000
            analyze = router.log.tail(1)[0]["timings_ms"]["analyze"]
            routed.append(total - analyze)
            analysis.append(analyze)
    p50_plain, p50_routed = statistics.median(plain), statistics.median(routed)
    added = [r - p for r, p in zip(routed, plain, strict=True)]
    result = {
        "policy_eval": policy,
        "direct_litellm_ms": {"p50": round(p50_plain, 3), "p99": round(pct(plain, 0.99), 3)},
        "router_minus_analysis_ms": {
            "p50": round(p50_routed, 3),
            "p99": round(pct(routed, 0.99), 3),
        },
        "analysis_stub_ms_p50": round(statistics.median(analysis), 3),
        "added_ms_p50": round(p50_routed - p50_plain, 3),
        "added_ms_paired_p50": round(statistics.median(added), 3),
        "ratio_p50": round(p50_routed / p50_plain, 3),
        "calls": args.calls,
        "targets": {"policy_p50_us": 100, "added_ms_p50": 1.0},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

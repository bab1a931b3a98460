"""Decision-only throughput: one `locus serve` gateway vs three behind one Redis.

    .venv/bin/python benchmarks/bench_replicas.py [--seconds 15] [--concurrency 12] [--out r.json]

A real redis-server and real gateway processes (`locus serve --config`, `state: redis://...`)
on loopback (tests/redis_server.py). A lean asyncio load generator (keep-alive HTTP/1.1, requests
pre-encoded, so it costs little of the machine) posts `/v1/route` — the decision only, what
`locus route --server` asks — with prompts drawn from 64 varied sentences, round-robin over the
replicas, `concurrency` requests in flight. Reported: decisions/s for 1 and 3 replicas, the ratio
(target ≥ 1.8× on 2 cores), latency p50/p99, the cores the gateways actually got, and decisions
per gateway CPU-second. Each decision is CPU work (analysis: classifier + PII recognisers) in a
GIL-bound process, so one replica tops out near one core and three near all the machine's cores:
the ratio is (cores the three got / cores the one got) × (per-CPU ratio, ≈ 1 when shared state
costs nothing). On a machine shared with other jobs the cores available vary from run to run;
read the per-CPU figures beside the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from tests.redis_server import Gateways, RedisServer  # noqa: E402

SUBJECTS = [
    "the quarterly report",
    "a birthday party",
    "the new onboarding flow",
    "our API",
    "a chess opening",
    "the migration plan",
    "a haiku about rain",
    "the sales pipeline",
]
ASKS = [
    "Summarise {} in two lines.",
    "Write a short poem about {}.",
    "What are three risks of {}?",
    "Explain {} to a new colleague.",
    "Draft an email announcing {}.",
    "Give me a checklist for {}.",
    "Classify the tone of a note about {}.",
    "Brainstorm five names for {}.",
]
PROMPTS = [ask.format(subject) for ask in ASKS for subject in SUBJECTS]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def request_bytes(host: str, port: int, prompt: str) -> bytes:
    body = json.dumps({"prompt": prompt, "context": {"tenant": "bench"}}).encode()
    head = (
        f"POST /v1/route HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def client(
    url: str, deadline: float, latencies: list[float], errors: list[str], rng: random.Random
) -> None:
    """One connection, one request at a time, until the deadline."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    requests = [request_bytes(host, int(port), p) for p in PROMPTS]
    try:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            writer.write(rng.choice(requests))
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 200 " not in status:
                errors.append(status.decode().strip())
            latencies.append((time.perf_counter() - started) * 1000)
    finally:
        writer.close()


async def warm(urls: list[str], concurrency: int) -> None:
    """Two seconds of load first: the first decisions of each process warm its caches."""
    until = time.monotonic() + 2.0
    rng = random.Random(1)
    await asyncio.gather(
        *(client(urls[i % len(urls)], until, [], [], rng) for i in range(concurrency))
    )


async def drive(urls: list[str], seconds: float, concurrency: int) -> dict[str, Any]:
    rng = random.Random(7)
    latencies: list[float] = []
    errors: list[str] = []
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    await asyncio.gather(
        *(
            client(urls[i % len(urls)], started + seconds, latencies, errors, rng)
            for i in range(concurrency)
        )
    )
    elapsed = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    load_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
        cpu_after.ru_stime - cpu_before.ru_stime
    )
    return {
        "decisions_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {
            "p50": round(statistics.median(latencies), 2),
            "p99": round(pct(latencies, 0.99), 2),
        },
        "requests": len(latencies),
        "errors": len(errors),
        "load_generator_cpu_s": round(load_cpu, 2),
        "seconds": round(elapsed, 2),
    }


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(config: Path, replicas: int, seconds: float, concurrency: int) -> dict[str, Any]:
    with Gateways(config, replicas, startup_timeout=240) as gateways:
        pids = [p.pid for p in gateways.processes]
        asyncio.run(warm(gateways.urls, concurrency))
        before = [process_cpu_seconds(pid) for pid in pids]
        result = asyncio.run(drive(gateways.urls, seconds, concurrency))
        used = [process_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    result["gateway_cpu_s"] = [round(u, 2) for u in used]
    # the cores the gateways got, and what one core buys: on a shared machine the first varies
    # with everyone else's load, the second says whether shared state costs anything
    result["gateway_cores_busy"] = round(sum(used) / result["seconds"], 2)
    result["decisions_per_gateway_cpu_s"] = round(result["requests"] / sum(used), 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import tempfile

    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "router.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "state": redis_server.url,
                    "loci": [
                        {
                            "name": "edge",
                            "zone": "device",
                            "model": "hosted_vllm/edge",
                            "api_base": "http://127.0.0.1:9/v1",
                            "capability": 1,
                            "usd_per_mtok_in": 0,
                            "usd_per_mtok_out": 0,
                        },
                        {
                            "name": "rack",
                            "zone": "onprem",
                            "model": "hosted_vllm/rack",
                            "api_base": "http://127.0.0.1:9/v1",
                            "capability": 3,
                            "usd_per_mtok_in": 0.2,
                            "usd_per_mtok_out": 0.2,
                        },
                        {
                            "name": "cloud",
                            "zone": "cloud",
                            "model": "openai/gpt-4o",
                            "api_base": "http://127.0.0.1:9/v1",
                            "capability": 5,
                        },
                    ],
                    "budgets": {"tenants": {"bench": 1000.0}},
                }
            )
        )
        one = run(config, 1, args.seconds, args.concurrency)
        three = run(config, 3, args.seconds, args.concurrency)
    result = {
        "one_replica": one,
        "three_replicas": three,
        "ratio": round(three["decisions_per_s"] / one["decisions_per_s"], 2),
        "ratio_per_gateway_cpu_s": round(
            three["decisions_per_gateway_cpu_s"] / one["decisions_per_gateway_cpu_s"], 2
        ),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "concurrency": args.concurrency,
        "target_ratio": 1.8,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

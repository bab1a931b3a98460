"""Three `locus serve` gateway processes sharing one real redis-server, on loopback.

The loci are the scripted OpenAI-compatible server of tests/fault_server.py, in this process.
The tests run in file order over one set of processes (starting three gateways is the slow
part): a circuit opened on one replica is respected by the others within 1 s; a tenant budget
is never overspent by more than one in-flight call under concurrent load; a replica killed with
SIGKILL loses no state; Redis killed mid-run means a warning, paid loci denied, free loci served,
no crash. The last test kills Redis.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import KEY_ENV, locus_spec
from tests.fault_server import FaultServer, ok, status
from tests.redis_server import Gateways, RedisServer

PRICE = 1000.0  # $ per Mtok in and out on the cloud: a call costs cents, budgets run out fast
BUDGETS = {"acme": 0.3, "beta": 1.0, "gamma": 1.0}
GREETING = "Write a short greeting for the team."


@pytest.fixture(scope="module")
def cluster(
    fault_server: FaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RedisServer, Gateways, FaultServer]]:
    free = {"usd_per_mtok_in": 0.0, "usd_per_mtok_out": 0.0, "max_retries": 0}
    config = {
        "loci": [
            locus_spec("rack", "onprem", fault_server, **free),
            locus_spec("flaky", "onprem", fault_server, **free),
            locus_spec(
                "cloud",
                "cloud",
                fault_server,
                usd_per_mtok_in=PRICE,
                usd_per_mtok_out=PRICE,
                max_retries=0,
            ),
        ],
        "breaker": {"failure_threshold": 2, "cooldown_s": 120},
        "budgets": {"tenants": BUDGETS},
    }
    folder = tmp_path_factory.mktemp("replicas")
    with RedisServer() as redis_server:
        config["state"] = redis_server.url
        path = folder / "router.yaml"
        path.write_text(yaml.safe_dump(config))
        with Gateways(path, 3, env={KEY_ENV: "sk-test-loopback"}) as gateways:
            yield redis_server, gateways, fault_server


@pytest.fixture
def loci(cluster: tuple[RedisServer, Gateways, FaultServer]) -> FaultServer:
    server = cluster[2]
    server.scripts.clear()
    server.requests.clear()
    server.script("rack", [ok("from the rack")])
    server.script("cloud", [ok("hello team from the cloud", first_token_delay_s=0.05)])
    server.script("flaky", [status(503)])
    return server


def call(url: str, model: str, tenant: str, *, stream: bool = False) -> tuple[int, dict[str, Any]]:
    """One chat call: (HTTP status, the locus summary or the error)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": GREETING}],
        "max_tokens": 20,
        "stream": stream,
    }
    headers = {"X-Locus-Tenant": tenant}
    with httpx.Client(timeout=60) as client:
        if not stream:
            response = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            data = response.json()
            return response.status_code, data.get("locus") or data.get("error")
        with client.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                response.read()
                return response.status_code, response.json()["error"]
            summary: dict[str, Any] = {}
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    data = json.loads(line[6:])
                    if "error" in data:
                        return 599, data["error"]  # failed mid-stream
                    summary = data.get("locus") or summary
            return 200, summary


def decision(url: str, tenant: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/route",
        json={"prompt": GREETING, "max_tokens": 20},
        headers={"X-Locus-Tenant": tenant},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()


def healthy(url: str, locus: str) -> bool:
    return httpx.get(f"{url}/health", timeout=5).json()["loci"][locus]["healthy"]


def alive(gateways: Gateways) -> list[str]:
    return [
        url for url, p in zip(gateways.urls, gateways.processes, strict=True) if p.poll() is None
    ]


def test_a_circuit_opened_on_one_replica_is_respected_by_the_others_within_1s(cluster, loci):
    _, gateways, _ = cluster
    first, *others = gateways.urls
    for _ in range(2):  # failure_threshold 2: the second 503 opens the circuit
        code, error = call(first, "flaky", "gamma")
        assert code == 502, error
    opened = time.monotonic()
    pending = set(others)
    while pending:
        pending = {url for url in pending if healthy(url, "flaky")}
        assert time.monotonic() - opened <= 1.0, f"{pending} still route to the open circuit"
        time.sleep(0.02)
    code, error = call(others[-1], "flaky", "gamma")
    assert code == 403 and "unhealthy (circuit open)" in error["message"]
    assert loci.calls("flaky") == 2  # no other replica sent anything to the failing locus


def test_a_tenant_budget_is_never_overspent_by_more_than_one_call_in_flight(cluster, loci):
    redis_server, gateways, _ = cluster
    urls = alive(gateways)

    def worker(i: int) -> list[tuple[int, dict[str, Any]]]:
        results = []
        for _ in range(6):  # until denied: 24 clients, 3 replicas, one shared budget
            results.append(call(urls[i % len(urls)], "cloud", "acme", stream=True))
            if results[-1][0] != 200:
                break
        return results

    with ThreadPoolExecutor(24) as pool:
        results = [r for batch in pool.map(worker, range(24)) for r in batch]
    answered = [summary for code, summary in results if code == 200]
    refused = [error for code, error in results if code != 200]
    assert {code for code, _ in results} <= {200, 403}, refused[:3]
    assert len(answered) >= 5 and refused
    assert all("tenant budget" in error["message"] for error in refused)
    redis = redis_server.client()
    deadline = time.monotonic() + 2
    while redis.hgetall("locus:held:total:acme") and time.monotonic() < deadline:
        time.sleep(0.02)  # settlements are written by each replica's background thread
    assert not redis.hgetall("locus:held:total:acme")  # every reservation settled, none leaked
    committed = float(redis.get("locus:spend:total:acme"))
    charged = sum(summary["cost_usd"] for summary in answered)
    assert committed == pytest.approx(charged)  # every call settled exactly once
    largest = max(summary["cost_usd"] for summary in answered)
    assert committed <= BUDGETS["acme"] + largest + 1e-9
    assert loci.calls("cloud") == len(answered)  # a refused call never reached the cloud


def test_killing_one_replica_loses_no_state(cluster, loci):
    _, gateways, _ = cluster
    victim = gateways.urls[0]
    for _ in range(3):
        assert call(victim, "rack", "beta")[0] == 200  # measurements of the rack
    code, summary = call(victim, "cloud", "beta")  # beta spends on the cloud
    assert code == 200
    for _ in range(2):  # and the victim opens the flaky circuit (if test 1 has not)
        call(victim, "flaky", "beta")
    time.sleep(0.3)  # what a replica records reaches Redis within one refresh
    before = decision(gateways.urls[1], "beta")
    gateways.kill(0)  # SIGKILL: no shutdown hook, nothing flushed
    for url in gateways.urls[1:]:
        after = decision(url, "beta")
        assert after["budget"]["spent_usd"] == pytest.approx(summary["cost_usd"])
        assert after["budget"] == before["budget"]
        assert after["scores"]["rack"]["measured"] is True
        assert not healthy(url, "flaky")
        assert "flaky" in after["denied"]
        assert call(url, "rack", "beta")[0] == 200  # and the survivors serve


def test_redis_killed_mid_run_warns_once_denies_paid_loci_and_keeps_serving(cluster, loci):
    redis_server, gateways, _ = cluster
    urls = alive(gateways)
    assert call(urls[0], "cloud", "gamma")[0] == 200  # the budget is known while Redis lives
    results: list[tuple[str, int, dict[str, Any]]] = []
    stop = threading.Event()

    def load(url: str) -> None:
        while not stop.is_set():
            for model in ("rack", "cloud"):
                code, info = call(url, model, "gamma")
                results.append((model, code, info))

    with ThreadPoolExecutor(2 * len(urls)) as pool:
        futures = [pool.submit(load, url) for url in urls * 2]
        deadline = time.monotonic() + 30
        while len(results) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        redis_server.kill()  # mid-run: calls are being routed and dispatched right now
        time.sleep(1.5)
        stop.set()
        for future in futures:
            future.result()  # no client saw a transport error: every call got an answer
    assert {code for _, code, _ in results} <= {200, 403}, results
    assert all(code == 200 for model, code, _ in results if model == "rack"), results
    for i, url in enumerate(gateways.urls):
        if url not in urls:
            continue
        assert gateways.processes[i].poll() is None, f"replica {i} died"
        code, error = call(url, "cloud", "gamma")  # paid: the spend cannot be known
        assert code == 403, error
        assert "tenant budget unknown (state backend unreachable)" in error["message"]
        assert call(url, "rack", "gamma")[0] == 200  # free: still served
        health = httpx.get(f"{url}/health", timeout=5).json()
        assert health["status"] == "degraded" and health["state"]["reachable"] is False, health
        warnings = [line for line in gateways.log(i).splitlines() if "unreachable" in line]
        assert len(warnings) == 1, warnings  # one warning for the outage, not one per call
        assert "budgets fail closed" in warnings[0]
        assert "Traceback" not in gateways.log(i)


def test_helpers_fail_clearly_without_redis_server(monkeypatch, tmp_path: Path):
    import tests.redis_server as module

    monkeypatch.setattr(module, "REDIS_SERVER", str(tmp_path / "no-redis-server"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="apt-get install redis-server"):
        RedisServer().start()

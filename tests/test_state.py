"""The state backend: memory and a real redis-server, budgets with reservations, Redis outages.

Every Redis here is a real redis-server started by the test on an ephemeral loopback port
(tests/redis_server.py); a missing binary fails the test with a message naming the package.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from locus_llm.config import config_from_dict, load_config
from locus_llm.errors import ConfigError, NoAllowedLocusError
from locus_llm.router import Router
from locus_llm.state import (
    BUDGET_UNKNOWN,
    REFRESH_S,
    MemoryState,
    RedisState,
    StateUnavailable,
    budget_period,
)
from locus_llm.stats import Stats
from tests.conftest import locus_spec
from tests.fault_server import FaultServer, ok, status
from tests.redis_server import RedisServer, free_port


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.client().flushdb()
    return redis_server.url


def states(url: str, count: int, **kw: object) -> list[RedisState]:
    return [RedisState(url, ["rack", "cloud"], **kw) for _ in range(count)]  # type: ignore[arg-type]


# --- config --------------------------------------------------------------------------------------


def test_state_field_is_validated_with_a_clear_message():
    data = {"loci": [{"name": "a", "zone": "device", "model": "x"}], "state": "postgres://db"}
    with pytest.raises(
        ConfigError,
        match=r"router.yaml: state: .*expected 'memory' or a Redis "
        r"URL.*got 'postgres://db'",
    ):
        config_from_dict(data, source="router.yaml")
    data["state"] = "redis://127.0.0.1:6379/2"
    assert config_from_dict(data).state == "redis://127.0.0.1:6379/2"


def test_budgets_are_validated_and_looked_up_per_tenant(tmp_path: Path, monkeypatch):
    base = {"loci": [{"name": "a", "zone": "device", "model": "x"}]}
    with pytest.raises(ConfigError, match=r"budgets.tenants.acme: .*greater than or equal to 0"):
        config_from_dict({**base, "budgets": {"tenants": {"acme": -1}}})
    with pytest.raises(ConfigError, match=r"budgets.period: expected 'total', 'day' or 'month'"):
        config_from_dict({**base, "budgets": {"period": "week"}})
    config = config_from_dict({**base, "budgets": {"default_usd": 2, "tenants": {"acme": 5}}})
    assert config.budgets.for_tenant("acme") == 5
    assert config.budgets.for_tenant("other") == 2
    path = tmp_path / "c.yaml"
    path.write_text("loci: [{name: a, zone: device, model: x}]\n")
    monkeypatch.setenv("LOCUS_STATE", "redis://127.0.0.1:1/0")
    assert load_config(path).state == "redis://127.0.0.1:1/0"
    monkeypatch.setenv("LOCUS_STATE", "mysql://x")
    with pytest.raises(ConfigError, match="LOCUS_STATE: expected 'memory'"):
        load_config(path)


def test_budget_periods_are_utc_days_and_months():
    from datetime import UTC, datetime

    now = datetime(2026, 11, 25, 23, 59, tzinfo=UTC)
    assert [budget_period(p, now) for p in ("total", "day", "month")] == [
        "total",
        "2026-11-25",
        "2026-11",
    ]


def test_missing_redis_client_names_the_extra(monkeypatch):
    # The one place a missing package is simulated: the client is installed in this environment.
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError, match=r"pip install 'locus-llm\[redis\]'"):
        RedisState("redis://127.0.0.1:1/0", ["a"])


# --- memory --------------------------------------------------------------------------------------


def test_memory_reservations_never_admit_more_than_the_budget():
    state = MemoryState(Stats())
    admitted = []

    def worker() -> None:
        for _ in range(50):
            reservation = state.reserve("acme", 0.01, 1.0, ttl_s=60, locus="cloud")
            if reservation is not None:
                admitted.append(reservation)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 100  # 400 attempts, room for exactly 100 at $0.01
    assert state.spent("acme") == pytest.approx(1.0)
    for reservation in admitted[:40]:
        state.settle("acme", 0.005, reservation)  # cheaper than predicted: money comes back
    assert state.spent("acme") == pytest.approx(0.6 + 0.2)
    assert state.spent("other") == 0.0


def test_memory_reservation_of_a_dead_call_expires():
    state = MemoryState(Stats())
    assert state.reserve("acme", 1.0, 1.0, ttl_s=0.05, locus="cloud") is not None
    assert state.reserve("acme", 0.5, 1.0, ttl_s=60, locus="cloud") is None
    time.sleep(0.08)
    assert state.reserve("acme", 0.5, 1.0, ttl_s=60, locus="cloud") is not None


# --- Redis ---------------------------------------------------------------------------------------


def test_a_circuit_opened_by_one_replica_is_respected_by_another_within_a_second(redis_url):
    one, two = states(redis_url, 2, failure_threshold=3, cooldown_s=30)
    try:
        for _ in range(3):
            one.stats.record_failure("rack")
        assert not one.stats.healthy("rack")  # at once in the replica that saw the failures
        started = time.monotonic()
        while two.stats.healthy("rack"):
            assert time.monotonic() - started < 1.0, "the other replica still routes to rack"
            time.sleep(0.01)
        two.stats.record_success("rack", latency_ms=50.0)  # a probe succeeds on the other one
        started = time.monotonic()
        while not one.stats.healthy("rack"):
            assert time.monotonic() - started < 1.0
            time.sleep(0.01)
    finally:
        one.close()
        two.close()


def test_shared_profiles_follow_the_same_moving_averages_as_memory(redis_url):
    one, two = states(redis_url, 2)
    reference = Stats()
    samples = [(120.0, 30.0, 40), (80.0, 20.0, 10), (200.0, 90.0, 60)]
    try:
        for i, (latency, ttft, tokens) in enumerate(samples):
            writer = one if i % 2 == 0 else two  # replicas take turns: one shared average
            writer.stats.record_success(
                "cloud", latency_ms=latency, ttft_ms=ttft, tokens_out=tokens, cost_usd=0.001
            )
            reference.record_success(
                "cloud", latency_ms=latency, ttft_ms=ttft, tokens_out=tokens, cost_usd=0.001
            )
            time.sleep(REFRESH_S + 0.05)  # each success lands (with the next refresh) before
            # the next outcome: the order matters to an average
        writer.stats.record_failure("cloud")
        reference.record_failure("cloud")
        expected = reference.get("cloud")
        deadline = time.monotonic() + 1.0
        while {one.stats.get("cloud").calls, two.stats.get("cloud").calls} != {4}:
            assert time.monotonic() < deadline, "both replicas see every outcome within 1 s"
            time.sleep(0.02)
        for state in (one, two):
            got = state.stats.get("cloud")
            assert (got.calls, got.errors, got.consecutive_failures) == (4, 1, 1)
            for name in ("ttft_ms", "tokens_per_s", "latency_ms", "error_rate", "cost_usd"):
                assert getattr(got, name) == pytest.approx(getattr(expected, name)), name
            assert state.stats.profile("cloud", "cloud")["measured"] is True
    finally:
        one.close()
        two.close()


def test_reservations_are_atomic_across_replicas(redis_server, redis_url):
    replicas = states(redis_url, 3)
    admitted: list[object] = []
    lock = threading.Lock()

    def worker(state: RedisState) -> None:
        for _ in range(40):
            reservation = state.reserve("acme", 0.01, 0.5, ttl_s=60, locus="cloud")
            if reservation is not None:
                with lock:
                    admitted.append((state, reservation))

    threads = [threading.Thread(target=worker, args=(replicas[i % 3],)) for i in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(admitted) == 50  # 240 attempts from 3 replicas, room for exactly 50
        assert replicas[0].spent("acme") == pytest.approx(0.5)
        for state, reservation in admitted:
            state.settle("acme", 0.004, reservation)
        deadline = time.monotonic() + 2
        while replicas[1].spent("acme") > 0.2 + 1e-9 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert replicas[1].spent("acme") == pytest.approx(0.2)
        committed = float(redis_server.client().get("locus:spend:total:acme"))
        assert committed == pytest.approx(0.2)
    finally:
        for state in replicas:
            state.close()


def test_a_reservation_left_by_a_dead_replica_expires(redis_url):
    (state,) = states(redis_url, 1)
    try:
        assert state.reserve("acme", 1.0, 1.0, ttl_s=0.3, locus="cloud") is not None
        assert state.reserve("acme", 0.1, 1.0, ttl_s=60, locus="cloud") is None
        time.sleep(0.4)
        assert state.reserve("acme", 0.1, 1.0, ttl_s=60, locus="cloud") is not None
    finally:
        state.close()


def test_unreachable_redis_warns_once_falls_back_and_fails_budgets_closed(caplog):
    caplog.set_level(logging.WARNING, logger="locus_llm.state")
    state = RedisState(f"redis://127.0.0.1:{free_port()}/0", ["rack"], failure_threshold=2)
    try:
        for _ in range(5):
            with pytest.raises(StateUnavailable):
                state.spent("acme")
            with pytest.raises(StateUnavailable):
                state.reserve("acme", 0.1, 1.0, ttl_s=10, locus="cloud")
        assert state.stats.healthy("rack")
        state.stats.record_failure("rack")
        state.stats.record_failure("rack")
        assert not state.stats.healthy("rack")  # this process's own breaker carries on
        time.sleep(1.2)  # the background thread retries meanwhile
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "budgets fail closed" in warnings[0].getMessage()
        assert state.status()["reachable"] is False
    finally:
        state.close()


def test_a_hanging_redis_never_hangs_routing_and_settlements_survive_it(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="locus_llm.state")
    redis_server.client().flushdb()
    (state,) = states(redis_server.url, 1)
    try:
        reservation = state.reserve("acme", 0.2, 1.0, ttl_s=60, locus="cloud")
        redis_server.pause()  # SIGSTOP: connections are accepted, nothing answers
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            state.spent("another tenant")  # not read yet: a round trip, which times out
        assert time.monotonic() - started < 0.5
        calls = []
        for _ in range(20):  # once it is known down, no call waits for it at all
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                state.spent("acme")
            state.stats.healthy("cloud")
            calls.append(time.monotonic() - started)
        assert max(calls) < 0.01
        state.settle("acme", 0.15, reservation)  # the call ends during the outage
        redis_server.resume()
        deadline = time.monotonic() + 3
        while not state.status()["reachable"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.status()["reachable"]
        deadline = time.monotonic() + 1
        while state.status()["pending_settlements"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.spent("acme") == pytest.approx(0.15)  # written when Redis came back
        assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    finally:
        redis_server.resume()
        state.close()


# --- the router with a budget ---------------------------------------------------------------------


def budget_config(server: FaultServer, state: str, budget: float) -> dict:
    return {
        "loci": [
            locus_spec("edge", "device", server),
            locus_spec(
                "cloud",
                "cloud",
                server,
                usd_per_mtok_in=1000.0,
                usd_per_mtok_out=1000.0,
                max_retries=0,
            ),
        ],
        "state": state,
        "budgets": {"tenants": {"acme": budget}},
    }


def test_router_charges_the_tenant_and_then_the_policy_denies_the_cloud(
    server: FaultServer, redis_url: str, analyzer, monkeypatch, tmp_path
):
    monkeypatch.setenv("LOCUS_TEST_CLOUD_KEY", "sk-test")
    server.script("cloud", [ok("one two three four five")])
    config = config_from_dict(
        {**budget_config(server, redis_url, 0.05), "decision_log": str(tmp_path / "log.jsonl")}
    )
    router = Router(config, analyzer=analyzer)
    other = Router(config, analyzer=analyzer)  # a second replica on the same Redis
    messages = [{"role": "user", "content": "Say hello to the whole team, please."}]
    ctx = {"tenant": "acme"}
    try:
        spent = 0.0
        answered = 0
        for _ in range(40):
            try:
                response = router.completion(messages, context=ctx, locus="cloud", max_tokens=20)
            except NoAllowedLocusError as error:
                assert "tenant budget" in str(error)
                break
            answered += 1
            spent += response.locus["cost_usd"]
        assert answered >= 1
        assert spent <= 0.05 + 1e-9
        deadline = time.monotonic() + 1
        while abs(other.state.spent("acme") - spent) > 1e-9 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert other.state.spent("acme") == pytest.approx(spent)
        decision = other.route(messages, ctx, max_tokens=20)
        assert decision.budget["spent_usd"] == pytest.approx(spent)
        assert decision.budget["budget_usd"] == 0.05
        assert "cloud" in decision.policy.denied
        assert decision.plan.loci == ["edge"]  # the free locus still serves
        assert server.calls("cloud") == answered  # a refused call never reached the cloud
    finally:
        router.close()
        other.close()


def test_router_with_redis_down_denies_paid_loci_and_still_serves_free_ones(
    server: FaultServer, analyzer, monkeypatch, caplog
):
    caplog.set_level(logging.WARNING, logger="locus_llm.state")
    monkeypatch.setenv("LOCUS_TEST_CLOUD_KEY", "sk-test")
    server.script("edge", [ok("from the edge")])
    config = config_from_dict(budget_config(server, f"redis://127.0.0.1:{free_port()}/0", 10))
    router = Router(config, analyzer=analyzer)
    try:
        messages = [{"role": "user", "content": "Say hello."}]
        decision = router.route(messages, {"tenant": "acme"})
        assert decision.budget == {"spent_usd": None, "budget_usd": 10, "budget_state": "unknown"}
        assert decision.policy.denied["cloud"] == [BUDGET_UNKNOWN]
        response = router.completion(messages, context={"tenant": "acme"}, max_tokens=10)
        assert response.locus["locus"] == "edge"
        with pytest.raises(NoAllowedLocusError, match="tenant budget unknown"):
            router.completion(messages, context={"tenant": "acme"}, locus="cloud")
        # a tenant with no budget has nothing to check: the cloud stays open to it
        assert "cloud" in router.route(messages, {"tenant": "free"}).policy.allowed
        assert len([r for r in caplog.records if "unreachable" in r.getMessage()]) == 1
    finally:
        router.close()


def test_a_stats_object_cannot_be_shared_with_a_redis_state(server: FaultServer, analyzer):
    config = config_from_dict(budget_config(server, "redis://127.0.0.1:1/0", 1))
    with pytest.raises(ConfigError, match="only with `state: memory`"):
        Router(config, analyzer=analyzer, stats=Stats())


def test_failures_through_the_router_open_the_shared_circuit(
    server: FaultServer, redis_url, analyzer, monkeypatch
):
    monkeypatch.setenv("LOCUS_TEST_CLOUD_KEY", "sk-test")
    server.script("rack", [status(503)])
    server.script("edge", [ok("fallback")])
    config = config_from_dict(
        {
            "loci": [
                locus_spec(
                    "rack", "onprem", server, usd_per_mtok_in=0, usd_per_mtok_out=0, max_retries=0
                ),
                locus_spec("edge", "device", server, capability=3),
            ],
            "state": redis_url,
            "breaker": {"failure_threshold": 2, "cooldown_s": 60},
        }
    )
    one = Router(config, analyzer=analyzer)
    two = Router(config, analyzer=analyzer)
    try:
        for _ in range(2):
            with pytest.raises(Exception):  # noqa: B017 - the locus's own 503, as LiteLLM raises it
                one.completion("Say hi.", locus="rack", max_tokens=5)
        deadline = time.monotonic() + 1.0
        while two.stats.healthy("rack"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        decision = two.route("Say hi.", max_tokens=5)
        assert decision.policy.denied["rack"] == ["unhealthy (circuit open)"]
        assert server.calls("rack") == 2
    finally:
        one.close()
        two.close()

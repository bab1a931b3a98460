"""Property: whatever the profile, the loci's health and the failures, no attempt ever reaches a
denied locus, and when every allowed locus fails the caller gets a clear error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locus_llm.config import config_from_dict
from locus_llm.errors import DispatchError, NoAllowedLocusError
from locus_llm.router import Router
from tests.conftest import KEY_ENV, locus_spec
from tests.fault_server import FaultServer, ok, reset, status

ZONES = ["device", "onprem", "cloud"]
OUTCOMES = {
    "ok": lambda: ok("fine"),
    "500": lambda: status(500),
    "503": lambda: status(503),
    "401": lambda: status(401),
    "404": lambda: status(404),
    "400": lambda: status(400, "bad request"),
    "reset": reset,
}

locus_strategy = st.fixed_dictionaries(
    {
        "zone": st.sampled_from(ZONES),
        "capability": st.integers(0, 6),
        "context_window": st.sampled_from([256, 4096, 128000]),
        "credentials": st.booleans(),
        "healthy": st.booleans(),
        "script": st.lists(st.sampled_from(sorted(OUTCOMES)), min_size=1, max_size=3),
        "max_retries": st.integers(0, 1),
    }
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    loci=st.lists(locus_strategy, min_size=1, max_size=4),
    label=st.sampled_from([None, "PUBLIC", "INTERNAL", "CONFIDENTIAL", "RESTRICTED"]),
    words=st.integers(1, 400),
    budget=st.sampled_from([None, 50.0, 5000.0]),
    cost_cap=st.sampled_from([None, 1e-9, 1.0]),
)
def test_no_attempt_ever_reaches_a_denied_locus(
    server: FaultServer, analyzer, monkeypatch, loci, label, words, budget, cost_cap
):
    server.scripts.clear()
    server.requests.clear()
    specs = []
    for i, spec in enumerate(loci):
        name = f"l{i}-{spec['zone']}"
        extra = {
            "capability": spec["capability"],
            "context_window": spec["context_window"],
            "max_retries": spec["max_retries"],
            "timeout_s": 5.0,
        }
        if spec["zone"] == "cloud" and not spec["credentials"]:
            extra["api_key_env"] = "LOCUS_TEST_KEY_THAT_IS_NOT_SET"
        specs.append(locus_spec(name, spec["zone"], server, **extra))
        server.script(name, [OUTCOMES[o]() for o in spec["script"]])
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    monkeypatch.delenv("LOCUS_TEST_KEY_THAT_IS_NOT_SET", raising=False)
    router = Router(config_from_dict({"loci": specs}), analyzer=analyzer)
    for i, spec in enumerate(loci):
        if not spec["healthy"]:
            for _ in range(router.stats.failure_threshold):
                router.stats.record_failure(specs[i]["name"])
    context = {"data_label": label, "latency_budget_ms": budget, "max_cost_usd": cost_cap}
    messages = [{"role": "user", "content": " ".join(["cloud"] * words)}]

    try:
        decision = router.route(messages, context, max_tokens=16)
    except NoAllowedLocusError:  # larger than every context window: refused before analysis
        with pytest.raises(NoAllowedLocusError):
            router.completion(messages, context=context, max_tokens=16)
        assert server.requests == []
        return
    allowed = set(decision.policy.allowed)
    assert set(decision.plan.loci) <= allowed
    try:
        response = router.completion(messages, context=context, max_tokens=16)
    except NoAllowedLocusError:
        assert not allowed or not decision.plan.loci
        attempts = []
    except DispatchError as error:
        assert "every allowed locus failed" in str(error) or "failed" in str(error)
        attempts = error.attempts
    except Exception as error:  # a provider error that must not be failed over (a refusal)
        attempts = router.log.tail(1)[0]["attempts"]
        assert attempts, f"error without any attempt: {error!r}"
    else:
        attempts = response.locus["attempts"]
        assert response.locus["locus"] in allowed
        assert attempts[-1]["outcome"] == "ok"
    assert {a["locus"] for a in attempts} <= allowed
    assert {r["model"] for r in server.requests} <= allowed
    # what the record says happened is what the server saw
    assert len([a for a in attempts if a["outcome"] != "skipped"]) == len(server.requests)


@pytest.mark.parametrize("label", ["CONFIDENTIAL", "RESTRICTED"])
def test_failover_never_crosses_the_sovereignty_boundary(
    make_router, server: FaultServer, label: str
):
    router = make_router(["edge:device", "rack:onprem", "cloud:cloud"])
    server.script("edge", [status(503)])
    server.script("rack", [status(503)])
    server.script("cloud", [ok("should never be asked")])
    with pytest.raises(DispatchError):
        router.completion([{"role": "user", "content": "hello"}], context={"data_label": label})
    assert server.calls("cloud") == 0
    if label == "RESTRICTED":
        assert server.calls("rack") == 0

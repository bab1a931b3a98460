"""The routing core end to end: analyze → policy → select → LiteLLM → loopback server → record."""

from __future__ import annotations

import json
import time

import pytest

from locus_llm.errors import DispatchError, InvalidRequestError, NoAllowedLocusError
from tests.fault_server import FaultServer, ok, status

ASK = [{"role": "user", "content": "What is the boiling point of water at sea level?"}]


def test_public_request_runs_on_the_cheapest_capable_locus(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    server.script("onprem", [ok("100 degrees Celsius.")])
    response = router.completion(ASK, max_tokens=20)
    assert response.choices[0].message.content == "100 degrees Celsius."
    info = response.locus
    assert info["locus"] == "onprem" and info["zone"] == "onprem"
    assert info["attempts"] == [
        {"locus": "onprem", "outcome": "ok", "latency_ms": info["attempts"][0]["latency_ms"]}
    ]
    assert info["usage"]["completion_tokens"] == 3
    assert info["cost_usd"] == pytest.approx((info["usage"]["prompt_tokens"] * 0.2 + 3 * 0.2) / 1e6)
    # LiteLLM was told the served model's price, so its own cost agrees (it knows no hosted_vllm/onprem)
    assert response._hidden_params["response_cost"] == pytest.approx(info["cost_usd"])
    assert info["policy_revision"] == router.policy.revision
    assert server.calls("onprem") == 1 and server.calls("cloud") == 0


def test_confidential_label_keeps_the_request_off_the_cloud(make_router, server: FaultServer):
    router = make_router(
        [{**_spec(server, "cloud", "cloud"), "capability": 9}, _spec(server, "onprem", "onprem")]
    )
    response = router.completion(ASK, context={"data_label": "CONFIDENTIAL"})
    assert response.locus["locus"] == "onprem"
    assert "zone cloud" in response.locus["denied"]["cloud"][0]
    assert server.calls("cloud") == 0


def test_cloud_locus_without_its_key_is_denied_not_a_crash(make_router, monkeypatch):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    monkeypatch.delenv("LOCUS_TEST_CLOUD_KEY")
    decision = router.route(ASK)
    assert decision.policy.denied["cloud"] == ["no credentials"]
    assert "cloud" not in decision.plan.loci


def test_retry_then_failover_then_success(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    server.script("onprem", [status(503)])  # every attempt
    server.script("cloud", [ok("from the cloud")])
    response = router.completion(ASK)
    assert response.choices[0].message.content == "from the cloud"
    outcomes = [(a["locus"], a["outcome"], a.get("status")) for a in response.locus["attempts"]]
    assert outcomes == [("onprem", "error", 503), ("onprem", "error", 503), ("cloud", "ok", None)]
    assert response.locus["locus"] == "cloud" and response.locus["planned"] == "onprem"


def test_one_500_is_retried_on_the_same_locus(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    server.script("onprem", [status(500), ok("second time lucky")])
    response = router.completion(ASK)
    assert response.locus["locus"] == "onprem"
    assert [a["outcome"] for a in response.locus["attempts"]] == ["error", "ok"]
    assert server.calls("cloud") == 0


def test_retry_after_is_honoured(make_router, server: FaultServer):
    router = make_router(["onprem:onprem"])
    server.script("onprem", [status(429, headers={"Retry-After": "1"}), ok("after waiting")])
    started = time.monotonic()
    response = router.completion(ASK)
    elapsed = time.monotonic() - started
    assert response.choices[0].message.content == "after waiting"
    assert elapsed >= 0.95
    gap = server.requests[1]["time"] - server.requests[0]["time"]
    assert gap >= 0.95


def test_every_allowed_locus_failing_gives_a_clear_error(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    server.script("onprem", [status(503)])
    server.script("cloud", [status(503)])
    with pytest.raises(DispatchError) as error:
        router.completion(ASK)
    assert "every allowed locus failed" in str(error.value)
    assert {a["locus"] for a in error.value.attempts} == {"onprem", "cloud"}
    record = router.log.tail(1)[0]
    assert record["outcome"] == "error" and record["chosen"] is None


def test_content_filter_refusal_is_not_shopped_around(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    server.script(
        "onprem",
        [status(400, "flagged by the content filter", error_code="content_policy_violation")],
    )
    with pytest.raises(Exception) as error:
        router.completion(ASK)
    assert "content" in str(error.value).lower()
    assert server.calls("cloud") == 0 and server.calls("onprem") == 1


def test_streaming_delivers_chunks_and_the_decision(make_router, server: FaultServer):
    router = make_router(["onprem:onprem"])
    server.script("onprem", [ok("one two three four")])
    stream = router.completion(ASK, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "one two three four"
    assert stream.locus["locus"] == "onprem"
    assert stream.locus["usage"]["completion_tokens"] == 4


def test_stream_failing_before_any_token_fails_over(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    server.script("onprem", [status(503)])
    server.script("cloud", [ok("cloud stream")])
    stream = router.completion(ASK, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "cloud stream" and stream.locus["locus"] == "cloud"


def test_truncated_stream_is_never_a_success(make_router, server: FaultServer):
    router = make_router(["onprem:onprem"])
    server.script("onprem", [ok(" ".join(f"w{i}" for i in range(60)), cut_after=40)])
    with pytest.raises(Exception) as error:
        for _ in router.completion(ASK, stream=True):
            pass
    assert "onprem" in str(error.value) or "stream" in str(error.value).lower()
    assert router.log.tail(1)[0]["outcome"] == "error"


async def test_async_completion_and_stream(make_router, server: FaultServer):
    router = make_router(["onprem:onprem"])
    server.script("onprem", [ok("async answer")])
    response = await router.acompletion(ASK)
    assert response.choices[0].message.content == "async answer"
    stream = await router.acompletion(ASK, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "async answer" and stream.locus["locus"] == "onprem"


def test_tools_pass_through(make_router, server: FaultServer):
    router = make_router(["onprem:onprem"])
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    router.completion(ASK, tools=tools, tool_choice="auto")
    assert server.requests[-1]["body"]["tools"] == tools


def test_decision_log_has_no_prompt(make_router, server: FaultServer, tmp_path):
    router = make_router(["onprem:onprem"])
    secret = "the launch codes are 0000"
    router.completion([{"role": "user", "content": secret}])
    line = (tmp_path / "decisions.jsonl").read_text().strip().splitlines()[-1]
    record = json.loads(line)
    assert secret not in line and "launch" not in line
    assert len(record["prompt_sha256"]) == 64
    assert record["chosen"] == "onprem" and record["policy_revision"] == router.policy.revision
    assert record["attempts"][0]["outcome"] == "ok"


def test_forcing_a_denied_locus_is_refused(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    with pytest.raises(NoAllowedLocusError, match="cloud"):
        router.completion(ASK, context={"data_label": "RESTRICTED"}, locus="cloud")
    assert server.requests == []


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "wizard", "content": "hi"}],
        [{"role": "user", "content": 42}],
        [{"role": "user"}],
        b"not a list at all",
        [["user", "hi"]],
    ],
)
def test_bad_messages_are_refused_before_anything_is_sent(make_router, server, messages):
    router = make_router(["onprem:onprem"])
    with pytest.raises(InvalidRequestError):
        router.completion(messages)
    assert server.requests == []


def test_huge_prompt_is_refused_clearly_and_nothing_is_sent(make_router, server: FaultServer):
    router = make_router(["onprem:onprem", "cloud:cloud"])
    huge = "lorem ipsum dolor sit amet " * 400_000  # ~10.8 MB
    with pytest.raises(NoAllowedLocusError, match="context window"):
        router.completion([{"role": "user", "content": huge}])
    assert server.requests == []


def test_router_reserves_model_and_endpoint_parameters(make_router, server: FaultServer):
    router = make_router(["onprem:onprem"])
    with pytest.raises(InvalidRequestError, match="model"):
        router.completion(ASK, model="gpt-4o")
    assert server.requests == []


def _spec(server: FaultServer, name: str, zone: str) -> dict:
    from tests.conftest import locus_spec

    return locus_spec(name, zone, server)

"""Sixteen provider faults, each against the scripted loopback server (tests/fault_server.py).

The numbers in the test names are the faults of issue 9. Times are compressed (a 20 s first
token becomes 3 s, a 60 s outage 2 s) so the suite stays fast; the behaviour under test is the same.
"""

from __future__ import annotations

import time

import pytest

from locus_llm.errors import DispatchError
from tests.conftest import locus_spec
from tests.fault_server import FaultServer, hang, ok, reset, status

ASK = [{"role": "user", "content": "Tell me something about rivers."}]
SIXTY_WORDS = " ".join(f"w{i}" for i in range(60))


@pytest.fixture(autouse=True, scope="module")
def _litellm_loaded():
    """Import LiteLLM before any timing: its import alone takes seconds."""
    from locus_llm.dispatch import litellm_module

    litellm_module()


def text_of(stream) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_01_rate_limit_with_retry_after_waits_about_that_long(make_router, server: FaultServer):
    router = make_router(["rack:onprem"])
    server.script("rack", [status(429, headers={"Retry-After": "2"}), ok("patience pays")])
    response = router.completion(ASK)
    assert response.choices[0].message.content == "patience pays"
    assert 1.9 <= server.requests[1]["time"] - server.requests[0]["time"] < 4


def test_02_rate_limit_without_header_backs_off_then_fails_over(make_router, server: FaultServer):
    router = make_router(
        [locus_spec("rack", "onprem", server, max_retries=2), locus_spec("cloud", "cloud", server)]
    )
    server.script("rack", [status(429)])
    server.script("cloud", [ok("served elsewhere")])
    response = router.completion(ASK)
    assert response.locus["locus"] == "cloud"
    rack = [r["time"] for r in server.requests if r["model"] == "rack"]
    assert len(rack) == 3  # bounded: 1 + max_retries
    gaps = [b - a for a, b in zip(rack, rack[1:], strict=False)]
    assert all(gap >= 0.24 for gap in gaps), gaps  # never a tight loop


def test_03_one_500_then_healthy_is_retried_on_the_same_locus(make_router, server: FaultServer):
    router = make_router(["rack:onprem", "cloud:cloud"])
    server.script("rack", [status(500), ok("retried")])
    response = router.completion(ASK)
    assert response.locus["locus"] == "rack" and server.calls("cloud") == 0


def test_04_503_everywhere_gives_the_original_error(make_router, server: FaultServer):
    router = make_router(["rack:onprem", "cloud:cloud"])
    server.script("rack", [status(503, "rack is down")])
    server.script("cloud", [status(503, "cloud is down")])
    started = time.monotonic()
    with pytest.raises(DispatchError) as error:
        router.completion(ASK)
    assert time.monotonic() - started < 5  # within the retry budget
    assert "cloud is down" in str(error.value)
    assert getattr(error.value.last_error, "status_code", None) == 503
    assert len(error.value.attempts) == 4


def test_05_connection_reset_before_any_byte(make_router, server: FaultServer):
    router = make_router(["rack:onprem", "cloud:cloud"])
    server.script("rack", [reset()])
    server.script("cloud", [ok("answer despite the reset")])
    response = router.completion(ASK)
    assert response.choices[0].message.content == "answer despite the reset"
    assert response.locus["attempts"][0]["error_class"] in {
        "APIConnectionError",
        "InternalServerError",
    }


def test_06_silent_locus_times_out_and_fails_over_at_once(make_router, server: FaultServer):
    router = make_router(
        [
            locus_spec("rack", "onprem", server, timeout_s=1.0, max_retries=3),
            locus_spec("cloud", "cloud", server),
        ]
    )
    server.script("rack", [hang()])
    server.script("cloud", [ok("not silent")])
    started = time.monotonic()
    response = router.completion(ASK)
    assert time.monotonic() - started < 3.5
    assert response.locus["locus"] == "cloud"
    assert server.calls("rack") == 1  # a silent locus is not retried


def test_07_slow_first_token_fails_over_when_a_fallback_exists(make_router, server):
    router = make_router(
        [
            locus_spec("rack", "onprem", server, ttft_timeout_s=1.0),
            locus_spec("cloud", "cloud", server),
        ]
    )
    server.script("rack", [ok("late", first_token_delay_s=3.0)])
    server.script("cloud", [ok("prompt answer")])
    started = time.monotonic()
    stream = router.completion(ASK, stream=True)
    assert text_of(stream) == "prompt answer"
    assert time.monotonic() - started < 2.8
    assert stream.locus["locus"] == "cloud"


def test_07_slow_first_token_still_arrives_without_a_fallback(make_router, server):
    router = make_router([locus_spec("rack", "onprem", server, ttft_timeout_s=1.0)])
    server.script("rack", [ok("late but whole", first_token_delay_s=2.0)])
    stream = router.completion(ASK, stream=True)
    assert text_of(stream) == "late but whole"


async def test_07_async_slow_first_token_fails_over(make_router, server: FaultServer):
    router = make_router(
        [
            locus_spec("rack", "onprem", server, ttft_timeout_s=1.0),
            locus_spec("cloud", "cloud", server),
        ]
    )
    server.script("rack", [ok("late", first_token_delay_s=3.0)])
    server.script("cloud", [ok("async fallback")])
    stream = await router.acompletion(ASK, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "async fallback" and stream.locus["locus"] == "cloud"


def test_08_stream_cut_after_40_of_60_tokens_is_never_a_success(make_router, server):
    router = make_router(["rack:onprem"])
    server.script("rack", [ok(SIXTY_WORDS, cut_after=40)])
    received = []
    with pytest.raises(DispatchError, match="partial output"):
        for chunk in router.completion(ASK, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) <= 40
    record = router.log.tail(1)[0]
    assert record["outcome"] == "error" and record["attempts"][-1]["outcome"] == "error"


def test_09_stall_mid_answer_is_detected_and_the_router_stays_healthy(make_router, server):
    router = make_router([locus_spec("rack", "onprem", server, stall_timeout_s=1.0, timeout_s=1.0)])
    server.script("rack", [ok(SIXTY_WORDS, stall_after=10, stall_s=30), ok("fine again")])
    started = time.monotonic()
    with pytest.raises(DispatchError):
        text_of(router.completion(ASK, stream=True))
    assert time.monotonic() - started < 4
    assert text_of(router.completion(ASK, stream=True)) == "fine again"


def test_10_malformed_event_never_reaches_the_caller_as_text(make_router, server):
    router = make_router(["rack:onprem"])
    server.script("rack", [ok("good words then garbage", malformed_at=2)])
    try:
        text = text_of(router.completion(ASK, stream=True))
    except DispatchError as error:  # failing cleanly is allowed
        assert "rack" in str(error)
    else:
        assert "not json" not in text and "{" not in text
        assert text == "good words then garbage"
    assert text_of(router.completion(ASK, stream=True)) != ""  # the process is fine


def test_11_stream_without_done_finishes_promptly_with_usage(make_router, server):
    router = make_router(["rack:onprem"])
    server.script("rack", [ok("no sentinel here", no_done=True)])
    started = time.monotonic()
    stream = router.completion(ASK, stream=True)
    assert text_of(stream) == "no sentinel here"
    assert time.monotonic() - started < 2
    assert stream.locus["usage"]["completion_tokens"] == 3


def test_12_context_length_exceeded_goes_to_a_larger_window(make_router, server):
    router = make_router(
        [
            locus_spec("small", "onprem", server, context_window=4096),
            locus_spec(
                "same",
                "onprem",
                server,
                context_window=4096,
                usd_per_mtok_in=0.3,
                usd_per_mtok_out=0.3,
            ),
            locus_spec(
                "big",
                "onprem",
                server,
                context_window=65536,
                usd_per_mtok_in=0.5,
                usd_per_mtok_out=0.5,
            ),
        ]
    )
    server.script(
        "small",
        [
            status(
                400,
                "This model's maximum context length is 4096 tokens",
                error_code="context_length_exceeded",
            )
        ],
    )
    server.script("big", [ok("the big window")])
    response = router.completion(ASK)
    assert response.locus["locus"] == "big"
    assert server.calls("small") == 1 and server.calls("same") == 0
    skipped = [a for a in response.locus["attempts"] if a["outcome"] == "skipped"]
    assert skipped[0]["locus"] == "same"


def test_13_content_policy_refusal_propagates_and_is_not_shopped(make_router, server):
    router = make_router(["rack:onprem", "cloud:cloud"])
    server.script(
        "rack",
        [
            status(
                400,
                "Your request was flagged by our safety system",
                error_code="content_policy_violation",
            )
        ],
    )
    with pytest.raises(Exception, match="safety system"):
        router.completion(ASK)
    assert server.calls("rack") == 1 and server.calls("cloud") == 0


def test_13_content_policy_failover_when_configured(make_router, server: FaultServer):
    router = make_router(["rack:onprem", "cloud:cloud"], allow_failover_on_content_filter=True)
    server.script("rack", [status(400, "flagged", error_code="content_policy_violation")])
    server.script("cloud", [ok("another provider's view")])
    assert router.completion(ASK).locus["locus"] == "cloud"


def test_14_cut_primary_and_prefill_refusing_fallback_restart_cleanly(make_router, server):
    router = make_router(["rack:onprem", "cloud:cloud"])
    server.script("rack", [ok(SIXTY_WORDS, cut_after=0)])  # dies before any token
    server.script("cloud", [ok("a clean restart", reject_prefill=True)])
    stream = router.completion(ASK, stream=True)
    assert text_of(stream) == "a clean restart"
    sent = server.requests[-1]["body"]["messages"]
    assert sent[-1]["role"] == "user"  # restarted from the caller's messages, no prefill


def test_15_circuit_opens_serves_fallback_probes_and_returns(make_router, server):
    router = make_router(
        ["rack:onprem", "cloud:cloud"], breaker={"failure_threshold": 2, "cooldown_s": 1.0}
    )
    outage = status(503)
    outage.until = time.monotonic() + 2.0
    server.script("rack", [outage, ok("rack is back")])
    server.script("cloud", [ok("fallback")])
    served = []
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        served.append(router.completion(ASK).locus["locus"])
        time.sleep(0.2)
    assert served[0] == "cloud" and served[-1] == "rack"
    during = [r for r in server.requests if r["time"] < outage.until]
    routed_during = [r for r in during if r["model"] == "cloud"]
    probes = [r for r in during if r["model"] == "rack"]
    # with the circuit open the rack is left alone: the first failures, then a probe (and its
    # one retry) per cooldown — not one attempt per request
    assert len(probes) <= 2 * (2 + 1), (len(probes), served)
    assert len(routed_during) >= 3


def test_16_failover_accounting_names_who_answered(make_router, server: FaultServer):
    router = make_router(["rack:onprem", "cloud:cloud"])
    server.script("rack", [status(503)])
    server.script("cloud", [ok("billed here")])
    info = router.completion(ASK).locus
    assert info["locus"] == "cloud" and info["model"] == "openai/cloud"
    usage = info["usage"]
    assert info["cost_usd"] == pytest.approx(
        (usage["prompt_tokens"] * 2.5 + usage["completion_tokens"] * 10.0) / 1e6
    )
    record = router.log.tail(1)[0]
    assert record["chosen"] == "cloud" and record["cost_usd"] == info["cost_usd"]
    assert [a["outcome"] for a in record["attempts"]] == ["error", "error", "ok"]

"""Load (500 concurrent async calls) and property-based bad input: clear errors, nothing sent."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locus_llm.config import PACKAGED_BUNDLE, config_from_dict
from locus_llm.errors import ConfigError, InvalidRequestError, LocusError, PolicyError
from locus_llm.policy import PolicyEngine
from tests.conftest import locus_spec
from tests.fault_server import FaultServer, ok


async def test_500_concurrent_async_calls(make_router, server: FaultServer):
    # a generous timeout: 500 requests share two cores with the server and the test itself
    router = make_router([locus_spec("rack", "onprem", server, timeout_s=120.0)])
    server.script("rack", [ok("concurrent answer")])
    process = psutil.Process(os.getpid())
    await router.acompletion([{"role": "user", "content": "warm up"}])
    threads_before = threading.active_count()
    rss_before = process.memory_info().rss
    cpu_before = time.process_time()
    started = time.perf_counter()

    async def call(i: int) -> str:
        response = await router.acompletion([{"role": "user", "content": f"question {i}"}])
        return response.choices[0].message.content

    answers = await asyncio.gather(*(call(i) for i in range(500)))
    wall = time.perf_counter() - started
    cpu_per_call_ms = (time.process_time() - cpu_before) / 500 * 1000
    assert answers == ["concurrent answer"] * 500
    assert server.calls("rack") == 501
    # pools (asyncio's resolver executor, LiteLLM's workers) grow once to their bound; a second
    # round must not add threads: that would be a leak
    threads_after_first = threading.active_count()
    assert threads_after_first <= threads_before + 12
    await asyncio.gather(*(call(i) for i in range(200)))
    assert threading.active_count() <= threads_after_first + 4
    growth_mb = (process.memory_info().rss - rss_before) / 2**20
    assert growth_mb < 300, growth_mb
    records = router.log.tail(1000)
    assert all(r["outcome"] == "ok" for r in records)
    print(
        f"\n500 concurrent calls: {500 / wall:.0f} calls/s, {cpu_per_call_ms:.2f} ms CPU per call "
        f"(router + LiteLLM + the in-process server), RSS +{growth_mb:.0f} MB"
    )


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=10),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
message = st.one_of(
    json_value,
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
            "content": json_value,
        }
    ),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.one_of(json_value, st.lists(message, max_size=4)))
def test_any_messages_give_an_answer_or_a_clear_error(make_router, server, messages):
    router = make_router(["rack:onprem"])
    server.requests.clear()
    try:
        decision = router.route(messages)
    except InvalidRequestError as error:
        assert str(error)
        try:
            router.completion(messages)
        except InvalidRequestError:
            pass
        assert server.requests == []  # nothing sent on invalid input
    else:
        assert decision.profile.data_class is not None


@settings(max_examples=150, deadline=None)
@given(
    data=st.one_of(
        json_value,
        st.fixed_dictionaries(
            {
                "loci": st.lists(
                    st.dictionaries(
                        st.sampled_from(
                            [
                                "name",
                                "zone",
                                "model",
                                "capability",
                                "context_window",
                                "timeout_s",
                                "api_key_env",
                                "usd_per_mtok_in",
                                "typo",
                            ]
                        ),
                        json_value,
                        max_size=6,
                    ),
                    max_size=3,
                )
            }
        ),
    )
)
def test_any_config_is_valid_or_a_config_error(data):
    try:
        config = config_from_dict(data if isinstance(data, dict) else {"loci": data})
    except ConfigError as error:
        assert str(error).startswith("<config>:")
    else:
        assert config.loci


_engine = PolicyEngine(PACKAGED_BUNDLE, reload=False)


@settings(max_examples=150, deadline=None)
@given(
    policy_input=st.dictionaries(
        st.sampled_from(["request", "context", "loci"]), json_value, max_size=3
    )
)
def test_any_policy_input_gives_a_decision_or_a_policy_error(policy_input):
    try:
        decision = _engine.evaluate(policy_input)
    except PolicyError as error:
        assert str(error)
    except LocusError as error:  # pragma: no cover - any other locus error is a bug
        raise AssertionError(f"unexpected {type(error).__name__}: {error}") from error
    else:
        assert set(decision.allowed) <= set(policy_input.get("loci") or {})

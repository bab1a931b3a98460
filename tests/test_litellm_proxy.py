"""The locus hook inside a real LiteLLM Proxy process on loopback.

The proxy (`litellm --config …`, the proxy that ships inside the litellm package) serves three
deployments generated from the locus config by `locus deploy litellm-config`: `onprem`,
`cloud-mini` (cheap) and `cloud-large`, all on the scripted loopback server (tests/fault_server.py),
whose request log shows what each deployment received. The policy lets RESTRICTED data go on-prem
(a sovereign deployment's choice) and never to the cloud. A trap is set in the proxy's own config:
a fallback from `onprem` to `cloud-mini`, which the hook must not let a RESTRICTED request take.
Clients are the openai SDK, as applications use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from fastapi import HTTPException
from litellm.proxy._types import UserAPIKeyAuth

from locus_llm.config import config_from_dict, load_config
from locus_llm.deploy import proxy_config
from locus_llm.litellm_proxy import LocusProxyHook
from locus_llm.router import Router
from tests.fault_server import FaultServer, status

TFN = "123 456 782"  # a valid Australian tax file number (check digit holds)
ABN = "51 824 753 556"  # a valid Australian business number
CLOUD = ("cloud-mini", "cloud-large")
BUDGET_USD = 2e-5  # tenant "small": a few calls of a few tokens on cloud-mini
BREAKER_THRESHOLD = 3
STARTUP_TIMEOUT_S = 150.0  # the proxy imports a great deal; on a loaded 2-core machine it is slow


def locus_config(api_base: str) -> dict:
    def locus(name: str, zone: str, capability: int, price_in: float, price_out: float) -> dict:
        spec = {
            "name": name,
            "zone": zone,
            "capability": capability,
            "api_base": api_base,
            "model": f"{'openai' if zone == 'cloud' else 'hosted_vllm'}/{name}",
            "context_window": 32768,
            "usd_per_mtok_in": price_in,
            "usd_per_mtok_out": price_out,
            "timeout_s": 10.0,
        }
        if zone == "cloud":
            spec["api_key_env"] = "LOCUS_TEST_CLOUD_KEY"
        return spec

    return {
        "loci": [
            locus("onprem", "onprem", 3, 0.6, 0.6),
            locus("cloud-mini", "cloud", 3, 0.15, 0.6),
            locus("cloud-large", "cloud", 5, 2.5, 10.0),
        ],
        "budgets": {"tenants": {"small": BUDGET_USD}},
        "breaker": {"failure_threshold": BREAKER_THRESHOLD, "cooldown_s": 60},
        "policy": {
            "data": {"routing_settings": {"zones_by_class": {"RESTRICTED": ["device", "onprem"]}}}
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proxy:
    url: str
    key: str
    log: Path
    startup_s: float

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key, max_retries=0, timeout=60)


@contextlib.contextmanager
def running_proxy(folder: Path, api_base: str, *, extra: dict | None = None) -> Iterator[Proxy]:
    """Write the locus and proxy configs into `folder`, start the proxy, wait until it serves."""
    locus_path = folder / "locus.yaml"
    locus_path.write_text(yaml.safe_dump(locus_config(api_base)))
    env = {
        **os.environ,
        "LOCUS_CONFIG": str(locus_path),
        "LOCUS_TEST_CLOUD_KEY": "sk-test",
        "LITELLM_MASTER_KEY": "sk-" + secrets.token_hex(16),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start
        "LITELLM_EVENT_LOOP": "asyncio",
        "OMP_NUM_THREADS": "1",
    }
    os.environ.setdefault("LOCUS_TEST_CLOUD_KEY", "sk-test")
    config = proxy_config(load_config(locus_path)) | (extra or {})
    proxy_path = folder / "proxy.yaml"
    proxy_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "proxy.log"
    started = time.perf_counter()
    command = [
        str(Path(sys.executable).parent / "litellm"),
        "--config",
        str(proxy_path),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the proxy exited with {process.returncode}:\n{tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health/liveliness", timeout=2).status_code == 200:
                    break
            if time.perf_counter() - started > STARTUP_TIMEOUT_S:
                pytest.fail(
                    f"the proxy did not serve within {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log)}"
                )
            time.sleep(0.2)
        yield Proxy(url, env["LITELLM_MASTER_KEY"], log, time.perf_counter() - started)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def proxy(fault_server: FaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    trap = {"router_settings": {"fallbacks": [{"onprem": ["cloud-mini"]}], "num_retries": 0}}
    with running_proxy(
        tmp_path_factory.mktemp("proxy"), fault_server.url + "/v1", extra=trap
    ) as running:
        yield running


@pytest.fixture
def loopback(proxy: Proxy, fault_server: FaultServer) -> FaultServer:
    fault_server.scripts.clear()
    fault_server.requests.clear()
    return fault_server


def ask(proxy: Proxy, prompt: str, *, model: str = "auto", **params: object):
    raw = proxy.client().chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], **params
    )
    return raw.headers, raw.parse()


def received(server: FaultServer, model: str) -> list[str]:
    return [str(r["body"]["messages"]) for r in server.requests if r["model"] == model]


def test_public_prompt_goes_to_the_cheap_locus(proxy: Proxy, loopback: FaultServer):
    headers, answer = ask(proxy, "Write a haiku about autumn leaves.")
    assert headers["x-litellm-model-group"] == "cloud-mini"  # the deployment that answered
    assert headers["x-locus-plan"].split(",")[0] == "cloud-mini"
    assert headers["x-locus-data-class"] == "PUBLIC"
    assert answer.choices[0].message.content == "Write a haiku about autumn leaves."  # echoed
    assert [r["model"] for r in loopback.requests] == ["cloud-mini"]


def test_tfn_goes_on_prem_and_never_reaches_the_cloud(proxy: Proxy, loopback: FaultServer):
    prompt = f"My TFN is {TFN}. What should I do with my tax return?"
    headers, answer = ask(proxy, prompt)
    assert headers["x-litellm-model-group"] == "onprem"
    assert headers["x-locus-data-class"] == "RESTRICTED"
    assert headers["x-locus-plan"] == "onprem"
    assert TFN in answer.choices[0].message.content
    # on-prem fails: the proxy's own configured fallback would send it to cloud-mini
    loopback.script("onprem", [status(503)])
    with pytest.raises(openai.APIStatusError) as failed:
        ask(proxy, prompt)
    assert failed.value.status_code == 503
    assert len(received(loopback, "onprem")) == 2
    assert [m for m in CLOUD if received(loopback, m)] == []


def test_policy_denial_is_a_403_with_the_reasons_and_nothing_is_sent(
    proxy: Proxy, loopback: FaultServer
):
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ask(proxy, f"My TFN is {TFN}.", model="cloud-mini")  # pinned to a cloud locus
    error = denied.value
    assert error.status_code == 403
    message = error.body["message"]
    assert "policy (revision " in message and "RESTRICTED" in message
    assert "cloud-mini: data class RESTRICTED may not leave for zone cloud" in message
    assert error.body["provider_specific_fields"]["code"] == "locus_policy_denied"
    assert loopback.requests == []


def test_redaction_obligation_pseudonymises_for_the_cloud_and_restores_the_answer(
    proxy: Proxy, loopback: FaultServer
):
    prompt = f"Our supplier's ABN is {ABN}. Write them a short thank-you note."
    headers, answer = ask(proxy, prompt)
    assert headers["x-litellm-model-group"] == "cloud-mini"
    assert headers["x-locus-data-class"] == "INTERNAL"
    [sent] = received(loopback, "cloud-mini")
    assert ABN not in sent and "<AU_ABN_1>" in sent
    assert answer.choices[0].message.content == prompt  # the echo, restored
    stream = proxy.client().chat.completions.create(
        model="auto", messages=[{"role": "user", "content": prompt}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == prompt
    assert all(ABN not in body for body in received(loopback, "cloud-mini"))


def test_failover_stays_inside_the_plan(proxy: Proxy, loopback: FaultServer):
    loopback.script("cloud-mini", [status(503)])
    headers, _ = ask(proxy, "Write a haiku about autumn leaves.")
    assert headers["x-litellm-model-group"] == "onprem"
    assert [r["model"] for r in loopback.requests] == ["cloud-mini", "onprem"]


def test_a_model_that_is_not_a_locus_is_refused(proxy: Proxy, loopback: FaultServer):
    with pytest.raises(openai.BadRequestError, match="not routed by locus"):
        ask(proxy, "hello", model="gpt-4o")
    assert loopback.requests == []


def test_tenant_budget_is_charged_per_answer_and_enforced(proxy: Proxy, loopback: FaultServer):
    """Each answer is charged at the locus's prices; once the next call cannot be paid for,
    the proxy refuses it with 403 before anything is sent."""
    small = {"locus": {"tenant": "small"}}  # the body object, as the gateway takes it
    served = 0
    with pytest.raises(openai.PermissionDeniedError) as denied:
        for _ in range(20):
            ask(proxy, "Write a haiku about autumn leaves.", max_tokens=5, extra_body=small)
            served += 1
    # an answer here costs about $5e-6 at cloud-mini's prices (the echo's usage)
    assert 1 <= served <= 6
    assert "tenant budget" in denied.value.body["message"]
    assert denied.value.body["provider_specific_fields"]["code"] in (
        "locus_policy_denied",  # the policy saw the spent amount
        "locus_budget_denied",  # the reservation failed (calls in flight elsewhere)
    )
    assert len(loopback.requests) == served  # the refused call reached no deployment
    assert all("locus" not in r["body"] for r in loopback.requests)  # not passed on
    # the default tenant has no budget: unaffected
    headers, _ = ask(proxy, "Write a haiku about autumn leaves.", max_tokens=5)
    assert headers["x-litellm-model-group"] == "cloud-mini"


def test_failures_the_proxy_logs_open_the_locus_circuit(proxy: Proxy, loopback: FaultServer):
    """The proxy's failure events feed the router's breaker: after BREAKER_THRESHOLD failures
    on-prem is unhealthy, and a RESTRICTED request (on-prem only) is refused without being sent.
    (Runs last of the proxy tests: the circuit stays open for the rest of the module.)"""
    loopback.script("onprem", [status(503)])
    refusals = []
    for _ in range(BREAKER_THRESHOLD + 3):
        try:
            ask(proxy, f"My TFN is {TFN}.")
        except openai.PermissionDeniedError as exc:
            refusals.append(exc.body["message"])
            break
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
        time.sleep(0.2)  # the failure is logged just after the answer
    assert refusals and "onprem: unhealthy (circuit open)" in refusals[0]
    # the failure log lands just after each answer: at most one more call gets through
    assert BREAKER_THRESHOLD <= len(received(loopback, "onprem")) <= BREAKER_THRESHOLD + 1
    assert [m for m in CLOUD if received(loopback, m)] == []


# --- the hook in this process: what the proxy hands it, without a proxy around it -------------


@pytest.fixture(scope="module")
def hook(analyzer) -> LocusProxyHook:
    os.environ.setdefault("LOCUS_TEST_CLOUD_KEY", "sk-test")
    router = Router(config_from_dict(locus_config("http://127.0.0.1:9/v1")), analyzer=analyzer)
    return LocusProxyHook(router=router)


def pre_call(
    hook: LocusProxyHook, data: dict, *, team: str | None = None, call_type: str = "acompletion"
) -> dict:
    key = UserAPIKeyAuth(team_id=team, user_id="alice")
    return asyncio.run(hook.async_pre_call_hook(key, None, data, call_type))


def test_the_key_team_is_the_tenant_whatever_the_body_claims(hook: LocusProxyHook):
    data = {
        "model": "auto",
        "messages": [{"role": "user", "content": "Write a haiku."}],
        "metadata": {"locus": {"tenant": "small", "interactive": True}},
    }
    routed = pre_call(hook, data, team="team-a")
    note = routed["metadata"]["locus_decision"]
    assert note["tenant"] == "team-a"
    assert routed["model"] == note["plan"][0] == "cloud-mini"
    assert routed["fallbacks"] == note["plan"][1:]
    record = hook.router.log.tail(1)[0]
    assert record["context"] == {
        "tenant": "team-a",
        "user": "alice",
        "app": None,
        "interactive": True,
    }
    assert record["chosen"] == "cloud-mini"


def test_malformed_routing_fields_and_other_calls_are_refused_clearly(hook: LocusProxyHook):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(HTTPException) as bad:
        pre_call(
            hook, {"model": "auto", "messages": messages, "metadata": {"locus": {"tennant": "x"}}}
        )
    assert bad.value.status_code == 400 and "tennant" in bad.value.detail["error"]
    with pytest.raises(HTTPException) as label:
        pre_call(hook, {"model": "auto", "messages": messages, "locus": {"data_label": "SECRET"}})
    assert label.value.status_code == 400 and "SECRET" in label.value.detail["error"]
    with pytest.raises(HTTPException) as embedding:
        pre_call(hook, {"model": "auto", "input": ["hi"]}, call_type="aembedding")
    assert embedding.value.status_code == 400
    assert "chat completions only" in embedding.value.detail["error"]
    untouched = {"model": "text-embedding-3-small", "input": ["hi"]}
    assert pre_call(hook, dict(untouched), call_type="aembedding") == untouched


def test_a_single_locus_plan_disables_the_proxys_own_fallbacks(hook: LocusProxyHook):
    routed = pre_call(
        hook, {"model": "auto", "messages": [{"role": "user", "content": f"My TFN is {TFN}."}]}
    )
    assert routed["model"] == "onprem"
    assert routed["disable_fallbacks"] is True and "fallbacks" not in routed

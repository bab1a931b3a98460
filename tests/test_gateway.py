"""`locus serve --config`: the router as an OpenAI-compatible gateway, for real on loopback.

The gateway runs in a uvicorn thread (`ServerThread`) over a Router whose loci are the scripted
OpenAI-compatible server of tests/fault_server.py; clients are httpx and the openai SDK.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from locus_llm.cli import main, render_decision
from locus_llm.errors import ConfigError, LocusError
from locus_llm.gateway import ROUTE_FIELDS, create_gateway, route_remotely
from locus_llm.router import Router
from locus_llm.server import ServerThread, add_commands
from tests.conftest import KEY_ENV, locus_spec
from tests.fault_server import FaultServer, ok, status

MESSAGES = [{"role": "user", "content": "Say hello to the team."}]


def post(url: str, **kw: Any) -> httpx.Response:
    return httpx.post(url, timeout=60, **kw)  # the first call may load the analysis models


def get(url: str, **kw: Any) -> httpx.Response:
    return httpx.get(url, timeout=60, **kw)


@pytest.fixture
def gateway(make_router: Callable[..., Router]) -> Iterator[Callable[..., str]]:
    """gateway(loci=..., **config) -> base URL of a gateway over a fresh router."""
    threads: list[ServerThread] = []

    def start(loci: list[Any] | None = None, *, api_key: str | None = None, **config: Any) -> str:
        router = make_router(loci or ["rack:onprem", "cloud:cloud"], **config)
        thread = ServerThread(create_gateway(router, api_key=api_key, warm=False))
        threads.append(thread)
        return thread.__enter__()

    yield start
    for thread in threads:
        thread.__exit__(None, None, None)


def test_chat_completion_is_routed_and_says_where_it_ran(gateway, server: FaultServer):
    server.script("rack", [ok("hello from the rack")])
    url = gateway()
    response = post(
        f"{url}/v1/chat/completions",
        json={"model": "auto", "messages": MESSAGES, "max_tokens": 16},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "hello from the rack"
    assert body["locus"]["locus"] == "rack"  # cheapest allowed locus for a PUBLIC request
    assert body["locus"]["zone"] == "onprem"
    assert body["usage"]["completion_tokens"] == 4
    assert response.headers["x-locus-locus"] == "rack"
    assert response.headers["x-locus-decision-id"] == body["locus"]["decision_id"]
    assert server.requests[-1]["body"]["max_tokens"] == 16


def test_streaming_through_the_openai_sdk(gateway, server: FaultServer):
    server.script("rack", [ok("one two three four")])
    client = openai.OpenAI(base_url=gateway() + "/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="auto", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert any(c.usage and c.usage.completion_tokens == 4 for c in chunks)
    summary = chunks[-1].model_extra["locus"]  # the last, choice-less chunk names the locus
    assert summary["locus"] == "rack"


def test_policy_denial_is_a_403_naming_every_reason(gateway, server: FaultServer):
    url = gateway(["cloud:cloud"])  # only the cloud: RESTRICTED data may not go there
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(
            model="auto", messages=MESSAGES, extra_body={"locus": {"data_label": "RESTRICTED"}}
        )
    error = caught.value.body
    assert error["code"] == "policy_denied"
    assert "data class RESTRICTED may not leave for zone cloud" in error["message"]
    assert server.requests == []  # nothing was sent anywhere
    response = post(
        f"{url}/v1/chat/completions",
        json={"model": "auto", "messages": MESSAGES},
        headers={"X-Locus-Data-Label": "restricted"},
    )
    assert response.status_code == 403  # the same context, from a header


def test_pinned_locus_and_unknown_model(gateway, server: FaultServer):
    server.script("cloud", [ok("from the cloud")])
    url = gateway()
    pinned = post(f"{url}/v1/chat/completions", json={"model": "cloud", "messages": MESSAGES})
    assert pinned.status_code == 200 and pinned.json()["locus"]["locus"] == "cloud"
    unknown = post(f"{url}/v1/chat/completions", json={"model": "gpt-9", "messages": []})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "auto, locus, cloud, rack" in unknown.json()["error"]["message"]
    models = get(f"{url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["auto", "rack", "cloud"]


@pytest.mark.parametrize(
    ("body", "status_code", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1]", 400, "must be a JSON object"),
        (json.dumps({"model": "auto"}).encode(), 400, "'messages' is required"),
        (
            json.dumps({"model": "auto", "messages": MESSAGES, "api_base": "http://evil"}).encode(),
            400,
            "Unrecognized request argument supplied: 'api_base'",
        ),
        (
            json.dumps({"model": "auto", "messages": MESSAGES, "mock_response": "x"}).encode(),
            400,
            "Unrecognized request argument supplied: 'mock_response'",
        ),
        (
            json.dumps({"model": "auto", "messages": "hi", "stream": "yes"}).encode(),
            400,
            "'stream' must be a boolean",
        ),
        (
            json.dumps({"model": "auto", "messages": [{"role": "robot"}]}).encode(),
            400,
            "role is 'robot'",
        ),
        (
            json.dumps(
                {"model": "auto", "messages": MESSAGES, "locus": {"tenant": "a", "budget": 3}}
            ).encode(),
            400,
            "unknown routing context field(s) ['budget']",
        ),
    ],
)
def test_bad_requests_get_openai_errors_and_send_nothing(
    gateway, server: FaultServer, body, status_code, fragment
):
    response = post(f"{gateway()}/v1/chat/completions", content=body)
    assert response.status_code == status_code
    error = response.json()["error"]
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert server.requests == []


def test_every_locus_failing_is_a_502(gateway, server: FaultServer):
    server.script("rack", [status(500)])
    server.script("cloud", [status(503)])
    response = post(
        f"{gateway()}/v1/chat/completions", json={"model": "auto", "messages": MESSAGES}
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_failed"
    assert "every allowed locus failed" in response.json()["error"]["message"]


def test_route_endpoint_answers_what_locus_route_json_prints(
    gateway, server: FaultServer, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    url = gateway()
    prompt = "Summarise this paragraph about the quarterly plan in two lines."
    remote = post(f"{url}/v1/route", json={"prompt": prompt, "context": {"tenant": "acme"}}).json()
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {"loci": [locus_spec("rack", "onprem", server), locus_spec("cloud", "cloud", server)]}
        )
    )
    assert main(["route", "--json", "--config", str(config), prompt]) == 0
    local = json.loads(capsys.readouterr().out)
    assert set(ROUTE_FIELDS) == set(local)  # the CLI's keys, all of them
    for key in ("locus", "zone", "allowed", "denied", "plan", "capability_floor", "obligations"):
        assert remote[key] == local[key], key
    assert remote["profile"]["task"] == local["profile"]["task"]
    assert remote["budget"] == {"spent_usd": None, "budget_usd": None, "budget_state": "ok"}
    assert "CHOSEN" in render_decision(remote)  # the CLI's table renders a remote decision too
    assert server.requests == []  # a decision sends nothing
    through_client = route_remotely(
        url, [{"role": "user", "content": prompt}], {"tenant": "acme", "user": None}
    )
    assert through_client["locus"] == remote["locus"]
    assert main(["route", "--json", "--server", url, prompt]) == 0  # the CLI, through the gateway
    through_cli = json.loads(capsys.readouterr().out)
    assert set(through_cli) == set(ROUTE_FIELDS)
    assert through_cli["plan"] == remote["plan"]
    assert main(["route", "--server", url, prompt]) == 0
    assert "CHOSEN" in capsys.readouterr().out
    with pytest.raises(LocusError, match=r"/v1/route: HTTP 400: 'messages' \(or 'prompt'\)"):
        route_remotely(url, None)


def test_route_endpoint_reports_the_tenant_budget(gateway, server: FaultServer):
    url = gateway(budgets={"tenants": {"acme": 0.0}})
    decision = post(
        f"{url}/v1/route", json={"prompt": "Say hi."}, headers={"X-Locus-Tenant": "acme"}
    ).json()
    assert decision["budget"] == {"spent_usd": 0.0, "budget_usd": 0.0, "budget_state": "exceeded"}
    assert decision["allowed"] == []
    assert decision["denied"]["cloud"] == ["tenant budget exhausted: $0 of $0 spent"]


def test_health_and_api_key(gateway, server: FaultServer):
    url = gateway(api_key="s3cret")
    health = get(f"{url}/health").json()  # open, for probes
    assert health["status"] == "ok" and health["mode"] == "router"
    assert health["state"] == {"backend": "memory", "reachable": True}
    assert health["loci"] == {
        "rack": {"zone": "onprem", "healthy": True},
        "cloud": {"zone": "cloud", "healthy": True},
    }
    refused = post(f"{url}/v1/route", json={"prompt": "hi"})
    assert refused.status_code == 401
    allowed = post(
        f"{url}/v1/route", json={"prompt": "hi"}, headers={"Authorization": "Bearer s3cret"}
    )
    assert allowed.status_code == 200


def test_serve_refuses_local_models_and_the_router_together():
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["serve", "--config", "router.yaml", "--model", "smollm2"])
    with pytest.raises(ConfigError, match="choose one"):
        args.handler(args)
    args = parser.parse_args(["serve", "--config", "/no/such/router.yaml"])
    with pytest.raises(ConfigError, match="config file not found"):
        args.handler(args)


def test_calls_past_max_inflight_get_429_with_retry_after(make_router, server: FaultServer):
    from concurrent.futures import ThreadPoolExecutor

    from tests.fault_server import hang

    server.script("rack", [hang()])  # holds the only slot until the locus times out
    router = make_router([locus_spec("rack", "onprem", server, timeout_s=2.0, max_retries=0)])
    with ServerThread(create_gateway(router, max_inflight=1, warm=False)) as url:
        body = {"model": "auto", "messages": MESSAGES}
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, f"{url}/v1/chat/completions", json=body)
            for _ in range(200):  # until the first call has reached the locus
                if server.requests:
                    break
                time.sleep(0.01)
            refused = post(f"{url}/v1/chat/completions", json=body)
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["code"] == "rate_limit_exceeded"
            assert "1 calls in flight" in error["message"]
            assert held.result().status_code == 502  # the hung locus failed: the slot frees
        server.script("rack", [ok("free again")])
        again = post(f"{url}/v1/chat/completions", json=body)
        assert again.status_code == 200, again.text

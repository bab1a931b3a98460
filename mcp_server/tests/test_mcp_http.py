"""locus-mcp over streamable HTTP: the SDK's client against `locus-mcp --http`, and the guards.

One server subprocess serves the module, on loopback, port chosen by the OS, with a bearer token
and a 64 KiB body limit. The client speaks the handshake-era protocol (`mode="legacy"`, what
Claude Desktop, Cursor and VS Code speak today); the stdio tests cover the 2026 protocol.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_support import TOKEN_ENV, HttpServer, error_text, locus_config, server_env, structured
from tests.fault_server import FaultServer, ok

T = TypeVar("T")
MAX_BODY = 65536
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "guard-test", "version": "1"},
    },
}
ACCEPT = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def http_server(
    fault_server: FaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HttpServer]:
    folder = tmp_path_factory.mktemp("mcp-http")
    config = locus_config(fault_server, folder)
    args = ["--config", str(config), "--http", ":0", "--token-env", TOKEN_ENV,
            "--max-body-bytes", str(MAX_BODY)]  # fmt: skip
    with HttpServer(args, folder) as server:
        yield server


@pytest.fixture(scope="module")
def token() -> str:
    return server_env()[TOKEN_ENV]


def with_client(url: str, token: str, work: Callable[[Client], Awaitable[T]]) -> T:
    async def go() -> T:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as c:
            return await work(c)

    return anyio.run(go)


def post(url: str, headers: dict[str, str], body: bytes | None = None) -> httpx.Response:
    content = body if body is not None else json.dumps(INITIALIZE).encode()
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, **headers}
    return httpx.post(url, content=content, headers=headers, timeout=30)


def test_binds_loopback_by_default(http_server: HttpServer) -> None:
    assert http_server.url.startswith("http://127.0.0.1:") and http_server.url.endswith("/mcp")


def test_every_tool_and_resource_over_http(
    http_server: HttpServer, token: str, loopback: FaultServer
) -> None:
    loopback.script("cloud", [ok("Paris is the capital of France.")])

    async def session(client: Client) -> dict[str, Any]:
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        out: dict[str, Any] = {"tools": [t.name for t in (await client.list_tools()).tools]}
        out["chat"] = await client.call_tool(
            "chat",
            {"prompt": "What is the capital of France?", "locus": "cloud",
             "context": {"tenant": "acme", "interactive": True}},
            progress_callback=on_progress,
        )  # fmt: skip
        out["progress"] = progress
        out["route"] = await client.call_tool("route", {"prompt": "Capital of France?"})
        out["analyze"] = await client.call_tool(
            "analyze", {"prompt": "Mail jane.doe@example.com the minutes."}
        )
        out["list_loci"] = await client.call_tool("list_loci", {})
        out["policy_check"] = await client.call_tool(
            "policy_check", {"data_class": "RESTRICTED", "entity_types": ["AU_TFN"]}
        )
        for uri in ("locus://policy/bundle", "locus://policy/revision", "locus://decisions/recent"):
            out[uri] = (await client.read_resource(uri)).contents[0].text
        return out

    out = with_client(http_server.url, token, session)
    assert sorted(out["tools"]) == ["analyze", "chat", "list_loci", "policy_check", "route"]

    chat = structured(out["chat"])
    assert chat["answer"] == "Paris is the capital of France." and chat["locus"] == "cloud"
    assert chat["usage"]["completion_tokens"] == 6
    assert out["progress"] == [1, 2, 3, 4, 5, 6]  # one notification per streamed chunk
    assert loopback.calls("cloud") == 1
    sent = loopback.requests[0]["body"]
    assert sent["stream"] is True and sent["model"] == "cloud"
    # A place name makes the request INTERNAL: it may reach the cloud, but pseudonymised.
    assert chat["data_class"] == "INTERNAL" and chat["redacted"] == {"LOCATION": 1}
    assert "France" not in json.dumps(sent["messages"])

    route = structured(out["route"])
    assert route["locus"] in route["allowed"] and route["plan"][0] == route["locus"]
    assert route["policy_revision"] == chat["policy_revision"]

    profile = structured(out["analyze"])
    assert profile["entity_types"]["EMAIL_ADDRESS"] == 1 and profile["data_class"] == "CONFIDENTIAL"
    assert "jane.doe" not in json.dumps(profile)

    loci = structured(out["list_loci"])["loci"]
    assert [entry["name"] for entry in loci] == ["device", "onprem", "cloud"]

    check = structured(out["policy_check"])
    assert check["allowed"] == ["device"] and check["cloud_allowed"] is False
    assert check["denied"]["onprem"] == ["data class RESTRICTED may not leave for zone onprem"]

    assert json.loads(out["locus://policy/bundle"])["revision"] == out["locus://policy/revision"]
    records = json.loads(out["locus://decisions/recent"])
    assert records[-1]["id"] == chat["decision_id"]
    assert records[-1]["context"]["tenant"] == "acme"
    assert len(loopback.requests) == 1  # route, analyze and policy_check sent nothing


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_log_notifications_follow_the_level_the_client_sets(
    http_server: HttpServer, token: str, loopback: FaultServer
) -> None:
    loopback.script("cloud", [ok("Logged.")])
    logs: list[Any] = []

    async def on_log(params: Any) -> None:
        logs.append(params)

    async def go() -> tuple[Any, int, int]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        transport = streamable_http_client(http_server.url, http_client=http)
        async with http, Client(transport, mode="legacy", logging_callback=on_log) as client:
            answer = await client.set_logging_level("info")
            await client.call_tool("chat", {"prompt": "Say 'logged'.", "locus": "cloud"})
            at_info = len(logs)
            await client.set_logging_level("warning")
            await client.call_tool("chat", {"prompt": "Say 'logged'.", "locus": "cloud"})
            return answer, at_info, len(logs)

    answer, at_info, at_warning = anyio.run(go)
    assert answer.model_dump(exclude_none=True) == {}  # logging/setLevel answers {}
    assert at_info == 1 and logs[0].level == "info" and logs[0].data["locus"] == "cloud"
    assert at_warning == 1  # the info line of the second call was filtered out


def test_a_failing_locus_is_a_tool_error_not_a_dead_server(
    http_server: HttpServer, token: str, loopback: FaultServer
) -> None:
    from tests.fault_server import status

    loopback.script("cloud", [status(500, "scripted outage")])

    async def session(client: Client) -> tuple[Any, Any]:
        failed = await client.call_tool("chat", {"prompt": "Hello?", "locus": "cloud"})
        after = await client.call_tool("policy_check", {"data_class": "PUBLIC"})
        return failed, after

    failed, after = with_client(http_server.url, token, session)
    message = error_text(failed)
    assert "every allowed locus failed" in message and "cloud" in message
    assert structured(after)["cloud_allowed"] is True


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Basic dGVzdA=="])
def test_requests_without_the_token_are_refused(
    http_server: HttpServer, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = post(http_server.url, headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_foreign_host_or_origin_is_refused(http_server: HttpServer, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    assert post(http_server.url, {**auth, "Host": "evil.example.com"}).status_code == 421
    evil_origin = {**auth, "Origin": "http://evil.example.com"}
    assert post(http_server.url, evil_origin).status_code == 403
    port = http_server.url.split(":")[2].split("/")[0]
    local = {**auth, "Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}
    assert post(http_server.url, local).status_code == 200


def test_oversized_requests_are_refused(http_server: HttpServer, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    big = json.dumps({**INITIALIZE, "padding": "x" * MAX_BODY}).encode()
    assert post(http_server.url, auth, big).status_code == 413
    assert post(http_server.url, auth).status_code == 200


def test_malformed_requests_get_4xx_and_the_server_lives_on(
    http_server: HttpServer, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    assert post(http_server.url, auth, b"this is not json").status_code == 400
    assert post(http_server.url, auth, b'{"jsonrpc": "2.0", "id": 1}').status_code == 400
    wrong_type = {**auth, "Content-Type": "text/plain"}
    assert post(http_server.url, wrong_type).status_code in {400, 415}
    assert post(http_server.url, auth).status_code == 200

"""locus-mcp over stdio, driven by the MCP SDK's client: every tool, every resource, real routing.

One `locus-mcp --config ...` subprocess serves the whole module (it loads LiteLLM, the sensitivity
detector and SmolLM2 once). The device locus is the real SmolLM2; on-prem and cloud are the
loopback server, whose request log shows exactly what left the MCP server and where it went.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp_support import (
    LOCUS_MCP,
    ClientThread,
    error_text,
    locus_config,
    require_command,
    server_env,
    structured,
)
from tests.fault_server import FaultServer, ok

TFN = "123 456 782"  # a valid Australian tax file number (its check digits hold)
TFN_MESSAGES = [
    {"role": "system", "content": "You are a helpful tax assistant."},
    {"role": "user", "content": f"My tax file number is {TFN}. Which form do I lodge it on?"},
]


@pytest.fixture(scope="module")
def mcp(
    fault_server: FaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClientThread]:
    require_command()
    folder = tmp_path_factory.mktemp("mcp-stdio")
    config = locus_config(fault_server, folder)
    params = StdioServerParameters(
        command=str(LOCUS_MCP), args=["--config", str(config)], env=server_env()
    )
    errlog = (folder / "stderr.log").open("w")
    try:
        with ClientThread(lambda: Client(stdio_client(params, errlog=errlog))) as thread:
            yield thread
    finally:
        errlog.close()


def call(mcp: ClientThread, tool: str, arguments: dict[str, Any], **kw: Any) -> Any:
    return mcp.run(lambda client: client.call_tool(tool, arguments, **kw), timeout=180)


def assert_alive(mcp: ClientThread) -> None:
    assert structured(call(mcp, "policy_check", {"data_class": "PUBLIC"}))["allowed"]


def read(mcp: ClientThread, uri: str) -> str:
    result = mcp.run(lambda client: client.read_resource(uri))
    return result.contents[0].text


def test_tools_and_resources_are_listed_with_schemas(mcp: ClientThread) -> None:
    tools = {tool.name: tool for tool in mcp.run(lambda c: c.list_tools()).tools}
    assert set(tools) == {"chat", "route", "analyze", "list_loci", "policy_check"}
    chat_input = tools["chat"].input_schema["properties"]
    assert {"messages", "prompt", "system", "context", "locus", "max_tokens"} <= set(chat_input)
    for tool in tools.values():  # structured output: every tool declares what it returns
        assert tool.output_schema is not None and tool.output_schema["type"] == "object"
    assert {"answer", "locus", "zone", "denied", "attempts", "policy_revision"} <= set(
        tools["chat"].output_schema["properties"]
    )
    assert tools["policy_check"].input_schema["required"] == ["data_class"]
    resources = {str(r.uri) for r in mcp.run(lambda c: c.list_resources()).resources}
    assert resources == {
        "locus://policy/bundle",
        "locus://policy/revision",
        "locus://decisions/recent",
    }


def test_a_tax_file_number_never_reaches_the_cloud(
    mcp: ClientThread, loopback: FaultServer
) -> None:
    progress: list[tuple[float, float | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total))

    result = structured(
        call(
            mcp, "chat", {"messages": TFN_MESSAGES, "max_tokens": 12}, progress_callback=on_progress
        )
    )
    assert result["locus"] == "device" and result["zone"] == "device"
    assert result["data_class"] == "RESTRICTED"
    assert "zone cloud" in " ".join(result["denied"]["cloud"])
    assert result["answer"].strip() and result["usage"]["completion_tokens"] > 0
    # progress came per streamed chunk, counting up to the chunks of the answer
    assert progress and [p for p, _ in progress] == list(range(1, len(progress) + 1))
    assert all(total == 12 for _, total in progress)

    pinned = call(mcp, "chat", {"messages": TFN_MESSAGES, "locus": "cloud"})
    assert "allows no locus" in error_text(pinned)
    assert loopback.requests == []  # nothing at all left for on-prem or cloud

    # Control: the cloud path is live in this very server; a public prompt pinned to it arrives.
    loopback.script("cloud", [ok("Lodge it on the tax return form.")])
    public = structured(
        call(mcp, "chat", {"prompt": "Which form is a tax return?", "locus": "cloud"})
    )
    assert public["locus"] == "cloud" and public["answer"] == "Lodge it on the tax return form."
    assert loopback.calls("cloud") == 1
    assert all(TFN not in json.dumps(r["body"]) for r in loopback.requests)


def test_route_analyze_policy_check_and_list_loci(mcp: ClientThread, loopback: FaultServer) -> None:
    profile = structured(call(mcp, "analyze", {"messages": TFN_MESSAGES}))
    assert profile["data_class"] == "RESTRICTED"
    assert profile["entity_types"] == {"AU_TFN": 1}
    assert profile["entities"] == [
        {"type": "AU_TFN", "score": profile["entities"][0]["score"], "message": 1}
    ]
    text = json.dumps(profile)
    assert TFN not in text and TFN.replace(" ", "") not in text  # types, never values
    assert '"start"' not in text and '"end"' not in text  # nor the spans

    decision = structured(
        call(
            mcp,
            "route",
            {
                "prompt": "Summarise the quarterly numbers.",
                "context": {"data_label": "CONFIDENTIAL", "tenant": "acme"},
            },
        )
    )
    assert decision["profile"]["data_class"] == "CONFIDENTIAL"  # the caller's label raised it
    assert decision["locus"] in {"device", "onprem"} and "cloud" not in decision["plan"]
    assert "zone cloud" in " ".join(decision["denied"]["cloud"])
    assert set(decision["scores"]) == set(decision["allowed"])
    assert loopback.requests == []  # route decides, never sends

    confidential = structured(call(mcp, "policy_check", {"data_class": "CONFIDENTIAL"}))
    assert confidential["cloud_allowed"] is False
    assert set(confidential["allowed_zones"]) == {"device", "onprem"}
    public = structured(call(mcp, "policy_check", {"data_class": "PUBLIC", "task": "open_qa"}))
    assert public["cloud_allowed"] is True and "cloud" in public["allowed"]
    capped = structured(
        call(
            mcp,
            "policy_check",
            {"data_class": "PUBLIC", "tokens_in": 2000, "context": {"max_cost_usd": 0.0001}},
        )
    )
    assert capped["allowed"] == ["device"]  # free, so under any cap
    assert capped["denied"]["cloud"] == ["predicted cost $0.007560 over cap $0.000100"]

    loopback.script("cloud", [ok("Measured.")])
    structured(call(mcp, "chat", {"prompt": "Say 'measured'.", "locus": "cloud"}))
    loci = {entry["name"]: entry for entry in structured(call(mcp, "list_loci", {}))["loci"]}
    assert {name: entry["zone"] for name, entry in loci.items()} == {
        "device": "device",
        "onprem": "onprem",
        "cloud": "cloud",
    }
    assert loci["cloud"]["usd_per_mtok_out"] == 10.0 and loci["cloud"]["credentials"] is True
    assert all(entry["healthy"] for entry in loci.values())
    assert loci["cloud"]["measured"] is True and loci["cloud"]["calls"] >= 1  # from live calls
    assert loci["cloud"]["latency_ms"] is not None and loci["cloud"]["cost_usd"] > 0
    assert loci["onprem"]["measured"] is False and loci["onprem"]["calls"] == 0


def test_resources_show_the_policy_and_recent_decisions(
    mcp: ClientThread, loopback: FaultServer
) -> None:
    loopback.script("cloud", [ok("Four.")])
    result = structured(call(mcp, "chat", {"prompt": "What is two plus two?", "locus": "cloud"}))
    bundle = json.loads(read(mcp, "locus://policy/bundle"))
    assert bundle["revision"] == read(mcp, "locus://policy/revision") == result["policy_revision"]
    assert "package locus.routing" in bundle["files"]["routing.rego"]
    assert "zones_by_class" in bundle["files"]["data.json"]

    records = json.loads(read(mcp, "locus://decisions/recent"))
    mine = [r for r in records if r["id"] == result["decision_id"]]
    assert len(mine) == 1 and mine[0]["chosen"] == "cloud" and mine[0]["outcome"] == "ok"
    assert "two plus two" not in json.dumps(records)  # a digest of the prompt, never the prompt
    assert all(TFN not in json.dumps(r) for r in records)


def test_a_long_generation_reports_progress_and_can_be_cancelled(mcp: ClientThread) -> None:
    async def cancel_after_three_chunks(client: Client) -> list[float]:
        seen: list[float] = []
        enough = anyio.Event()

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            seen.append(value)
            if len(seen) >= 3:
                enough.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(
                lambda: client.call_tool(
                    "chat",
                    {
                        "prompt": "Write a very long story about a lighthouse keeper.",
                        "locus": "device",
                        "max_tokens": 1500,
                    },
                    progress_callback=on_progress,
                )
            )
            with anyio.fail_after(120):
                await enough.wait()
            tasks.cancel_scope.cancel()  # the client sends notifications/cancelled
        return seen

    started = time.monotonic()
    seen = mcp.run(cancel_after_three_chunks, timeout=180)
    assert seen[:3] == [1, 2, 3]

    deadline = time.monotonic() + 30
    while True:  # the server closes the stream and records why
        records = json.loads(read(mcp, "locus://decisions/recent"))
        last = records[-1]
        if last["outcome"] == "error" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert last["outcome"] == "error" and "closed by the caller" in last["error"]
    assert last["plan"] == ["device"]
    assert time.monotonic() - started < 90  # 1,500 tokens were never generated
    assert_alive(mcp)  # and the server is still serving


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        ("chat", {}, "exactly one of `messages`"),
        (
            "chat",
            {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]},
            "exactly one of",
        ),
        ("chat", {"messages": []}, "at least one message"),
        ("chat", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ("chat", {"prompt": "hi", "context": {"bogus": 1}}, "bogus"),
        ("chat", {"prompt": "hi", "locus": "nowhere"}, "unknown locus 'nowhere'"),
        ("chat", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ("route", {"prompt": 42}, "prompt"),
        ("policy_check", {"data_class": "SECRET"}, "data_class"),
        ("policy_check", {"data_class": "PUBLIC", "difficulty": 7}, "difficulty"),
        ("no_such_tool", {}, "no_such_tool"),
    ],
)
def test_bad_input_is_a_clear_tool_error_and_the_server_lives_on(
    mcp: ClientThread, loopback: FaultServer, tool: str, arguments: dict[str, Any], message: str
) -> None:
    assert message in error_text(call(mcp, tool, arguments))
    assert loopback.requests == []
    assert_alive(mcp)


def test_bad_config_fails_at_start_with_the_field_named(tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "bad.yaml"
    config.write_text("loci:\n  - {name: x, zone: moon, model: openai/gpt-4o}\n")
    done = subprocess.run(
        [str(LOCUS_MCP), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env=server_env(),
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "loci.x.zone" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_garbage_on_stdin_does_not_kill_the_server(tmp_path: Path) -> None:
    import subprocess

    process = subprocess.Popen([str(LOCUS_MCP)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=server_env())  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    try:
        initialize = {"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
        for line in (b"this is not json\n", b'{"jsonrpc": "2.0", "id": 1}\n', b"[1, 2\n",
                     (json.dumps(initialize) + "\n").encode()):  # fmt: skip
            process.stdin.write(line)
        process.stdin.flush()
        while (line := process.stdout.readline()) and json.loads(line).get("id") != 7:
            pass  # error answers to the garbage, if any
        assert line, "the server exited"
        assert json.loads(line)["result"]["serverInfo"]["name"] == "locus"
    finally:
        process.stdin.close()
        process.wait(timeout=30)

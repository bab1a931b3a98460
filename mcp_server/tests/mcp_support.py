"""Helpers for the MCP server tests: real servers, real routing, nothing mocked.

The locus config points at the scripted OpenAI-compatible server on loopback (tests/fault_server.py,
whose request log shows what reached each locus) for the on-prem and cloud loci, and at the real
SmolLM2 model (in-process ONNX) for the device locus. `locus-mcp` runs as a subprocess, driven by
the MCP SDK's own client, over stdio or streamable HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

from mcp import Client
from tests.fault_server import FaultServer

T = TypeVar("T")
CLOUD_KEY_ENV = "LOCUS_MCP_TEST_CLOUD_KEY"
TOKEN_ENV = "LOCUS_MCP_TEST_TOKEN"
LOCUS_MCP = Path(sys.executable).with_name("locus-mcp")
STARTUP_TIMEOUT_S = 120.0


def require_command() -> None:
    if not LOCUS_MCP.exists():
        raise RuntimeError(
            f"{LOCUS_MCP} is missing: install it with "
            "`.venv/bin/pip install --no-deps -e mcp_server`"
        )


def locus_config(server: FaultServer, folder: Path) -> Path:
    """device: the real SmolLM2; onprem and cloud: the loopback server (cloud needs a key).

    Timeouts are generous: a loaded shared machine must not turn into a failover."""
    config = {
        "decision_log": str(folder / "decisions.jsonl"),
        "local_models": ["smollm2"],
        "loci": [
            {
                "name": "device",
                "zone": "device",
                "model": "locus-onnx/smollm2",
                "capability": 1,
                "usd_per_mtok_in": 0.0,
                "usd_per_mtok_out": 0.0,
                "timeout_s": 120.0,
            },
            {
                "name": "onprem",
                "zone": "onprem",
                "model": "hosted_vllm/onprem",
                "api_base": server.url + "/v1",
                "capability": 2,
                "usd_per_mtok_in": 0.2,
                "usd_per_mtok_out": 0.2,
                "timeout_s": 60.0,
                "max_retries": 0,
            },
            {
                "name": "cloud",
                "zone": "cloud",
                "model": "openai/cloud",
                "api_base": server.url + "/v1",
                "api_key_env": CLOUD_KEY_ENV,
                "capability": 5,
                "usd_per_mtok_in": 2.5,
                "usd_per_mtok_out": 10.0,
                "timeout_s": 60.0,
                "max_retries": 0,
            },
        ],
    }
    path = folder / "locus.json"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def server_env() -> dict[str, str]:
    return {
        **os.environ,
        CLOUD_KEY_ENV: "sk-loopback-test",
        TOKEN_ENV: "test-token-0123456789",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "OMP_NUM_THREADS": "1",  # a shared 2-core machine
        "PYTHONUNBUFFERED": "1",
    }


class ClientThread:
    """One MCP client session kept open in a thread of its own, for a whole test module.

    anyio requires a client's context to be entered and left in the same task, so the session
    lives in a task of this thread's loop and tests submit coroutines to it.
    """

    def __init__(self, connect: Callable[[], Client]) -> None:
        self._connect = connect
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop: asyncio.Event | None = None
        self._closed: Future[None] = Future()
        self.client: Client | None = None

    def __enter__(self) -> ClientThread:
        self._thread.start()
        ready: Future[None] = Future()
        asyncio.run_coroutine_threadsafe(self._hold(ready), self._loop)
        ready.result(timeout=STARTUP_TIMEOUT_S)
        return self

    async def _hold(self, ready: Future[None]) -> None:
        try:
            async with AsyncExitStack() as stack:
                self.client = await stack.enter_async_context(self._connect())
                self._stop = asyncio.Event()
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            self._closed.set_exception(exc)
            return
        self._closed.set_result(None)

    def run(self, work: Callable[[Client], Awaitable[T]], timeout: float = 120.0) -> T:
        assert self.client is not None
        client = self.client

        async def go() -> T:
            return await work(client)

        return asyncio.run_coroutine_threadsafe(go(), self._loop).result(timeout=timeout)

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            try:
                self._closed.result(timeout=30)
            except Exception:
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class HttpServer:
    """`locus-mcp --http` as a subprocess; the URL comes from the line it prints on stderr."""

    def __init__(self, args: list[str], folder: Path) -> None:
        self.args = args
        self.log_path = folder / "locus-mcp-http.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> HttpServer:
        require_command()
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(LOCUS_MCP), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=server_env(),
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            if match := re.search(r"streamable HTTP on (http://\S+)", text):
                self.url = match.group(1)
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"locus-mcp --http did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


def structured(result: Any) -> dict[str, Any]:
    """A tool result's structured content, failing with the server's message on a tool error."""
    if result.is_error:
        texts = [getattr(block, "text", "") for block in result.content]
        raise AssertionError(f"tool error: {' '.join(texts)}")
    assert result.structured_content is not None
    return result.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, f"expected a tool error, got {result.structured_content}"
    return " ".join(getattr(block, "text", "") for block in result.content)

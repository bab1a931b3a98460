"""Fixtures for the MCP server tests (helpers in mcp_support.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the shared loopback server lives in the core's tests
    sys.path.insert(0, str(REPO))

from tests.fault_server import FaultServer  # noqa: E402


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def loopback(fault_server: FaultServer) -> FaultServer:
    """The loopback server with its request log and scripts cleared for this test."""
    fault_server.scripts.clear()
    fault_server.requests.clear()
    return fault_server

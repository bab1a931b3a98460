"""Shared fixtures: a scripted OpenAI-compatible server on loopback, and routers pointed at it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from locus_llm.analysis import Analyzer  # noqa: E402
from locus_llm.config import config_from_dict  # noqa: E402
from locus_llm.router import Router  # noqa: E402
from tests.fault_server import FaultServer  # noqa: E402

KEY_ENV = "LOCUS_TEST_CLOUD_KEY"


@pytest.fixture(scope="session")
def fault_server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def server(fault_server: FaultServer) -> Iterator[FaultServer]:
    """The session's server with its scripts and request log cleared for this test."""
    fault_server.scripts.clear()
    fault_server.requests.clear()
    yield fault_server


def locus_spec(name: str, zone: str, server: FaultServer, **overrides: Any) -> dict[str, Any]:
    """A locus on the loopback server; cloud loci use the openai/ provider and need a key."""
    spec: dict[str, Any] = {
        "name": name,
        "zone": zone,
        "model": (f"openai/{name}" if zone == "cloud" else f"hosted_vllm/{name}"),
        "api_base": server.url + "/v1",
        "capability": {"device": 1, "onprem": 3, "cloud": 5}[zone],
        "context_window": {"device": 8192, "onprem": 32768, "cloud": 128000}[zone],
        "usd_per_mtok_in": {"device": 0.0, "onprem": 0.2, "cloud": 2.5}[zone],
        "usd_per_mtok_out": {"device": 0.0, "onprem": 0.2, "cloud": 10.0}[zone],
        "timeout_s": 5.0,
        "max_retries": 1,
    }
    if zone == "cloud":
        spec["api_key_env"] = KEY_ENV
    spec.update(overrides)
    return spec


@pytest.fixture(scope="session")
def analyzer() -> Analyzer:
    """One real analyzer (classifier + presidio) for the session: loading it is the slow part."""
    return Analyzer()


@pytest.fixture
def make_router(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, analyzer: Analyzer
) -> Callable[..., Router]:
    """Build a Router over loci on the loopback server: make_router(["edge:onprem", ...])."""
    monkeypatch.setenv(KEY_ENV, "sk-test-loopback")

    def build(loci: list[str | dict[str, Any]] | None = None, **config: Any) -> Router:
        specs = []
        for item in loci or ["onprem:onprem", "cloud:cloud"]:
            if isinstance(item, str):
                name, zone = item.split(":")
                specs.append(locus_spec(name, zone, server))
            else:
                specs.append(item)
        data = {"loci": specs, "decision_log": str(tmp_path / "decisions.jsonl"), **config}
        return Router(config_from_dict(data), analyzer=analyzer)

    return build

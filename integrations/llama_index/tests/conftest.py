"""Fixtures: the scripted stand-in for a vLLM endpoint, and locus configs whose loci point at it.

The endpoint is the one the LangChain tests use (integrations/langchain/tests/scripted_endpoint.py):
a real OpenAI-compatible server on loopback whose answers are computed from each request, because
the on-device SmolLM2-135M cannot call tools. No `__init__.py` here: `tests` is the core's name.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "langchain" / "tests"))

from scripted_endpoint import (  # noqa: E402
    CLOUD_KEY_ENV,
    ScriptedEndpoint,
    locus,
    scripted_endpoint,
    write_config,
)


@pytest.fixture(scope="session")
def endpoint() -> Iterator[tuple[str, ScriptedEndpoint]]:
    with scripted_endpoint() as served:
        yield served


@pytest.fixture(scope="session")
def zoned_config(
    endpoint: tuple[str, ScriptedEndpoint], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A strong, keyed cloud locus (128k window) beside a tiny on-prem one (32k; capability 0,
    below every floor, so work goes to the cloud whenever the policy allows it). Session-wide, so
    the tests share one Router (analyser loading costs about a second)."""
    os.environ[CLOUD_KEY_ENV] = "sk-loopback"
    base_url = endpoint[0]
    loci = [
        locus("cloud", "cloud", base_url, context_window=128000),
        locus("onprem", "onprem", base_url, capability=0, context_window=32768),
    ]
    return write_config(tmp_path_factory.mktemp("zoned") / "locus.yaml", loci)

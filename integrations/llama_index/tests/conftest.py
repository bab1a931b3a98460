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
from typing import Any

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "langchain" / "tests"))

from scripted_endpoint import ScriptedEndpoint, scripted_endpoint  # noqa: E402

CLOUD_KEY_ENV = "LOCUS_LLAMA_INDEX_TEST_CLOUD_KEY"


@pytest.fixture(scope="session")
def endpoint() -> Iterator[tuple[str, ScriptedEndpoint]]:
    with scripted_endpoint() as served:
        yield served


@pytest.fixture
def zoned_config(
    endpoint: tuple[str, ScriptedEndpoint], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A strong, keyed cloud locus (128k window) beside a tiny on-prem one (32k; capability 0,
    below every floor, so work goes to the cloud whenever the policy allows it)."""
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-loopback")
    base_url = endpoint[0] + "/v1"
    common: dict[str, Any] = {"api_base": base_url, "timeout_s": 10.0, "max_retries": 0}
    loci = [
        {
            "name": "cloud",
            "zone": "cloud",
            "model": "openai/scripted-cloud",
            "capability": 6,
            "context_window": 128000,
            "usd_per_mtok_in": 2.5,
            "usd_per_mtok_out": 10.0,
            "api_key_env": CLOUD_KEY_ENV,
            **common,
        },
        {
            "name": "onprem",
            "zone": "onprem",
            "model": "hosted_vllm/scripted-onprem",
            "capability": 0,
            "context_window": 32768,
            "usd_per_mtok_in": 0.2,
            "usd_per_mtok_out": 0.2,
            **common,
        },
    ]
    path = tmp_path / "locus.yaml"
    # Pattern-only sensitivity detection: e-mail addresses need no NER model.
    path.write_text(
        yaml.safe_dump(
            {
                "loci": loci,
                "sensitivity": {"ner": "none"},
                "decision_log": str(tmp_path / "decisions.jsonl"),
            }
        )
    )
    return path

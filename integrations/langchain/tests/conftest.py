"""Fixtures: the scripted stand-in for a vLLM endpoint, and locus configs whose loci point at it.

No `__init__.py` here: the repository's own `tests` package owns that name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from scripted_endpoint import ScriptedEndpoint, scripted_endpoint  # noqa: E402

CLOUD_KEY_ENV = "LOCUS_LANGCHAIN_TEST_CLOUD_KEY"


@pytest.fixture(scope="session")
def endpoint() -> Iterator[tuple[str, ScriptedEndpoint]]:
    with scripted_endpoint() as served:
        yield served


def locus(name: str, zone: str, base_url: str, **overrides: Any) -> dict[str, Any]:
    """A locus on the scripted endpoint; the model string names the locus, as vLLM's would."""
    spec: dict[str, Any] = {
        "name": name,
        "zone": zone,
        "model": f"hosted_vllm/scripted-{name}",
        "api_base": base_url + "/v1",
        "capability": {"device": 1, "onprem": 3, "cloud": 6}[zone],
        "context_window": 32768,
        "usd_per_mtok_in": {"device": 0.0, "onprem": 0.2, "cloud": 2.5}[zone],
        "usd_per_mtok_out": {"device": 0.0, "onprem": 0.2, "cloud": 10.0}[zone],
        "timeout_s": 10.0,
        "max_retries": 0,
    }
    if zone == "cloud":
        spec["model"] = f"openai/scripted-{name}"
        spec["api_key_env"] = CLOUD_KEY_ENV
    spec.update(overrides)
    return spec


def write_config(path: Path, loci: list[dict[str, Any]]) -> Path:
    """A locus config file; the sensitivity detector runs on patterns only (no NER model needed:
    the entities these tests use, e-mail addresses and tax file numbers, are pattern-found)."""
    data = {
        "loci": loci,
        "decision_log": str(path.with_suffix(".jsonl")),
        "sensitivity": {"ner": "none"},
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def scripted_config(
    endpoint: tuple[str, ScriptedEndpoint], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Two on-prem loci (a strong one and a small one) on the scripted endpoint."""
    base_url, _ = endpoint
    return write_config(
        tmp_path_factory.mktemp("locus") / "locus.yaml",
        [locus("onprem", "onprem", base_url), locus("edge", "onprem", base_url, capability=1)],
    )


@pytest.fixture
def zoned_config(
    endpoint: tuple[str, ScriptedEndpoint], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A strong, keyed cloud locus beside a tiny on-prem one (capability 0: below every floor, so
    work goes to the cloud whenever the policy allows it), both on the scripted endpoint."""
    monkeypatch.setenv(CLOUD_KEY_ENV, "sk-loopback")
    base_url, _ = endpoint
    return write_config(
        tmp_path / "zoned.yaml",
        [locus("cloud", "cloud", base_url), locus("onprem", "onprem", base_url, capability=0)],
    )

"""Fixtures: the scripted stand-in for a vLLM endpoint, and locus configs whose loci point at it.

No `__init__.py` here: the repository's own `tests` package owns that name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

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
def scripted_config(
    endpoint: tuple[str, ScriptedEndpoint], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Two on-prem loci (a strong one and a small one) on the scripted endpoint. The small one
    costs a little more, so that cost alone picks `onprem` for an unpinned call: at equal prices
    the measured latencies of earlier calls would break the tie, and those vary run to run."""
    base_url, _ = endpoint
    edge = locus(
        "edge", "onprem", base_url, capability=1, usd_per_mtok_in=0.3, usd_per_mtok_out=0.3
    )
    return write_config(
        tmp_path_factory.mktemp("locus") / "locus.yaml", [locus("onprem", "onprem", base_url), edge]
    )


@pytest.fixture(scope="session")
def zoned_config(
    endpoint: tuple[str, ScriptedEndpoint], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A strong, keyed cloud locus beside a tiny on-prem one (capability 0: below every floor, so
    work goes to the cloud whenever the policy allows it), both on the scripted endpoint.

    Session-wide, so the tests share one Router (analyser loading costs about a second)."""
    os.environ[CLOUD_KEY_ENV] = "sk-loopback"
    base_url, _ = endpoint
    return write_config(
        tmp_path_factory.mktemp("zoned") / "zoned.yaml",
        [locus("cloud", "cloud", base_url), locus("onprem", "onprem", base_url, capability=0)],
    )

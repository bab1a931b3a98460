"""examples/agent_sensitive_tool.py, run offline: the tool's personal data keeps turn two on-prem."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ToolMessage

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "agent_sensitive_tool.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_sensitive_tool", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_call_that_carries_the_tool_result_runs_on_prem(example: ModuleType) -> None:
    seen: list[dict[str, Any]] = []
    with example.offline_config(seen) as config:
        messages = example.run_agent(config)
    turns = [m for m in messages if isinstance(m, AIMessage)]
    assert len(turns) == 2
    first, second = (turn.response_metadata["locus"] for turn in turns)
    assert (first["locus"], first["data_class"]) == ("cloud", "PUBLIC")
    assert turns[0].tool_calls[0]["args"] == {"customer_id": 4512}
    (result,) = [m for m in messages if isinstance(m, ToolMessage)]
    assert "jane.citizen@example.com" in result.text
    assert (second["locus"], second["data_class"]) == ("onprem", "CONFIDENTIAL")
    assert second["denied"]["cloud"] == ["data class CONFIDENTIAL may not leave for zone cloud"]
    assert "jane.citizen@example.com" in turns[1].text
    # What crossed the wire: the record went to the on-prem model only.
    assert [p["model"] for p in seen] == ["frontier-model", "llama-3-8b"]
    assert "example.com" not in json.dumps(seen[0])
    assert "jane.citizen@example.com" in json.dumps(seen[1])


def test_main_prints_the_route_of_each_turn(
    example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert example.main([]) == 0
    out = capsys.readouterr().out
    assert "turn 1: PUBLIC       -> cloud (cloud) calls lookup_customer" in out
    assert "turn 2: CONFIDENTIAL -> onprem (onprem) answers" in out
    assert "carried the e-mail address: 0" in out

"""LocusConfig: files, the Python API, environment overrides, and errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from locus_llm.cli import main
from locus_llm.config import PACKAGED_BUNDLE, config_from_dict, default_config, load_config
from locus_llm.errors import ConfigError

GOOD = """
loci:
  - name: laptop
    zone: device
    model: locus-onnx/smollm2
    capability: 1
  - name: gpu-rack
    zone: onprem
    model: hosted_vllm/llama-3-8b
    api_base: http://127.0.0.1:8001/v1
    capability: 3
    usd_per_mtok_in: 0.05
    usd_per_mtok_out: 0.05
  - name: frontier
    zone: cloud
    model: openai/gpt-4o
    api_key_env: LOCUS_TEST_FRONTIER_KEY
    capability: 5
policy:
  bundle: mybundle
  data:
    routing_settings:
      redact_zones: [cloud]
objective: latency
decision_log: logs/decisions.jsonl
"""


def test_yaml_config_loads_with_prices_from_the_cost_map(tmp_path: Path):
    path = tmp_path / "locus.yaml"
    path.write_text(GOOD)
    config = load_config(path)
    assert [lo.name for lo in config.loci] == ["laptop", "gpu-rack", "frontier"]
    frontier = config.locus("frontier")
    assert frontier.usd_per_mtok_in == pytest.approx(2.5)  # LiteLLM's map for gpt-4o
    assert frontier.usd_per_mtok_out == pytest.approx(10.0)
    assert config.locus("gpu-rack").usd_per_mtok_in == 0.05
    assert config.policy.bundle == tmp_path / "mybundle"  # relative to the file
    assert config.decision_log == tmp_path / "logs" / "decisions.jsonl"
    assert config.objective == "latency"


def test_toml_and_python_api(tmp_path: Path):
    path = tmp_path / "locus.toml"
    path.write_text('[[loci]]\nname = "d"\nzone = "device"\nmodel = "locus-onnx/smollm2"\n')
    assert load_config(path).loci[0].name == "d"
    config = config_from_dict({"loci": [{"name": "x", "zone": "onprem", "model": "m/x"}]})
    assert config.policy.bundle == PACKAGED_BUNDLE


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "loci:\n  - name: a\n    zone: clod\n    model: m\n",
            "loci.a.zone: expected 'device', 'onprem' or 'cloud', got 'clod'",
        ),
        (
            "loci:\n  - name: a\n    zone: device\n    model: m\n    capabilty: 3\n",
            "loci.a.capabilty: unknown field",
        ),
        ("loci:\n  - name: a\n    zone: device\n", "loci.a.model: Field required"),
        ("loci: []\n", "loci: Value error, at least one locus is required"),
        (
            "loci:\n  - {name: a, zone: device, model: m}\n  - {name: a, zone: cloud, model: n}\n",
            "repeated: ['a']",
        ),
        ("loci: [\n", "not valid"),
        ("- just a list\n", "expected a mapping"),
        (
            "loci:\n  - {name: a, zone: device, model: m, context_window: -5}\n",
            "loci.a.context_window",
        ),
    ],
)
def test_config_errors_name_file_field_and_expectation(tmp_path: Path, text: str, fragment: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert fragment in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "locus.yaml"
    path.write_text(GOOD)
    monkeypatch.setenv("LOCUS_CONFIG", str(path))
    monkeypatch.setenv("LOCUS_DECISION_LOG", str(tmp_path / "elsewhere.jsonl"))
    config = load_config()
    assert config.loci[0].name == "laptop"
    assert config.decision_log == tmp_path / "elsewhere.jsonl"


def test_default_config_is_the_device_only():
    config = default_config()
    assert [(lo.name, lo.zone) for lo in config.loci] == [("device", "device")]
    assert config.loci[0].model == "locus-onnx/smollm2"


def test_cli_reports_config_errors_in_one_line(tmp_path: Path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("loci:\n  - name: a\n    zone: clod\n    model: m\n")
    assert main(["route", "--config", str(path), "hello"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "loci.a.zone" in err
    assert "Traceback" not in err

"""The `locus` command line: route, chat, analyze, errors as one line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from locus_llm.cli import main
from tests.conftest import KEY_ENV, locus_spec
from tests.fault_server import FaultServer, ok


@pytest.fixture
def config_file(server: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    path = tmp_path / "locus.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "loci": [
                    locus_spec("rack", "onprem", server),
                    locus_spec("cloud", "cloud", server),
                ],
                "decision_log": str(tmp_path / "log.jsonl"),
            }
        )
    )
    return path


def test_route_json_has_the_documented_keys(config_file: Path, capsys, server: FaultServer):
    assert (
        main(
            [
                "route",
                "--json",
                "--config",
                str(config_file),
                "--label",
                "CONFIDENTIAL",
                "What is a river?",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert {"locus", "zone", "allowed", "denied", "profile", "scores", "policy_revision"} <= set(
        out
    )
    assert out["locus"] == "rack" and "cloud" in out["denied"]
    assert server.requests == []  # route sends nothing


def test_route_table_shows_every_locus_and_the_choice(config_file: Path, capsys):
    assert main(["route", "--config", str(config_file), "--label", "CONFIDENTIAL", "hi"]) == 0
    out = capsys.readouterr().out
    assert "CHOSEN" in out and "denied" in out and "may not leave for zone cloud" in out


def test_chat_streams_the_answer(config_file: Path, capsys, server: FaultServer):
    server.script("rack", [ok("streamed to the terminal")])
    assert main(["chat", "--config", str(config_file), "--locus", "rack", "hello"]) == 0
    captured = capsys.readouterr()
    assert "streamed to the terminal" in captured.out
    assert "rack (onprem)" in captured.err


def test_chat_on_a_denied_locus_is_one_clear_line(config_file: Path, capsys, server: FaultServer):
    code = main(
        ["chat", "--config", str(config_file), "--locus", "cloud", "--label", "RESTRICTED", "hello"]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1
    assert server.requests == []


def test_analyze_jsonl(config_file: Path, capsys, monkeypatch):
    lines = [
        {"id": "a", "prompt": "Write a Python function that reverses a list."},
        {"id": "b", "prompt": "Email me at jane@example.com about TFN 123 456 782."},
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(json.dumps(x) for x in lines)))
    assert main(["analyze", "--jsonl", "--config", str(config_file)]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [o["id"] for o in out] == ["a", "b"]
    for o in out:
        assert {
            "task",
            "task_scores",
            "difficulty",
            "data_class",
            "entities",
            "tokens_in",
            "ms",
        } <= set(o)
        for entity in o["entities"]:
            assert set(entity) == {"type", "start", "end", "score"}
    assert out[1]["data_class"] in {"CONFIDENTIAL", "RESTRICTED"}


def test_analyze_rejects_a_bad_line(capsys, monkeypatch, config_file: Path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("not json\n"))
    assert main(["analyze", "--jsonl", "--config", str(config_file)]) == 1
    assert "stdin line 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["route"], ["policy"], ["models"]])
def test_help_and_usage_never_trace(command: list[str]):
    result = subprocess.run(
        [sys.executable, "-m", "locus_llm.cli", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "usage:" in result.stdout
    assert "Traceback" not in result.stderr

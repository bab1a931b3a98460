"""`locus bench` against a real OpenAI-compatible server on loopback, and the router using its file.

The scripted server (tests/fault_server.py) delays the first token of one locus; the bench must see
it, write it to the profile file, and a Router started with `profiles:` must then route around it.
The analyzer is the real one (the session's): when its models are missing every prompt is
RESTRICTED, which is why the loopback loci here are in the device zone — the bench must work
either way.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from locus_llm.bench import (
    BenchError,
    format_table,
    percentile,
    read_prompts,
    run_bench,
    write_profiles,
)
from locus_llm.cli import main
from locus_llm.config import config_from_dict
from locus_llm.router import Router
from tests.fault_server import FaultServer, ok, status

ANSWER = "a steady answer sent one word at a time by the loopback server"
WORDS = len(ANSWER.split())
SLOW_FIRST_TOKEN_S = 1.0  # far beyond any noise on a loaded machine
ASK = [{"role": "user", "content": "Name one planet of the solar system."}]


def device_locus(name: str, server: FaultServer, **overrides: Any) -> dict[str, Any]:
    spec = {
        "name": name,
        "zone": "device",
        "model": f"hosted_vllm/{name}",
        "api_base": server.url + "/v1",
        "capability": 1,
        "timeout_s": 5.0,
        "usd_per_mtok_in": 0.0,
        "usd_per_mtok_out": 0.0,
        # the priors say both are quick: only a measurement can tell them apart
        "expected_ttft_ms": 20.0,
        "expected_tokens_per_s": 1000.0,
    }
    spec.update(overrides)
    return spec


def two_loci(server: FaultServer) -> list[dict[str, Any]]:
    """`sluggish` is free but slow to start; `quick` costs a little and answers at once."""
    server.script("quick", [ok(ANSWER)])
    server.script("sluggish", [ok(ANSWER, first_token_delay_s=SLOW_FIRST_TOKEN_S)])
    return [
        device_locus("sluggish", server),
        device_locus("quick", server, usd_per_mtok_in=1.0, usd_per_mtok_out=2.0),
    ]


@pytest.fixture
def measured(server: FaultServer, analyzer, tmp_path: Path) -> tuple[dict[str, Any], Path, list]:
    loci = two_loci(server)
    document = run_bench(
        config_from_dict({"loci": loci}),
        requests=6,
        concurrency=3,
        max_tokens=32,
        analyzer=analyzer,
    )
    path = tmp_path / "profiles.json"
    write_profiles(document, path)
    return document, path, loci


def test_bench_measures_each_locus_and_writes_the_profile_file(measured, server: FaultServer):
    document, path, _ = measured
    written = json.loads(path.read_text())
    assert written == document
    datetime.fromisoformat(written["measured_at"])
    assert set(written["loci"]) == {"sluggish", "quick"} and written["skipped"] == {}
    slow, quick = written["loci"]["sluggish"], written["loci"]["quick"]
    for entry in (slow, quick):
        assert entry["samples"] == 6 and entry["requests"] == 6
        assert entry["error_rate"] == 0.0 and entry["errors"] == {}
        assert entry["tokens_out"] == 6 * WORDS  # the server's usage: one token a word
        assert entry["tokens_per_s"] > 0
        assert entry["p50_ttft_ms"] <= entry["p95_ttft_ms"]
        assert entry["p50_ttft_ms"] <= entry["p50_latency_ms"] <= entry["p95_latency_ms"]
        datetime.fromisoformat(entry["measured_at"])
    assert slow["p50_ttft_ms"] >= SLOW_FIRST_TOKEN_S * 1000
    assert quick["p50_ttft_ms"] < slow["p50_ttft_ms"] - 200
    assert quick["usd_per_mtok_in"] == 1.0 and quick["usd_per_mtok_out"] == 2.0
    expected = (quick["tokens_in"] * 1.0 + quick["tokens_out"] * 2.0) / 1e6
    assert quick["cost_usd"] == pytest.approx(expected, rel=1e-3)
    # one warm-up request per locus, then the measured ones; each sent exactly once (no retries)
    assert server.calls("sluggish") == 7 and server.calls("quick") == 7
    table = format_table(document)
    assert "sluggish" in table and "quick" in table and "ttft p50" in table


def test_router_started_with_the_profiles_uses_them_and_routes_around_the_slow_locus(
    measured, analyzer
):
    document, path, loci = measured
    budget = {"latency_budget_ms": 700}  # the slow locus measures >= 1,000 ms to its first token

    guessing = Router(config_from_dict({"loci": loci}), analyzer=analyzer)
    assert all(not view["measured"] for view in guessing.loci_view().values())
    before = guessing.route(ASK, budget, max_tokens=1)
    assert before.plan.primary == "sluggish"  # free, and the prior says it is quick

    informed = Router(config_from_dict({"loci": loci, "profiles": str(path)}), analyzer=analyzer)
    view = informed.loci_view()
    for name in ("sluggish", "quick"):
        assert view[name]["measured"] is True
        assert view[name]["p50_ttft_ms"] == document["loci"][name]["p50_ttft_ms"]
        assert view[name]["tokens_per_s"] == document["loci"][name]["tokens_per_s"]
    after = informed.route(ASK, budget, max_tokens=1)
    assert after.plan.primary == "quick"
    assert after.plan.loci == ["quick"]
    assert "over budget" in after.policy.denied["sluggish"][0]
    assert after.plan.scores["quick"].measured is True
    # without a budget the free locus still wins: the measurement informs, the objective decides
    assert informed.route(ASK, max_tokens=16).plan.primary == "sluggish"


def test_each_failure_counts_once_and_only_successes_are_timed(server: FaultServer, analyzer):
    server.script("flaky", [ok(ANSWER), status(503), ok(ANSWER), status(503), ok(ANSWER)])
    config = config_from_dict({"loci": [device_locus("flaky", server, max_retries=3)]})
    document = run_bench(config, requests=4, concurrency=1, warmup=1, analyzer=analyzer)
    entry = document["loci"]["flaky"]
    assert server.calls("flaky") == 5  # warm-up + 4, never a retry despite max_retries: 3
    assert entry["samples"] == 2 and entry["requests"] == 4
    assert sum(entry["errors"].values()) == 2 and entry["error_rate"] == 0.5
    assert "flaky: errors:" in format_table(document)


def test_a_locus_the_policy_denies_is_not_measured_and_says_why(
    server: FaultServer, analyzer, monkeypatch
):
    monkeypatch.delenv("LOCUS_BENCH_TEST_KEY", raising=False)
    server.script("quick", [ok(ANSWER)])
    cloud = {
        "name": "cloud",
        "zone": "cloud",
        "model": "openai/cloud",
        "api_base": server.url + "/v1",
        "api_key_env": "LOCUS_BENCH_TEST_KEY",
    }
    config = config_from_dict({"loci": [device_locus("quick", server), cloud]})
    document = run_bench(config, requests=2, analyzer=analyzer)
    assert list(document["loci"]) == ["quick"]
    assert "no credentials" in document["skipped"]["cloud"]
    assert server.calls("cloud") == 0
    assert "cloud: not measured: denied by policy" in format_table(document)


def test_prompts_the_policy_refuses_are_counted_apart_from_errors(server: FaultServer, analyzer):
    """The policy's context-window rule refuses `small` the long prompt only (a roomier locus
    exists, so the router's own fits-nowhere check does not fire): `small` is measured on the
    rest, and a run of long prompts only leaves it unmeasured, with the policy's reason."""
    server.script("small", [ok(ANSWER)])
    loci = [
        device_locus("small", server, context_window=300),
        device_locus("roomy", server, context_window=32768),
    ]
    config = config_from_dict({"loci": loci})
    prompts = ["Name a colour.", "alpha beta gamma delta " * 100]
    document = run_bench(
        config,
        loci=["small"],
        prompts=prompts,
        requests=4,
        warmup=0,
        max_tokens=32,
        analyzer=analyzer,
    )
    entry = document["loci"]["small"]
    assert entry["requests"] == 4 and entry["denied"] == 2 and entry["samples"] == 2
    assert entry["error_rate"] == 0.0
    assert server.calls("small") == 2 and server.calls("roomy") == 0
    assert "small: 2 prompt(s) denied by policy, not sent" in format_table(document)
    refused = run_bench(config, loci=["small"], prompts=prompts[1:], requests=2, analyzer=analyzer)
    assert refused["loci"] == {}
    assert refused["skipped"]["small"].startswith("denied by policy")
    assert "context window 300 <" in refused["skipped"]["small"]
    assert server.calls("small") == 2


def test_rewriting_one_locus_keeps_the_others(tmp_path: Path):
    path = tmp_path / "profiles.json"
    old = {
        "format": 1,
        "measured_at": "2026-01-01T00:00:00+00:00",
        "loci": {"a": {"p50_ttft_ms": 10.0}, "b": {"p50_ttft_ms": 20.0}},
    }
    path.write_text(json.dumps(old))
    written = write_profiles(
        {"format": 1, "measured_at": "now", "loci": {"b": {"p50_ttft_ms": 5.0}}, "skipped": {}},
        path,
    )
    assert written["loci"] == {"a": {"p50_ttft_ms": 10.0}, "b": {"p50_ttft_ms": 5.0}}
    assert json.loads(path.read_text()) == written
    path.write_text("[1, 2]")
    with pytest.raises(BenchError, match="not a locus profile file"):
        write_profiles({"loci": {}}, path)


def test_prompt_files_are_read_and_bad_lines_named(tmp_path: Path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "one"}\n\n{"prompt": "two", "id": 7}\n')
    assert read_prompts(good) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "one"}\n{"text": "no prompt key"}\n')
    with pytest.raises(BenchError, match=r"bad.jsonl:2: expected an object"):
        read_prompts(bad)
    with pytest.raises(BenchError, match="cannot read prompts"):
        read_prompts(tmp_path / "missing.jsonl")


def test_cli_errors_are_one_line(tmp_path: Path, server: FaultServer, capsys):
    config = tmp_path / "locus.json"
    config.write_text(json.dumps({"loci": [device_locus("quick", server)]}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    assert main(["bench", "--config", str(config), "--prompts", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {bad}:1: not valid JSON")
    assert main(["bench", "--config", str(config), "--loci", "quick,nowhere"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown locus 'nowhere'") and "Traceback" not in err
    assert main(["bench", "--config", str(config), "--requests", "0"]) == 1
    assert "at least 1" in capsys.readouterr().err
    assert server.calls("quick") == 0


def test_percentile_interpolates_like_numpy():
    assert percentile([], 0.5) is None
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(v) for v in range(1, 101)], 0.95) == pytest.approx(95.05)

"""The embedded Rego policy: the default bundle's rules, hot reload, broken bundles, the runner."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from locus_llm.cli import main
from locus_llm.config import PACKAGED_BUNDLE
from locus_llm.errors import PolicyError
from locus_llm.policy import PolicyEngine
from locus_llm.policy.testing import run_tests


def policy_input(data_class: str = "PUBLIC", **request: object) -> dict:
    loci = {
        "device": {
            "zone": "device",
            "capability": 1,
            "context_window": 8192,
            "healthy": True,
            "credentials": True,
            "p50_ttft_ms": 80,
            "tokens_per_s": 80,
            "usd_per_mtok_in": 0,
            "usd_per_mtok_out": 0,
        },
        "cloud": {
            "zone": "cloud",
            "capability": 5,
            "context_window": 128000,
            "healthy": True,
            "credentials": True,
            "p50_ttft_ms": 400,
            "tokens_per_s": 100,
            "usd_per_mtok_in": 2.5,
            "usd_per_mtok_out": 10,
        },
    }
    req = {
        "task": "open_qa",
        "task_scores": {},
        "difficulty": 0.2,
        "tokens_in": 50,
        "tokens_out_est": 50,
        "data_class": data_class,
        "entities": [],
        "flags": [],
        **request,
    }
    return {"request": req, "context": {"tenant": "t"}, "loci": loci}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(PACKAGED_BUNDLE, folder)
    return folder


def test_packaged_bundle_rego_tests_all_pass():
    results = run_tests(PACKAGED_BUNDLE)
    assert len(results) >= 15
    assert [r.name for r in results if not r.passed] == []


def test_runner_reports_a_failing_rego_test(bundle: Path):
    (bundle / "extra_test.rego").write_text(
        "package locus.routing\nimport rego.v1\n"
        'test_this_fails if { count(allowed) == 99 with input as {"loci": {}} }\n'
    )
    results = {r.name: r for r in run_tests(bundle)}
    assert results["test_this_fails"].passed is False
    assert results["test_public_goes_anywhere"].passed is True


def test_policy_test_command_exit_codes(bundle: Path, capsys):
    assert main(["policy", "test", str(bundle)]) == 0
    # every `test_` rule of the bundle's test files ran and passed
    n = sum(f.read_text().count("\ntest_") for f in bundle.glob("*_test.rego"))
    assert n >= 16
    assert f"PASS: {n}/{n}" in capsys.readouterr().out
    (bundle / "bad_test.rego").write_text(
        "package locus.routing\nimport rego.v1\ntest_bad if { 1 == 2 }\n"
    )
    assert main(["policy", "test", str(bundle)]) == 1
    assert "FAIL bad_test.rego: test_bad" in capsys.readouterr().out


def test_policy_eval_command(tmp_path: Path, capsys):
    path = tmp_path / "input.json"
    path.write_text(json.dumps(policy_input("CONFIDENTIAL")))
    assert main(["policy", "eval", "--input", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["allowed"] == ["device"]
    assert "cloud" in out["denied"]


def test_decision_names_the_bundle_revision(bundle: Path):
    engine = PolicyEngine(bundle)
    decision = engine.evaluate(policy_input())
    assert decision.revision == engine.revision and len(decision.revision) == 16
    assert decision.allowed == ["cloud", "device"]


def test_syntax_error_names_file_and_line(bundle: Path):
    (bundle / "broken.rego").write_text("package locus.routing\nimport rego.v1\n\nx := {\n")
    with pytest.raises(PolicyError, match=r"broken\.rego:\d+"):
        PolicyEngine(bundle)


def test_hot_reload_applies_on_the_next_call(bundle: Path):
    engine = PolicyEngine(bundle)
    before = engine.evaluate(policy_input("INTERNAL"))
    assert "cloud" in before.allowed
    data = json.loads((bundle / "data.json").read_text())
    data["routing_settings"]["zones_by_class"]["INTERNAL"] = ["device"]
    (bundle / "data.json").write_text(json.dumps(data))
    after = engine.evaluate(policy_input("INTERNAL"))
    assert after.allowed == ["device"]
    assert after.revision != before.revision


def test_broken_reload_keeps_the_last_good_bundle(bundle: Path, caplog):
    engine = PolicyEngine(bundle)
    good = engine.revision
    rego = bundle / "routing.rego"
    rego.write_text(rego.read_text() + "\nthis is not rego\n")
    decision = engine.evaluate(policy_input())
    assert decision.revision == good and decision.allowed == ["cloud", "device"]
    assert "routing.rego" in (engine.last_reload_error or "")
    assert "policy reload rejected" in caplog.text


def test_policy_naming_an_unknown_locus_is_an_error(bundle: Path):
    (bundle / "routing.rego").write_text(
        "package locus.routing\nimport rego.v1\n"
        'decision := {"allowed": ["mars"], "denied": {}, "obligations": {}, '
        '"capability_floor": 0}\n'
    )
    engine = PolicyEngine(bundle)
    with pytest.raises(PolicyError, match="unknown locus.*mars"):
        engine.evaluate(policy_input())


def test_undefined_decision_is_an_error(bundle: Path):
    (bundle / "routing.rego").write_text(
        "package locus.routing\nimport rego.v1\ndecision := 1 if { input.never }\n"
    )
    with pytest.raises(PolicyError, match="undefined"):
        PolicyEngine(bundle).evaluate(policy_input())


def test_concurrent_evaluation_during_reloads_never_sees_half_a_bundle(bundle: Path):
    """Threads evaluate while the bundle flips between two versions: every decision matches
    one whole version (its revision and its verdict agree)."""
    engine = PolicyEngine(bundle)
    data_path = bundle / "data.json"
    open_data = json.loads(data_path.read_text())
    closed = json.loads(data_path.read_text())
    closed["routing_settings"]["zones_by_class"]["PUBLIC"] = ["device"]
    verdicts: dict[str, set] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def evaluate() -> None:
        try:
            while not stop.is_set():
                d = engine.evaluate(policy_input())
                verdicts.setdefault(d.revision, set()).add(tuple(d.allowed))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for t in threads:
        t.start()
    for i in range(10):
        data_path.write_text(json.dumps(closed if i % 2 == 0 else open_data))
        time.sleep(0.03)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert len(verdicts) >= 2
    assert all(len(v) == 1 for v in verdicts.values()), verdicts

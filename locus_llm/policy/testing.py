"""`locus policy test`: run a bundle's `test_*` rules like `opa test` (regorus has no runner)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from locus_llm.errors import PolicyError
from locus_llm.policy.engine import _regorus_message, bundle_files, load_bundle

TEST_RULE = re.compile(r"^\s*(test_[A-Za-z0-9_]+)\b", re.MULTILINE)
PACKAGE = re.compile(r"^\s*package\s+([A-Za-z0-9_.]+)", re.MULTILINE)


@dataclass(frozen=True)
class TestResult:
    file: str
    name: str
    passed: bool
    error: str | None = None


def discover(folder: Path) -> list[tuple[str, str, str]]:
    """(file, package, rule) for every test rule in the folder's *.rego files."""
    found = []
    for path in bundle_files(folder, tests=True):
        text = path.read_text(encoding="utf-8")
        package = PACKAGE.search(text)
        if package is None:
            continue
        for name in dict.fromkeys(TEST_RULE.findall(text)):  # ordered, de-duplicated
            found.append((path.name, package.group(1), name))
    return found


def run_tests(folder: Path) -> list[TestResult]:
    bundle = load_bundle(folder, tests=True)
    results = []
    for file, package, name in discover(folder):
        engine = bundle.compile()
        engine.set_input_json("{}")
        try:
            value = engine.eval_rule_as_json(f"data.{package}.{name}")
        except Exception as exc:
            results.append(TestResult(file, name, False, _regorus_message(exc)))
            continue
        passed = value.strip() == "true"
        results.append(TestResult(file, name, passed, None if passed else f"got {value.strip()}"))
    if not results:
        raise PolicyError(f"{folder}: no test_* rules found")
    return results

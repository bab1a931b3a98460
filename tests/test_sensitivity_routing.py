"""End to end: a prompt carrying a checksum-valid TFN never reaches a cloud locus.

Real detector (presidio + our NER), real default policy, real `locus route` command in a
subprocess, and a real completion through LiteLLM to the loopback server of tests/conftest.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import KEY_ENV, locus_spec
from tests.fault_server import FaultServer, ok

TFN_PROMPT = "Please lodge the amended return for Jane Citizen, tax file number 123-456-782."
PLAIN_PROMPT = "Summarise the plot of Hamlet in two sentences."


def _route(config: Path, prompt: str) -> dict:
    env = {**os.environ, KEY_ENV: "sk-test-loopback"}
    done = subprocess.run(
        [sys.executable, "-m", "locus_llm.cli", "route", "--json", "--config", str(config), prompt],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_locus_route_keeps_a_valid_tfn_off_the_cloud(server: FaultServer, tmp_path: Path) -> None:
    # The cloud locus is the most capable and would win on capability alone.
    loci = [
        locus_spec("cloud", "cloud", server, capability=9),
        locus_spec("device", "device", server),
    ]
    config = tmp_path / "locus.json"
    config.write_text(json.dumps({"loci": loci, "decision_log": str(tmp_path / "log.jsonl")}))

    decision = _route(config, TFN_PROMPT)
    assert decision["profile"]["data_class"] == "RESTRICTED"
    assert "AU_TFN" in {e["type"] for e in decision["profile"]["entities"]}
    # the default policy keeps RESTRICTED data on the device
    assert decision["zone"] == "device" and decision["locus"] == "device"
    assert "cloud" not in decision["allowed"] and "cloud" not in decision["plan"]
    assert "cloud" in decision["denied"]
    assert "123-456-782" not in json.dumps(decision)  # values never in the decision
    assert server.calls("cloud") == 0 and server.calls("device") == 0  # route sends nothing


def test_completion_with_a_tfn_never_calls_the_cloud(make_router, server: FaultServer) -> None:
    router = make_router([locus_spec("cloud", "cloud", server, capability=9), "device:device"])
    # the control: without the TFN the policy allows the cloud locus
    assert "cloud" in router.route([{"role": "user", "content": PLAIN_PROMPT}]).policy.allowed
    assert "cloud" in router.route([{"role": "user", "content": TFN_PROMPT}]).policy.denied
    server.script("device", [ok("Lodged.")])
    response = router.completion([{"role": "user", "content": TFN_PROMPT}], max_tokens=10)
    assert response.locus["locus"] == "device"
    assert response.choices[0].message.content == "Lodged."
    assert server.calls("cloud") == 0

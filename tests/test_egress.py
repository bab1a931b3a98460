"""No egress: importing locus, analysing, deciding and answering on the device open no connection;
dispatch connects only to the chosen locus's address. Checked with an audit hook in a fresh
interpreter (audit hooks cannot be removed, so they never run inside the test process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fault_server import FaultServer, ok

ROOT = Path(__file__).resolve().parents[1]

HOOK = textwrap.dedent("""
    import json, sys
    events = []
    def hook(event, args):
        if event == "socket.connect":
            events.append(["connect", repr(args[1])])
        elif event == "socket.getaddrinfo":
            events.append(["getaddrinfo", repr(args[0])])
        elif event == "urllib.Request":
            events.append(["urllib", repr(args[0])])
    sys.addaudithook(hook)
""")


def run_script(body: str, env: dict[str, str] | None = None) -> list[list[str]]:
    script = HOOK + textwrap.dedent(body) + "\nprint('EVENTS=' + json.dumps(events))\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("EVENTS=")][-1]
    return json.loads(line.removeprefix("EVENTS="))


def test_import_analyse_decide_and_answer_on_device_open_no_connection():
    from locus_llm.local import models

    if not models.is_prepared():
        pytest.fail("the default model is not prepared: run `locus models prepare smollm2`")
    events = run_script("""
        import locus_llm
        from locus_llm import Router
        router = Router.default()
        router.analyze("My TFN is 123 456 782, email a@b.co")
        decision = router.route("Summarise: rivers flow to the sea.")
        assert decision.locus == "device"
        response = router.completion("Say hello.", max_tokens=4)
        assert response.locus["locus"] == "device"
    """)
    assert events == []


def test_dispatch_connects_only_to_the_chosen_locus():
    with FaultServer() as server:
        server.script("rack", [ok("hi")])
        port = server.url.rsplit(":", 1)[1]
        events = run_script(f"""
            from locus_llm import Router
            from locus_llm.config import config_from_dict
            router = Router(config_from_dict({{"loci": [
                {{"name": "rack", "zone": "onprem", "model": "hosted_vllm/rack",
                  "api_base": "{server.url}/v1"}},
                {{"name": "other", "zone": "onprem", "model": "hosted_vllm/other",
                  "api_base": "http://127.0.0.2:9/v1", "capability": 0}},
            ]}}))
            response = router.completion("Say hello.", max_tokens=4,
                                         context={{"data_label": "INTERNAL"}})
            assert response.locus["locus"] == "rack", response.locus
        """)
    connects = [e for e in events if e[0] == "connect"]
    assert connects, events
    assert all(f"'127.0.0.1', {port})" in e[1] for e in connects), events
    assert not [e for e in events if e[0] == "urllib"]


def test_hiding_torch_from_presidio_never_hides_it_from_transformers():
    """torch stays out of the analyzer's load, yet the caller's own transformers models work."""
    pytest.importorskip("torch")
    events = run_script("""
        import sys
        from locus_llm.analysis import Analyzer
        analyzer = Analyzer()
        analyzer.warm()
        assert analyzer._detector is not None, analyzer._detector_error
        assert sys.modules.get("torch") is None, "presidio pulled torch in"
        from transformers import LlamaConfig, LlamaForCausalLM
        LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2,
                                     vocab_size=50))
    """)
    assert events == []

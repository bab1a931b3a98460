"""`locus demo`: a few prompts routed and answered on this machine, no keys and no servers needed.

Three loci: the on-device ONNX model; an "on-prem" OpenAI-compatible server (our own `locus serve`
on loopback, standing in for vLLM); and a cloud locus that is only used if its key is set
(LOCUS_DEMO_OPENAI_KEY) — without it the policy denies it with "no credentials", which is the point
of showing it: nothing leaves the machine unless configured to.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from locus_llm.cli import render_decision
from locus_llm.config import config_from_dict
from locus_llm.router import Router

PROMPTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "a summary",
        "Summarise in one sentence: The meeting moved to Tuesday because the venue "
        "flooded; catering is unchanged and the agenda is the same.",
        {},
    ),
    (
        "a maths problem",
        "A shop sells pens at $3 each. Tom buys 4 pens and pays with a $20 note. "
        "How much change does he get?",
        {},
    ),
    (
        "customer data",
        "Draft a short reply to jane.citizen@example.com confirming we updated "
        "her tax file number 123 456 782 in our records.",
        {},
    ),
    (
        "labelled confidential by the caller",
        "List three risks of launching a product early.",
        {"data_label": "CONFIDENTIAL"},
    ),
]


def demo_config(onprem_url: str, log_path: Path) -> dict[str, Any]:
    return {
        "loci": [
            {
                "name": "laptop",
                "zone": "device",
                "model": "locus-onnx/smollm2",
                "capability": 1,
                "context_window": 8192,
                "usd_per_mtok_in": 0,
                "usd_per_mtok_out": 0,
                "expected_ttft_ms": 60,
                "expected_tokens_per_s": 100,
            },
            {
                "name": "gpu-rack",
                "zone": "onprem",
                "model": "hosted_vllm/smollm2",
                "api_base": onprem_url + "/v1",
                "capability": 2,
                "context_window": 8192,
                "usd_per_mtok_in": 0.05,
                "usd_per_mtok_out": 0.05,
                "expected_ttft_ms": 80,
                "expected_tokens_per_s": 100,
            },
            {
                "name": "frontier",
                "zone": "cloud",
                "model": "openai/gpt-4o-mini",
                "capability": 5,
                "context_window": 128000,
                "api_key_env": "LOCUS_DEMO_OPENAI_KEY",
            },
        ],
        "decision_log": str(log_path),
    }


def run_demo(max_tokens: int = 48, out: Any = None) -> int:
    from locus_llm.local import models
    from locus_llm.server import ServerThread, create_app

    out = out or sys.stdout
    model = models.load("smollm2")  # names `locus models prepare smollm2` if missing
    log_path = Path(tempfile.mkdtemp(prefix="locus-demo-")) / "decisions.jsonl"
    with ServerThread(create_app({"smollm2": model})) as onprem_url:
        router = Router(config_from_dict(demo_config(onprem_url, log_path)))
        print(
            f"on-prem stand-in: `locus serve` on {onprem_url}; cloud key set: "
            f"{bool(os.environ.get('LOCUS_DEMO_OPENAI_KEY'))}\n",
            file=out,
        )
        for title, prompt, context in PROMPTS:
            messages = [{"role": "user", "content": prompt}]
            print(f"=== {title}{' ' + str(context) if context else ''}\n> {prompt}\n", file=out)
            print(render_decision(router.route(messages, context).to_dict()), file=out)
            stream = router.completion(
                messages, context=context, stream=True, max_tokens=max_tokens, temperature=0
            )
            print("\nanswer: ", end="", file=out)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    print(chunk.choices[0].delta.content, end="", file=out, flush=True)
            info = stream.locus or {}
            print(
                f"\n[ran on {info.get('locus')} ({info.get('zone')}); "
                f"{(info.get('usage') or {}).get('completion_tokens')} tokens; "
                f"${info.get('cost_usd', 0):.6f}]\n",
                file=out,
            )
        print(f"decision log ({log_path}), one line per call, no prompt text:", file=out)
        for line in log_path.read_text().splitlines():
            print("  " + line[:200] + ("…" if len(line) > 200 else ""), file=out)
    return 0

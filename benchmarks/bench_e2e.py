"""End to end against one loopback server: plain LiteLLM, ChatLiteLLM, our Router, our ChatLocus.

    .venv/bin/python benchmarks/bench_e2e.py [--calls 200]

The same OpenAI-compatible server (tests/fault_server.py, answering at once, so what is measured
is the client side) and the same prompts for all four paths; every round runs the four paths
once, in a rotating order, so machine noise hits all alike. Prompts are real task prompts from
../shared/data/task_prompts/train.jsonl (at most 100 words). The Router and ChatLocus paths
include the full decision with the REAL analyzer (classifier + sensitivity); the output says
which analyzers were active and how much of the Router's time was analysis.

The loopback locus is in the device zone: if an analyzer cannot load, the router fails closed to
RESTRICTED, which only the device zone may take — the benchmark then still runs (and says so).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "integrations" / "langchain"))

from locus_llm.config import config_from_dict  # noqa: E402
from locus_llm.dispatch import litellm_module  # noqa: E402
from locus_llm.router import Router  # noqa: E402
from tests.fault_server import FaultServer, ok  # noqa: E402

PROMPTS = ROOT.parent / "shared" / "data" / "task_prompts" / "train.jsonl"
ANSWER = "a short answer of a few words"
MAX_TOKENS = 16


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def load_prompts(path: Path, count: int, max_words: int = 100) -> list[str]:
    prompts = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            prompt = json.loads(line)["prompt"]
            if len(prompt.split()) <= max_words:
                prompts.append(prompt)
            if len(prompts) == count:
                break
    return prompts


def build_paths(
    server: FaultServer, router: Router
) -> tuple[dict[str, Callable[[str], Any]], dict[str, str]]:
    """The four ways of making the same call; the notes say what was unavailable."""
    litellm = litellm_module()
    api_base = server.url + "/v1"
    notes: dict[str, str] = {}

    def plain(prompt: str) -> Any:
        return litellm.completion(
            model="hosted_vllm/m",
            api_base=api_base,
            max_retries=0,
            timeout=10,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": prompt}],
        )

    def routed(prompt: str) -> Any:
        return router.completion([{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS)

    paths: dict[str, Callable[[str], Any]] = {"litellm": plain}
    try:
        from langchain_litellm import ChatLiteLLM

        chat_litellm = ChatLiteLLM(
            model="hosted_vllm/m",
            api_base=api_base,
            max_retries=0,
            request_timeout=10,
            max_tokens=MAX_TOKENS,
        )
        paths["ChatLiteLLM"] = chat_litellm.invoke
    except ImportError as exc:
        notes["ChatLiteLLM"] = f"not measured: {exc}"
    paths["Router"] = routed
    try:
        from langchain_locus import ChatLocus

        chat_locus = ChatLocus(router=router, max_tokens=MAX_TOKENS)
        paths["ChatLocus"] = chat_locus.invoke
    except ImportError as exc:
        notes["ChatLocus"] = f"not measured (langchain_locus not importable): {exc}"
    return paths, notes


def active_analyzers(router: Router) -> dict[str, str]:
    profile = router.route([{"role": "user", "content": "Say hello."}]).profile
    state = {"classifier": "active", "sensitivity": "active"}
    for error in profile.errors:
        stage, _, reason = error.partition(": ")
        state[stage] = f"INACTIVE (fails closed): {reason}"
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="rounds (each path once a round)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.prompts.exists():
        print(f"error: {args.prompts}: prompt data not found (see ../shared/data)", file=sys.stderr)
        return 1
    prompts = load_prompts(args.prompts, 200)
    with FaultServer() as server:
        server.script("m", [ok(ANSWER)])
        loci = [
            {
                "name": "m",
                "zone": "device",
                "model": "hosted_vllm/m",
                "api_base": server.url + "/v1",
                "usd_per_mtok_in": 0.0,
                "usd_per_mtok_out": 0.0,
                "timeout_s": 10.0,
                "max_retries": 0,
            }
        ]
        router = Router(config_from_dict({"loci": loci}))
        router.warm()
        analyzers = active_analyzers(router)
        paths, notes = build_paths(server, router)
        names = list(paths)
        for i in range(args.warmup):  # connection pools, pydantic and LangChain caches
            for name in names:
                paths[name](prompts[i % len(prompts)])
        times: dict[str, list[float]] = {name: [] for name in names}
        analysis: list[float] = []
        for i in range(args.calls):
            prompt = prompts[i % len(prompts)]
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                start = time.perf_counter()
                paths[name](prompt)
                times[name].append((time.perf_counter() - start) * 1000)
                if name == "Router":
                    analysis.append(router.log.tail(1)[0]["timings_ms"]["analyze"])
    base = statistics.median(times["litellm"])
    result = {
        "analyzers": analyzers,
        "not_measured": notes,
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "rounds": args.calls,
        "prompt_words_mean": round(statistics.mean(len(p.split()) for p in prompts), 1),
        "p50_ms": {name: round(statistics.median(v), 3) for name, v in times.items()},
        "p99_ms": {name: round(pct(v, 0.99), 3) for name, v in times.items()},
        "ratio_p50_vs_litellm": {
            name: round(statistics.median(v) / base, 3) for name, v in times.items()
        },
        "router_analysis_p50_ms": round(statistics.median(analysis), 3),
        "router_minus_analysis_p50_ms": round(
            statistics.median([t - a for t, a in zip(times["Router"], analysis, strict=True)]), 3
        ),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

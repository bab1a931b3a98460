"""The decision alone — analyze (classifier + sensitivity) + policy + select — at four prompt sizes.

    .venv/bin/python benchmarks/bench_decision.py [--calls 300] [--sizes 20,100,1000,5000] [--ner none]

`Router.route()` with the REAL analyzer (the packaged router classifier and the sensitivity
detector), the default policy bundle (hot reload on, as shipped) and three loci. Nothing is sent.
Prompts are real and varied: task prompts from ../shared/data/task_prompts/train.jsonl, joined
until each reaches the word count, so no two timed calls see the same text. Reported per size:
p50/p99 of one decision, the stages inside it, and decisions per second sequentially, with
one thread per core sharing one router, and with one router per core in worker processes (as
replicas run). If an analyzer cannot load, the router fails closed (unknown task /
RESTRICTED) and that stage costs almost nothing: the output says which analyzers were active, so
a figure is never read as the cost of an analyzer that did not run.

Targets (issue 8): at 100 words p50 <= 10 ms, p99 <= 25 ms, >= 200 decisions/s; at 1,000 words
p50 <= 60 ms.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locus_llm.config import config_from_dict  # noqa: E402
from locus_llm.router import Router  # noqa: E402

PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "task_prompts" / "train.jsonl"
KEY_ENV = "LOCUS_BENCH_DECISION_KEY"
STAGES = ("analyze.classify", "analyze.sensitivity", "policy", "select")
TARGETS = {
    "100": {"p50_ms": 10.0, "p99_ms": 25.0, "decisions_per_s": 200.0},
    "1000": {"p50_ms": 60.0},
}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def load_texts(path: Path, limit: int = 4000, seed: int = 8) -> list[str]:
    """Prompt texts (with their context passage when there is one), in a fixed random order."""
    texts = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            item = json.loads(line)
            text = item["prompt"] + ("\n\n" + item["context"] if item.get("context") else "")
            texts.append(text)
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def prompts_of_length(texts: list[str], words: int, count: int, seed: int) -> list[str]:
    """`count` prompts of exactly `words` words, each joined from consecutive real prompts."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        start = rng.randrange(len(texts))
        collected: list[str] = []
        i = start
        while sum(len(t.split()) for t in collected) < words:
            collected.append(texts[i % len(texts)])
            i += 1
        cut = " ".join(" ".join(collected).split()[:words])
        prompts.append(cut)
    return prompts


def build_router(ner: str | None = None) -> Router:
    os.environ[KEY_ENV] = "sk-bench"  # the cloud locus has credentials: every zone is in play
    loci = [
        {
            "name": "device",
            "zone": "device",
            "model": "locus-onnx/smollm2",
            "capability": 1,
            "usd_per_mtok_in": 0,
            "usd_per_mtok_out": 0,
        },
        {
            "name": "onprem",
            "zone": "onprem",
            "model": "hosted_vllm/llama-3-8b",
            "capability": 3,
            "api_base": "http://127.0.0.1:9/v1",
            "usd_per_mtok_in": 0.2,
            "usd_per_mtok_out": 0.2,
        },
        {
            "name": "cloud",
            "zone": "cloud",
            "model": "openai/gpt-4o",
            "capability": 5,
            "context_window": 128000,
            "api_key_env": KEY_ENV,
        },
    ]
    sensitivity = {"ner": ner} if ner else {}
    return Router(config_from_dict({"loci": loci, "sensitivity": sensitivity}))


def active_analyzers(router: Router) -> dict[str, str]:
    """Which analyzers ran, from the profile's own error list (the router fails closed)."""
    profile = router.route(
        [{"role": "user", "content": "Email jane@example.com the plan."}]
    ).profile
    state = {"classifier": "active", "sensitivity": "active"}
    for error in profile.errors:
        stage, _, reason = error.partition(": ")
        state[stage] = f"INACTIVE (fails closed): {reason}"
    return state


def time_decisions(
    router: Router, prompts: list[str]
) -> tuple[list[float], dict[str, list[float]], list[float]]:
    """Wall time of each decision, its stages, and the CPU time the process spent on it (all
    threads): on a shared machine the CPU time is what the decision costs, the wall time adds
    the wait for a core."""
    totals: list[float] = []
    cpu: list[float] = []
    stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for prompt in prompts:
        start, start_cpu = time.perf_counter(), time.process_time()
        decision = router.route([{"role": "user", "content": prompt}])
        totals.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
        for stage in STAGES:
            stages[stage].append(decision.timings_ms.get(stage, 0.0))
    return totals, stages, cpu


def throughput(router: Router, prompts: list[str], threads: int) -> float:
    """Decisions per second with `threads` callers sharing one router."""

    def decide(prompt: str) -> None:
        router.route([{"role": "user", "content": prompt}])

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(decide, prompts))
    return len(prompts) / (time.perf_counter() - start)


_worker_router: Router | None = None


def _start_worker(ner: str | None) -> None:
    global _worker_router
    _worker_router = build_router(ner)
    _worker_router.warm()


def _decide_in_worker(prompt: str) -> None:
    assert _worker_router is not None
    _worker_router.route([{"role": "user", "content": prompt}])


def throughput_processes(
    ner: str | None, warm: list[str], prompts: list[str], processes: int
) -> float:
    """Decisions per second with one router per process — what replicas (one per core) reach.
    The analyzers are CPU-bound Python in part (presidio's recognizers), so threads of one
    process share one interpreter lock; processes do not. Workers load and warm their router
    before the clock starts."""
    context = multiprocessing.get_context("spawn")  # onnxruntime's threads do not survive fork
    with context.Pool(processes, initializer=_start_worker, initargs=(ner,)) as pool:
        pool.map(_decide_in_worker, warm * processes, chunksize=1)
        start = time.perf_counter()
        pool.map(_decide_in_worker, prompts, chunksize=4)
        return len(prompts) / (time.perf_counter() - start)


def bench_size(
    router: Router,
    texts: list[str],
    words: int,
    calls: int,
    threads: int,
    processes: int = 0,
    ner: str | None = None,
) -> dict[str, Any]:
    calls = max(20, calls if words <= 100 else calls // 3 if words <= 1000 else calls // 10)
    warm = prompts_of_length(texts, words, 10, seed=words)
    for prompt in warm:
        router.route([{"role": "user", "content": prompt}])
    totals, stages, cpu = time_decisions(
        router, prompts_of_length(texts, words, calls, seed=words + 1)
    )
    parallel = prompts_of_length(texts, words, calls, seed=words + 2)
    per_process = (
        {
            f"decisions_per_s_{processes}_processes": round(
                throughput_processes(ner, warm, parallel, processes), 1
            )
        }
        if processes
        else {}
    )
    return {
        "calls": calls,
        "p50_ms": round(statistics.median(totals), 3),
        "p99_ms": round(pct(totals, 0.99), 3),
        "cpu_p50_ms": round(statistics.median(cpu), 3),
        "cpu_p99_ms": round(pct(cpu, 0.99), 3),
        "stages_p50_ms": {stage: round(statistics.median(v), 3) for stage, v in stages.items()},
        "decisions_per_s_1_thread": round(len(totals) / (sum(totals) / 1000), 1),
        f"decisions_per_s_{threads}_threads": round(throughput(router, parallel, threads), 1),
        **per_process,
    }


def verdicts(results: dict[str, Any], threads: int, processes: int = 0) -> dict[str, str]:
    out = {}
    for size, targets in TARGETS.items():
        if size not in results:
            continue
        got = results[size]
        for name, limit in targets.items():
            if name == "decisions_per_s":
                value = max(
                    got["decisions_per_s_1_thread"],
                    got[f"decisions_per_s_{threads}_threads"],
                    got.get(f"decisions_per_s_{processes}_processes", 0.0),
                )
                met = value >= limit
                out[f"{size}w {name} >= {limit:g}"] = f"{'MET' if met else 'NOT MET'} ({value})"
            else:
                value = got[name]
                met = value <= limit
                out[f"{size}w {name} <= {limit:g}"] = f"{'MET' if met else 'NOT MET'} ({value})"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--calls",
        type=int,
        default=300,
        help="timed calls at <= 100 words (a third at 1,000, a tenth at 5,000)",
    )
    parser.add_argument("--sizes", default="20,100,1000,5000", help="prompt sizes in words")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 2,
        help="callers for the parallel throughput figure (default: cores)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=os.cpu_count() or 2,
        help="worker processes (one router each) for the per-process throughput figure; 0: skip",
    )
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="task_prompts JSONL")
    parser.add_argument(
        "--ner",
        choices=("onnx", "spacy", "none"),
        help="sensitivity.ner for the run (default: the config default)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if not args.prompts.exists():
        print(f"error: {args.prompts}: prompt data not found (see ../shared/data)", file=sys.stderr)
        return 1
    texts = load_texts(args.prompts)
    router = build_router(args.ner)
    started = time.perf_counter()
    router.warm()
    warm_s = time.perf_counter() - started
    analyzers = active_analyzers(router)
    results = {}
    for words in (int(s) for s in args.sizes.split(",")):
        results[str(words)] = bench_size(
            router, texts, words, args.calls, args.threads, args.processes, args.ner
        )
        row = results[str(words)]
        print(
            f"{words:>5} words: p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  "
            f"(CPU p50 {row['cpu_p50_ms']:.2f} ms)  "
            f"{row['decisions_per_s_1_thread']:7.1f}/s (1 thread)  "
            f"{row[f'decisions_per_s_{args.threads}_threads']:7.1f}/s ({args.threads} threads)  "
            f"{row.get(f'decisions_per_s_{args.processes}_processes', 0.0):7.1f}/s "
            f"({args.processes} processes)"
            f"  stages p50 {row['stages_p50_ms']}",
            file=sys.stderr,
        )
    result = {
        "analyzers": analyzers,
        "sensitivity_ner": args.ner or "default",
        "warm_s": round(warm_s, 2),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "sizes": results,
        "targets": verdicts(results, args.threads, args.processes),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

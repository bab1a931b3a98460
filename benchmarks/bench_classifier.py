"""Speed and memory of the router classifier, one request at a time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_classifier.py [--model DIR] [--runs N]

Prints p50/p99 latency of `classify` at 100 and 2,000 words, cold load (a fresh interpreter:
import + load + first call; in all, and the classifier's share after `import locus_llm`) and the
resident memory added (in all, and by the classifier alone). Targets (issue 3):
p50 ≤ 3 ms / p99 ≤ 8 ms at 100 words, p50 ≤ 15 ms at 2,000 words, cold load ≤ 1 s, ≤ 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

SENTENCE = (
    "the report shows revenue growth in the third quarter while costs of cloud services rose "
    "because our customers asked for faster answers and the team wrote new code to summarise "
    "each contract extract the dates and classify every ticket by urgency before the deadline"
)
WORDS = SENTENCE.split(" ")
INSTRUCTION = "Summarise the following notes for the weekly team update."

COLD_LOAD = """
import json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
before = rss()
start = time.perf_counter()
import locus_llm  # the package itself (config, router, numpy): paid by any locus process
package = time.perf_counter()
package_rss = rss()
from locus_llm.analysis.classifier import RouterClassifier
model = RouterClassifier.load(sys.argv[1] if len(sys.argv) > 1 else None)
model.classify("Summarize this paragraph for me.")
done = time.perf_counter()
for _ in range(200):
    model.classify(" ".join(["word"] * 2000))
print(json.dumps({"cold_load_s": done - start, "classifier_load_s": done - package,
                  "added_rss_mb": rss() - before, "classifier_rss_mb": rss() - package_rss}))
"""


def prompt(words: int, seed: int) -> str:
    """An instruction, a blank line, then text: the classifier's costlier path (two encodes)."""
    rng = np.random.default_rng(seed)
    instruction = INSTRUCTION.split(" ")
    body = " ".join(rng.choice(WORDS, size=max(1, words - len(instruction))))
    return f"{INSTRUCTION}\n\n{body}"


def latency_ms(model: object, words: int, runs: int) -> dict[str, float]:
    prompts = [prompt(words, seed) for seed in range(20)]
    for text in prompts:  # warm-up
        model.classify(text)  # type: ignore[attr-defined]
    times = []
    for i in range(runs):
        text = prompts[i % len(prompts)]
        start = time.perf_counter()
        model.classify(text)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - start) * 1000)
    return {
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
    }


def cold_load(model_dir: str | None, repeats: int) -> dict[str, float]:
    results = []
    for _ in range(repeats):
        command = [sys.executable, "-c", COLD_LOAD] + ([model_dir] if model_dir else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in results), 3)

    return {
        "cold_load_s_median": median("cold_load_s"),
        "classifier_load_s_median": median("classifier_load_s"),
        "cold_load_s_max": round(max(r["cold_load_s"] for r in results), 3),
        "added_rss_mb": round(max(r["added_rss_mb"] for r in results), 1),
        "classifier_rss_mb": round(max(r["classifier_rss_mb"] for r in results), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model directory (default: the packaged one)")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--cold-repeats", type=int, default=5)
    args = parser.parse_args()

    from locus_llm.analysis.classifier import RouterClassifier

    model = RouterClassifier.load(args.model)
    report = {
        "100_words": latency_ms(model, 100, args.runs),
        "2000_words": latency_ms(model, 2000, args.runs),
        **cold_load(args.model, args.cold_repeats),
    }
    targets = {
        "100_words.p50_ms": (report["100_words"]["p50_ms"], 3.0),
        "100_words.p99_ms": (report["100_words"]["p99_ms"], 8.0),
        "2000_words.p50_ms": (report["2000_words"]["p50_ms"], 15.0),
        "cold_load_s_median": (report["cold_load_s_median"], 1.0),
        "classifier_load_s_median": (report["classifier_load_s_median"], 1.0),
        "added_rss_mb": (report["added_rss_mb"], 150.0),
        "classifier_rss_mb": (report["classifier_rss_mb"], 150.0),
    }
    report["load_average"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
    print(json.dumps(report, indent=2))
    for name, (value, limit) in targets.items():
        print(
            f"{name:22s} {value:9.3f}  target ≤ {limit:g}  {'met' if value <= limit else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed of sensitive-data detection alone, on this machine, with a same-process baseline.

    python benchmarks/bench_sensitivity.py            # 100-word p50, 50,000-word throughput
    python benchmarks/bench_sensitivity.py --ten-mb   # + one 10 MB document (minutes)

Targets (issue 4): p50 ≤ 8 ms at 100 words; ≥ 20,000 words/s on a 50,000-word document.
Baseline: presidio's pattern recognizers as they come (NoOp NLP engine, offline), same texts.
Texts: prompts and contexts from ../shared/data/task_prompts (Dolly, GSM8K, MBPP) with one
presidio-research PII sentence in every fifth 100-word sample, so recognizers have work to do.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpus_words(limit: int = 400_000) -> list[str]:
    words: list[str] = []
    with (DATA / "task_prompts" / "train.jsonl").open() as f:
        for line in f:
            row = json.loads(line)
            words += f"{row.get('context') or ''} {row['prompt']}".split()
            if len(words) >= limit:
                break
    return words


def pii_sentences() -> list[str]:
    rows = json.loads((DATA / "pii_presidio" / "synth_dataset_v2_dev.json").read_text())
    return [r["full_text"] for r in rows]


def hundred_word_texts(words: list[str], pii: list[str], n: int, rng: random.Random) -> list[str]:
    texts = []
    for i in range(n):
        start = rng.randrange(len(words) - 100)
        chunk = words[start : start + 100]
        if i % 5 == 0:
            extra = rng.choice(pii).split()
            chunk = chunk[: 100 - len(extra)] + extra
        texts.append(" ".join(chunk[:100]))
    return texts


def p50_ms(detect: Any, texts: list[str]) -> tuple[float, float, float]:
    """p50 and p95 wall time, and p50 CPU time of the process (all its threads, onnxruntime's
    included): on a shared machine the wall time adds the wait for a core."""
    for t in texts[:10]:
        detect(t)
    times = []
    cpu = []
    for t in texts:
        started, started_cpu = time.perf_counter(), time.process_time()
        detect(t)
        times.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95)], statistics.median(cpu)


def words_per_second(detect: Any, text: str, repeats: int = 3) -> tuple[float, float]:
    """Words per second of wall time (best of `repeats`) and of the process's CPU time."""
    best = best_cpu = float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        detect(text)
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
    words = len(text.split())
    return words / best, words / best_cpu


def baseline() -> Any:
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine)
    return lambda text: analyzer.analyze(text, language="en")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--ten-mb", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--compare-model", type=Path, help="also time this NER model directory (e.g. an older one)"
    )
    args = parser.parse_args(argv)

    from locus_llm.analysis.sensitivity import SensitivityConfig, SensitivityDetector

    rng = random.Random(0)
    words = corpus_words()
    texts = hundred_word_texts(words, pii_sentences(), args.samples, rng)
    document = " ".join(words[:50_000])
    results: dict[str, Any] = {}
    systems = {
        "locus (onnx NER)": SensitivityDetector().detect,
        "locus (onnx NER, 2 threads)": SensitivityDetector(SensitivityConfig(ner_threads=2)).detect,
        # the cost of the NRP word list, in the same process
        "locus (NER, no group words)": SensitivityDetector(
            SensitivityConfig(nrp_words=False)
        ).detect,
        "locus (patterns only)": SensitivityDetector(SensitivityConfig(ner="none")).detect,
        "presidio patterns, as shipped": baseline(),
    }
    if args.compare_model:
        other = SensitivityConfig(ner_model_dir=str(args.compare_model))
        systems[f"locus (NER from {args.compare_model})"] = SensitivityDetector(other).detect
    for name, detect in systems.items():
        p50, p95, cpu = p50_ms(detect, texts)
        wps, wps_cpu = words_per_second(detect, document)
        results[name] = {
            "p50_ms_100_words": round(p50, 2),
            "p95_ms_100_words": round(p95, 2),
            "cpu_p50_ms_100_words": round(cpu, 2),
            "words_per_s_50k": round(wps),
            "words_per_cpu_s_50k": round(wps_cpu),
        }
        print(
            f"{name:32s} 100 words: p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  (CPU {cpu:5.2f} ms)"
            f"   50,000 words: {wps:9,.0f} words/s  ({wps_cpu:9,.0f} per CPU-s)"
        )
    ours, base = results["locus (onnx NER)"], results["presidio patterns, as shipped"]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"ratio vs presidio patterns: 100-word p50 ×{ours['p50_ms_100_words'] / base['p50_ms_100_words']:.2f}, "
        f"throughput ×{ours['words_per_s_50k'] / base['words_per_s_50k']:.2f}"
    )
    bare = results["locus (NER, no group words)"]
    print(
        f"group word list: CPU ×{ours['cpu_p50_ms_100_words'] / bare['cpu_p50_ms_100_words']:.2f}"
        f" at 100 words, ×{bare['words_per_cpu_s_50k'] / ours['words_per_cpu_s_50k']:.2f}"
        " at 50,000 words"
    )
    if args.ten_mb:
        detector = SensitivityDetector()
        chunk = "Routine status update with nothing sensitive in it at all, just words. " * 1000
        text = chunk * (10_000_000 // len(chunk) + 1) + " TFN 123 456 782"
        started = time.perf_counter()
        entities = detector.detect(text)
        seconds = time.perf_counter() - started
        level = detector.data_class(entities).name
        results["ten_mb"] = {
            "seconds": round(seconds, 1),
            "class": level,
            "words_per_s": round(len(text.split()) / seconds),
        }
        print(
            f"10 MB document: {seconds:.1f} s, class {level}, {len(text.split()) / seconds:,.0f} words/s"
        )
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

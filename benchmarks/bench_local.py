"""Benchmark of the local ONNX locus: SmolLM2-135M (int4 by default) on this machine's CPU.

Figures (targets from issue 5): conversion time (≤ 60 s), time to first token for a 50-token
prompt (≤ 150 ms), decode speed (≥ 100 tokens/s), resident memory of a process serving the model
(≤ 400 MB), and the peak memory with a long (4,000-token) prompt. The runtime figures come from
fresh subprocesses, so the converter's memory does not count. Every timing is given as wall time
and as this process's CPU time, with the load average: on a shared machine the wall time includes waiting for a core, the CPU time does not. The
"kernel floor" figures add up each graph node's fastest run (onnxruntime's profiler), which is
what the step costs when no other process takes the cores (it overstates small operators: the
profiler's own cost per node is counted).

    python benchmarks/bench_local.py [--quant int4] [--attention gqa|standard] [--threads 2]
        [--tokens 128] [--runs 5] [--long-prompt 4000] [--folder MODEL_FOLDER]

`--folder` measures an existing model folder (e.g. an older conversion) instead of converting.
`--two-pass ROLES`, `--rescored N`, `--head-bits 4|8` convert with the converter's precision
knobs changed; `--versus-v4 ROUNDS` also converts the graph of converter version 4 (int8
activations everywhere, 64 rescored candidates, 4-bit head) and times decode and prefill of both,
alternating in one process: the `*_vs_v4_graph` ratios are what the knobs cost
(docs/local-precision.md). E.g. (about 1 min on an idle machine):

    python benchmarks/bench_local.py --runs 3 --long-prompt 0 --rescored 512 --versus-v4 20

LOCUS_ONNX_SPIN_US=N makes onnxruntime's worker threads spin N µs before sleeping (0: never).
The runtime child also
times, in one process and alternating, the same decode with threads that spin, that never spin,
and with one thread (`decode_*_vs_no_spin` ratios, < 1: faster): what waking sleeping worker
threads costs, and which setting the machine's load favours. The main figures use the
runtime's default, which spins only when the load average leaves a core idle (`spin_us`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPT_TOKENS = 50


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process, in MB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def compare_graphs(folder: Path, baseline: Path, threads: int, rounds: int) -> dict[str, Any]:
    """Decode and 50-token prefill of the folder against a baseline folder (the converter-version-4
    graph: one int8 pass everywhere, 64 rescored candidates), alternating in this process so load
    hits both alike: paired ratios of wall and CPU time (< 1: faster)."""
    from locus_llm.local.runtime import OnnxChatModel

    models = {
        "new": OnnxChatModel(folder, threads=threads),
        "v4": OnnxChatModel(baseline, threads=threads),
    }
    prompt = list(range(1000, 1000 + PROMPT_TOKENS))
    times: dict[str, dict[str, list[float]]] = {
        name: {"decode_wall": [], "decode_cpu": [], "prefill_wall": [], "prefill_cpu": []}
        for name in models
    }
    for round_ in range(rounds + 1):  # the first round warms up
        for name, model in models.items():
            cache = model.new_cache(PROMPT_TOKENS + 33)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            token = int(cache.step(prompt).argmax())
            wall1, cpu1 = time.perf_counter(), time.process_time()
            for _ in range(32):
                token = int(cache.step([token]).argmax())
            wall2, cpu2 = time.perf_counter(), time.process_time()
            if round_:
                got = times[name]
                got["prefill_wall"].append(wall1 - wall0)
                got["prefill_cpu"].append(cpu1 - cpu0)
                got["decode_wall"].append((wall2 - wall1) / 32)
                got["decode_cpu"].append((cpu2 - cpu1) / 32)
    figures: dict[str, Any] = {
        "v4_graph_decode_ms_per_token_wall": round(
            statistics.median(times["v4"]["decode_wall"]) * 1000, 2
        )
    }
    for key in times["new"]:
        pairs = zip(times["new"][key], times["v4"][key], strict=True)
        figures[f"{key}_vs_v4_graph"] = round(statistics.median(a / b for a, b in pairs), 3)
    return figures


def measure_runtime(folder: Path, threads: int, tokens: int, runs: int) -> dict[str, Any]:
    """TTFT, decode speed and memory of one model folder (run in a fresh process)."""
    from locus_llm.local.runtime import OnnxChatModel, spin_microseconds

    started = time.perf_counter()
    model = OnnxChatModel(folder, threads=threads)
    load_s = time.perf_counter() - started
    model.eos_token_ids = frozenset()  # decode a fixed number of tokens
    text = "Write a long, detailed story about a lighthouse keeper and a storm at sea. " * 8
    prompt = model.tokenizer.encode(text, add_special_tokens=False).ids[:PROMPT_TOKENS]
    list(model.stream_tokens(prompt, max_tokens=4))  # warm-up

    ttft_wall, ttft_cpu, decode_wall, decode_cpu = [], [], [], []
    for _ in range(runs):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        stream = model.stream_tokens(prompt, max_tokens=tokens)
        next(stream)
        ttft_wall.append(time.perf_counter() - wall0)
        ttft_cpu.append(time.process_time() - cpu0)
        wall1, cpu1 = time.perf_counter(), time.process_time()
        rest = list(stream)
        generated = rest[-1].usage["completion_tokens"] if rest[-1].usage else tokens
        decode_wall.append((time.perf_counter() - wall1) / (generated - 1))
        decode_cpu.append((time.process_time() - cpu1) / (generated - 1))
    current, peak = rss_mb()
    compared = compare_thread_waiting(folder, threads, prompt, tokens, max(runs, 4))
    decode_floor = kernel_floor_ms(folder, threads, 1, PROMPT_TOKENS)
    return {
        "decode_ms_per_token_kernel_floor": round(decode_floor, 2),
        "decode_tokens_per_s_kernel_floor": round(1000 / decode_floor, 1),
        "ttft_ms_kernel_floor": round(kernel_floor_ms(folder, threads, PROMPT_TOKENS, 0), 1),
        "threads": threads,
        "load_s": round(load_s, 2),
        "prompt_tokens": len(prompt),
        "generated_tokens": tokens,
        "ttft_ms_wall": round(statistics.median(ttft_wall) * 1000, 1),
        "ttft_ms_cpu": round(statistics.median(ttft_cpu) * 1000, 1),
        "decode_ms_per_token_wall": round(statistics.median(decode_wall) * 1000, 2),
        "decode_ms_per_token_cpu": round(statistics.median(decode_cpu) * 1000, 2),
        "decode_tokens_per_s_wall": round(1 / statistics.median(decode_wall), 1),
        "decode_ms_per_token_wall_best_run": round(min(decode_wall) * 1000, 2),
        "spin_us": spin_microseconds(),
        **compared,
        "rss_mb": round(current, 1),
        "peak_rss_mb": round(peak, 1),
    }


def compare_thread_waiting(
    folder: Path, threads: int, prompt: list[int], tokens: int, rounds: int
) -> dict[str, Any]:
    """Decode ms/token of the folder with worker threads that spin SPIN_MICROSECONDS, that never
    spin, and with one thread, alternating in this process so that load hits all alike (ratios
    against no spinning, the behaviour before spinning was allowed). Run after the RSS reading:
    these sessions do not count in it."""
    from locus_llm.local.runtime import SPIN_MICROSECONDS, OnnxChatModel

    def session(spin_us: int, threads: int) -> OnnxChatModel:
        saved = os.environ.get("LOCUS_ONNX_SPIN_US")
        os.environ["LOCUS_ONNX_SPIN_US"] = str(spin_us)
        try:
            return OnnxChatModel(folder, threads=threads)
        finally:
            if saved is None:
                del os.environ["LOCUS_ONNX_SPIN_US"]
            else:
                os.environ["LOCUS_ONNX_SPIN_US"] = saved

    contenders = {
        "no_spin": session(0, threads),
        "spin": session(SPIN_MICROSECONDS, threads),
        "one_thread": session(0, 1),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, contender in contenders.items():
            times[name].append(decode_ms_per_token(contender, prompt, min(tokens, 64)))
    figures: dict[str, Any] = {}
    for name in contenders:
        figures[f"decode_ms_per_token_wall_{name}"] = round(statistics.median(times[name]), 2)
    for name in ("spin", "one_thread"):
        pairs = zip(times[name], times["no_spin"], strict=True)
        figures[f"decode_{name}_vs_no_spin"] = round(statistics.median(a / b for a, b in pairs), 3)
    return figures


def decode_ms_per_token(model: Any, prompt: list[int], tokens: int) -> float:
    """Greedy decode of `tokens` tokens after `prompt`, wall ms per token (prefill excluded)."""
    cache = model.new_cache(len(prompt) + tokens + 1)
    token = int(cache.step(prompt).argmax())
    started = time.perf_counter()
    for _ in range(tokens):
        token = int(cache.step([token]).argmax())
    return (time.perf_counter() - started) / tokens * 1000


def kernel_floor_ms(
    folder: Path, threads: int, new_tokens: int, past: int, runs: int = 30
) -> float:
    """Sum over graph nodes of each node's fastest kernel time in `runs` runs (onnxruntime's
    profiler): the step time without preemption by other processes, which a shared machine's
    wall clock cannot show. Excludes the Python around `session.run` (~0.3 ms a step)."""
    import numpy as np
    import onnxruntime as ort

    from locus_llm.local.runtime import OnnxChatModel

    model = OnnxChatModel(folder, threads=threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "locus-bench-profile")
    session = ort.InferenceSession(str(folder / "model.onnx"), options)
    shape = (1, model._kv_heads, past, model._head_dim)
    feed = {name: np.zeros(shape, dtype=np.float32) for name in model._past_names}
    feed["input_ids"] = np.full((1, new_tokens), 5, dtype=np.int64)
    feed["attention_mask"] = np.ones((1, past + new_tokens), dtype=np.int64)
    if any(i.name == "position_ids" for i in session.get_inputs()):
        feed["position_ids"] = np.arange(past, past + new_tokens, dtype=np.int64)[None]
    for _ in range(runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    fastest: dict[str, int] = {}
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            fastest[event["name"]] = min(fastest.get(event["name"], 1 << 62), event["dur"])
    trace.unlink()
    return sum(fastest.values()) / 1000


def measure_long_prompt(folder: Path, threads: int, prompt_tokens: int) -> dict[str, Any]:
    """Peak memory and time to first token for a long prompt (run in a fresh process): the KV
    cache is the part of memory that grows with the prompt."""
    from locus_llm.local.runtime import OnnxChatModel

    model = OnnxChatModel(folder, threads=threads)
    text = "The lighthouse keeper watched the storm roll in from the sea, again and again. " * 400
    prompt = model.tokenizer.encode(text, add_special_tokens=False).ids[:prompt_tokens]
    before, _ = rss_mb()
    wall0 = time.perf_counter()
    stream = model.stream_tokens(prompt, max_tokens=16)
    next(stream)
    ttft = time.perf_counter() - wall0
    list(stream)
    _, peak = rss_mb()
    return {
        "long_prompt_tokens": len(prompt),
        "long_prompt_ttft_s_wall": round(ttft, 2),
        "long_prompt_rss_before_mb": round(before, 1),
        "long_prompt_peak_rss_mb": round(peak, 1),
    }


def convert_v4_graph(out: Path) -> None:
    """SmolLM2 int4 as converter version 4 built it: no two-pass inputs, 64 rescored candidates."""
    from locus_llm.local import converter, models

    saved = converter.TWO_PASS_ROLES, converter.RESCORED_CANDIDATES, converter.HEAD_BITS
    converter.TWO_PASS_ROLES, converter.RESCORED_CANDIDATES, converter.HEAD_BITS = (
        frozenset(),
        64,
        4,
    )
    try:
        converter.convert_gguf(models.default_gguf(), out, quant="int4", name="smollm2-v4")
    finally:
        converter.TWO_PASS_ROLES, converter.RESCORED_CANDIDATES, converter.HEAD_BITS = saved


def child(*args: str) -> dict[str, Any]:
    """Figures from this script run as a fresh process (its last output line, JSON)."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", choices=["int4", "int8", "fp32"], default="int4")
    parser.add_argument("--attention", choices=["gqa", "standard"], default="gqa")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--long-prompt", type=int, default=4000, help="tokens (0: skip)")
    parser.add_argument("--folder", help="benchmark this model folder instead of converting")
    parser.add_argument("--runtime-only", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--long-only", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--versus-only", nargs=2, metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument(
        "--two-pass",
        metavar="ROLES",
        help="convert with these MatMul roles fed as two int8 halves (comma-separated; "
        "docs/local-precision.md)",
    )
    parser.add_argument(
        "--rescored", type=int, help="convert with N rescored vocabulary candidates"
    )
    parser.add_argument("--head-bits", type=int, choices=[4, 8], help="convert with this head")
    parser.add_argument(
        "--versus-v4",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also time the int4 graph against converter version 4's in one process (rounds)",
    )
    args = parser.parse_args(argv)
    if args.versus_only:
        new, old = (Path(f) for f in args.versus_only)
        print(json.dumps(compare_graphs(new, old, args.threads, args.versus_v4)))
        return 0
    if args.runtime_only:
        figures = measure_runtime(Path(args.runtime_only), args.threads, args.tokens, args.runs)
        print(json.dumps(figures))
        return 0
    if args.long_only:
        print(json.dumps(measure_long_prompt(Path(args.long_only), args.threads, args.long_prompt)))
        return 0

    from locus_llm.local import converter, models
    from locus_llm.local.converter import convert_gguf

    if args.two_pass:
        converter.TWO_PASS_ROLES = frozenset(args.two_pass.split(","))
    if args.rescored is not None:
        converter.RESCORED_CANDIDATES = args.rescored
    if args.head_bits is not None:
        converter.HEAD_BITS = args.head_bits

    load_before = os.getloadavg()
    conversion: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="locus-bench-") as scratch:
        folder = args.folder or scratch
        if not args.folder:
            wall0, cpu0 = time.perf_counter(), time.process_time()
            convert_gguf(
                models.default_gguf(),
                scratch,
                quant=args.quant,
                name="smollm2",
                attention=args.attention,
            )
            conversion = {
                "conversion_s_wall": round(time.perf_counter() - wall0, 1),
                "conversion_s_cpu": round(time.process_time() - cpu0, 1),
                "model_mb_on_disk": round(
                    sum(f.stat().st_size for f in Path(scratch).iterdir()) / 1e6, 1
                ),
            }
        common = ["--threads", str(args.threads)]
        runtime = child(
            "--runtime-only",
            folder,
            *common,
            "--tokens",
            str(args.tokens),
            "--runs",
            str(args.runs),
        )
        if args.long_prompt:
            runtime |= child("--long-only", folder, *common, "--long-prompt", str(args.long_prompt))
        if args.versus_v4:
            baseline = Path(scratch) / "v4-graph"
            convert_v4_graph(baseline)
            runtime |= child(
                "--versus-only", folder, str(baseline), *common, "--versus-v4", str(args.versus_v4)
            )
    load_after = os.getloadavg()
    report = {
        "model": "SmolLM2-135M-Instruct",
        "quant": args.quant,
        "folder": args.folder or f"converted now ({args.attention} attention)",
        "two_pass_roles": ",".join(sorted(converter.TWO_PASS_ROLES)) or "none",
        "rescored_candidates": converter.RESCORED_CANDIDATES,
        "head_bits": converter.HEAD_BITS,
        **conversion,
        **runtime,
        "load_average_before": load_before[0],
        "load_average_after": load_after[0],
        "cpus": os.cpu_count(),
    }
    targets = [
        ("conversion ≤ 60 s", report.get("conversion_s_wall", 0) <= 60),
        ("TTFT ≤ 150 ms (50-token prompt)", report["ttft_ms_wall"] <= 150),
        ("decode ≥ 100 tokens/s", report["decode_tokens_per_s_wall"] >= 100),
        ("TTFT ≤ 150 ms, kernel floor", report["ttft_ms_kernel_floor"] <= 150),
        ("decode ≥ 100 tokens/s, kernel floor", report["decode_tokens_per_s_kernel_floor"] >= 100),
        ("RSS ≤ 400 MB", report["peak_rss_mb"] <= 400),
    ]
    for key, value in report.items():
        print(f"{key:28} {value}")
    for name, met in targets:
        print(f"{'met' if met else 'NOT met':8} {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

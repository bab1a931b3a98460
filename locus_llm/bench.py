"""`locus bench`: measure every locus and write the profile file the router starts from.

    locus bench --config loci.yaml --requests 20 --concurrency 2 --out profiles.json

Per locus: time to first token (p50/p95), decode speed (tokens/s after the first token), end-to-end
latency (p50/p95), error rate, and price per million tokens (the config's, which falls back to
LiteLLM's cost map) next to the cost actually recorded. The file is what `Stats.load_profiles`
reads; point `profiles:` in the config (or LOCUS_PROFILES) at it and selection and the policy input
use these numbers, marked `measured: True`, instead of the config's guesses.

How a request is sent: as a streamed `router.completion(..., locus=NAME)`, so the policy decides
whether each bench prompt may go to that locus at all — a prompt file may hold data that must not
leave, and sending it anyway to measure a cloud would be the very leak locus exists to prevent.
Prompts the policy refuses are counted as `denied` (not errors) and not sent; a locus refused
every prompt is not measured, and the table says why (if sensitivity analysis is unavailable every
prompt is RESTRICTED and only the device zone can be measured: fail closed).
The bench router differs from the configured one in three ways, so that each number means one
thing: one attempt per request (no retry, no failover, no circuit breaker: a failure counts once
as an error, and a slow locus is not hidden behind a retry); no profile file loaded; and one
warm-up request per locus, not counted, so connection set-up and a local model's first load do
not land in the percentiles. The clock starts when the stream is first read, after routing, so
analysis time is not charged to the locus.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from locus_llm.config import LocusConfig, load_config
from locus_llm.errors import LocusError, NoAllowedLocusError

PROFILE_FORMAT = 1
DEFAULT_OUT = Path("locus-profiles.json")
BUILTIN_PROMPTS = (
    "In two sentences, explain why the sky is blue.",
    "List three practical uses of a hash map.",
    "Write a haiku about autumn rain.",
    "What is the difference between a virus and a bacterium?",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
    "Give a short Python function that reverses a string.",
    "If a train travels 120 km in 1.5 hours, what is its average speed?",
    "Suggest a name for a bakery that specialises in sourdough.",
)


class BenchError(LocusError, ValueError):
    """The bench cannot start: a prompt file, a locus name or an option is wrong."""


@dataclass(frozen=True)
class Sample:
    """One bench request: timings in ms, or why it failed (an error) or was refused (denied)."""

    ok: bool
    ttft_ms: float | None = None
    latency_ms: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    error: str | None = None  # the error class, for a failed attempt
    denied: bool = False  # the policy refused this prompt on this locus: not the locus's fault

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first."""
        if not self.ok or self.ttft_ms is None or self.latency_ms is None:
            return None
        decode_ms = self.latency_ms - self.ttft_ms
        if self.tokens_out < 2 or decode_ms <= 0:
            return None
        return (self.tokens_out - 1) * 1000 / decode_ms


# --- inputs -----------------------------------------------------------------------------------


def read_prompts(path: Path) -> list[str]:
    """Prompts from a JSONL file, one {"prompt": ...} object a line; errors name the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read prompts: {exc}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise BenchError(f"{path}:{number}: not valid JSON: {exc}") from None
        prompt = item.get("prompt") if isinstance(item, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise BenchError(
                f'{path}:{number}: expected an object with a non-empty "prompt" string'
            )
        prompts.append(prompt)
    if not prompts:
        raise BenchError(f"{path}: no prompts")
    return prompts


def bench_config(config: LocusConfig, loci: list[str] | None = None) -> LocusConfig:
    """The config the bench runs with: chosen loci only, one attempt per request, no profiles."""
    config = config.model_copy(deep=True)
    if loci:
        known = [locus.name for locus in config.loci]
        unknown = [name for name in loci if name not in known]
        if unknown:
            raise BenchError(
                f"unknown locus {', '.join(map(repr, unknown))}: configured are {known}"
            )
    for locus in config.loci:
        locus.max_retries = 0
    config.breaker.failure_threshold = 1_000_000_000  # every request is a measurement
    config.profiles = None
    return config


# --- measuring --------------------------------------------------------------------------------


def measure(router: Any, locus: str, prompt: str, max_tokens: int) -> Sample:
    """Send one streamed request to `locus` through the router and time it."""
    messages = [{"role": "user", "content": prompt}]
    try:
        stream = router.completion(messages, locus=locus, stream=True, max_tokens=max_tokens)
    except NoAllowedLocusError:
        return Sample(ok=False, denied=True)
    started = time.perf_counter()  # routing is done; the locus's clock starts at the first read
    first: float | None = None
    chunks = 0
    try:
        for chunk in stream:
            if _has_content(chunk):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    except Exception as exc:
        cause = getattr(exc, "last_error", None) or exc
        return Sample(ok=False, error=type(cause).__name__)
    ended = time.perf_counter()
    info = stream.locus or {}
    usage = info.get("usage") or {}
    return Sample(
        ok=True,
        ttft_ms=((first or ended) - started) * 1000,
        latency_ms=(ended - started) * 1000,
        tokens_in=int(usage.get("prompt_tokens") or 0),
        tokens_out=int(usage.get("completion_tokens") or chunks),
        cost_usd=float(info.get("cost_usd") or 0.0),
    )


def _has_content(chunk: Any) -> bool:
    choices = getattr(chunk, "choices", None) or []
    delta = getattr(choices[0], "delta", None) if choices else None
    return bool(delta is not None and (delta.content or getattr(delta, "tool_calls", None)))


def policy_refusal(router: Any, locus: str, prompts: list[str], max_tokens: int) -> str | None:
    """Why the router would send none of the bench prompts to `locus`; None if it takes one.

    A locus refused only some prompts is measured on the others (the refusals are counted).
    """
    first_reason = None
    for prompt in dict.fromkeys(prompts):
        messages = [{"role": "user", "content": prompt}]
        try:
            decision = router.route(messages, locus=locus, max_tokens=max_tokens)
        except NoAllowedLocusError as exc:  # refused before the policy (e.g. fits no locus)
            first_reason = first_reason or f"refused: {exc}"
            continue
        if decision.plan.loci:
            return None
        first_reason = first_reason or denial(decision, locus)
    return first_reason


def denial(decision: Any, locus: str) -> str:
    """The policy's reasons, and whether the data class came from failed analysis."""
    reasons = decision.policy.denied.get(locus) or ["not allowed"]
    detail = f"denied by policy for a {decision.profile.data_class.name} prompt: " + "; ".join(
        reasons
    )
    if "analysis_failed" in decision.profile.flags:  # the class came from a failure, not the text
        failures = [e for e in decision.profile.errors if e.startswith("sensitivity")]
        detail += (
            " (sensitivity analysis failed, so every prompt is treated as RESTRICTED: "
            + "; ".join(failures or decision.profile.errors)
            + ")"
        )
    return detail


def bench_locus(
    router: Any,
    locus: str,
    prompts: list[str],
    *,
    requests: int,
    concurrency: int,
    max_tokens: int,
    warmup: int = 1,
    advance: Callable[[], None] | None = None,
) -> list[Sample]:
    """`requests` measured requests (prompts taken in turn), `concurrency` at a time."""
    for i in range(warmup):
        measure(router, locus, prompts[i % len(prompts)], max_tokens)

    def one(index: int) -> Sample:
        sample = measure(router, locus, prompts[index % len(prompts)], max_tokens)
        if advance is not None:
            advance()
        return sample

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="locus-bench") as pool:
        return list(pool.map(one, range(requests)))


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(locus: Any, samples: list[Sample], measured_at: str) -> dict[str, Any]:
    """A profile entry: the keys `Stats.load_profiles` reads, and the evidence behind them."""
    done = [s for s in samples if s.ok]
    sent = [s for s in samples if not s.denied]
    errors: dict[str, int] = {}
    for s in sent:
        if not s.ok:
            errors[s.error or "error"] = errors.get(s.error or "error", 0) + 1
    ttft = [s.ttft_ms for s in done if s.ttft_ms is not None]
    latency = [s.latency_ms for s in done if s.latency_ms is not None]
    speeds = [v for s in done if (v := s.tokens_per_s) is not None]
    tokens = sum(s.tokens_in + s.tokens_out for s in done)
    cost = sum(s.cost_usd for s in done)
    return {
        "zone": locus.zone,
        "model": locus.model,
        "measured_at": measured_at,
        "samples": len(done),
        "requests": len(samples),
        "denied": len(samples) - len(sent),
        "errors": errors,
        "error_rate": _round(sum(errors.values()) / len(sent), 4) if sent else None,
        "p50_ttft_ms": _round(percentile(ttft, 0.5)),
        "p95_ttft_ms": _round(percentile(ttft, 0.95)),
        "tokens_per_s": _round(statistics.median(speeds) if speeds else None),
        "p50_latency_ms": _round(percentile(latency, 0.5)),
        "p95_latency_ms": _round(percentile(latency, 0.95)),
        "tokens_in": sum(s.tokens_in for s in done),
        "tokens_out": sum(s.tokens_out for s in done),
        "usd_per_mtok_in": locus.usd_per_mtok_in,
        "usd_per_mtok_out": locus.usd_per_mtok_out,
        "usd_per_mtok_observed": _round(cost / tokens * 1e6, 6) if tokens else None,
        "cost_usd": _round(cost, 8),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def run_bench(
    config: LocusConfig,
    *,
    loci: list[str] | None = None,
    prompts: list[str] | None = None,
    requests: int = 20,
    concurrency: int = 1,
    max_tokens: int = 64,
    warmup: int = 1,
    analyzer: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure the loci and return the profile document (see `write_profiles`)."""
    from locus_llm.router import Router

    if requests < 1 or concurrency < 1 or max_tokens < 1 or warmup < 0:
        raise BenchError(
            "--requests, --concurrency and --max-tokens must be at least 1, --warmup at least 0"
        )
    prompts = list(prompts or BUILTIN_PROMPTS)
    config = bench_config(config, loci)
    names = loci or [locus.name for locus in config.loci]
    router = Router(config, analyzer=analyzer)
    router.warm()
    bar = _progress_bar(requests * len(names), progress)
    lock = threading.Lock()

    def advance() -> None:
        with lock:
            bar.update(1)

    entries: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    try:
        for name in names:
            bar.set_description(name)
            locus = config.locus(name)
            measured_at = _now()
            refusal = policy_refusal(router, name, prompts[:requests], max_tokens)
            if refusal is not None:
                skipped[name] = refusal
                bar.update(requests)
                continue
            samples = bench_locus(
                router,
                name,
                prompts,
                requests=requests,
                concurrency=concurrency,
                max_tokens=max_tokens,
                warmup=warmup,
                advance=advance,
            )
            entries[name] = summarise(locus, samples, measured_at)
    finally:
        bar.close()
    return {
        "format": PROFILE_FORMAT,
        "measured_at": _now(),
        "settings": {
            "requests": requests,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "warmup": warmup,
            "prompts": len(prompts),
        },
        "loci": entries,
        "skipped": skipped,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="req", disable=not enabled, file=sys.stderr, leave=False)


# --- the profile file -------------------------------------------------------------------------


def write_profiles(document: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write the document; loci measured earlier and not in this run are kept (with their own
    `measured_at`), so one locus can be re-measured without losing the others."""
    path = Path(path)
    merged = dict(document)
    if path.exists():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BenchError(
                f"{path}: exists but is not a readable profile file ({exc}); "
                "choose another --out or remove it"
            ) from None
        if not isinstance(previous, dict) or not isinstance(previous.get("loci"), dict):
            raise BenchError(
                f"{path}: exists but is not a locus profile file; choose another --out or remove it"
            )
        kept = {
            name: entry for name, entry in previous["loci"].items() if name not in document["loci"]
        }
        merged["loci"] = {**kept, **document["loci"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)  # a router starting meanwhile never reads half a file
    return merged


def format_table(document: dict[str, Any]) -> str:
    """The summary a person reads: one row per locus, skipped loci with their reason."""
    header = (
        "locus",
        "zone",
        "ok",
        "err%",
        "ttft p50",
        "ttft p95",
        "tok/s",
        "lat p50",
        "lat p95",
        "$/Mtok in",
        "$/Mtok out",
    )
    rows = [header]
    for name, e in document["loci"].items():
        rate = e.get("error_rate")
        rows.append(
            (
                name,
                e["zone"],
                f"{e['samples']}/{e['requests'] - e['denied']}",
                "-" if rate is None else f"{rate * 100:.1f}",
                _ms(e["p50_ttft_ms"]),
                _ms(e["p95_ttft_ms"]),
                _num(e["tokens_per_s"], 1),
                _ms(e["p50_latency_ms"]),
                _ms(e["p95_latency_ms"]),
                _num(e["usd_per_mtok_in"], 3),
                _num(e["usd_per_mtok_out"], 3),
            )
        )
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            str(cell).ljust(w) if i < 2 else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for name, entry in document["loci"].items():
        if entry.get("errors"):
            errors = ", ".join(f"{k} x{v}" for k, v in entry["errors"].items())
            lines.append(f"{name}: errors: {errors}")
        if entry.get("denied"):
            lines.append(f"{name}: {entry['denied']} prompt(s) denied by policy, not sent")
    for name, reason in document.get("skipped", {}).items():
        lines.append(f"{name}: not measured: {reason}")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- command line -----------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench",
        help="measure each locus (TTFT, tokens/s, latency, errors, cost); write profiles",
        description="Stream requests to each locus through the router (the policy still applies) "
        "and write the profile file that `profiles:` in the config loads.",
    )
    bench.add_argument("--config", help="locus config file (default: LOCUS_CONFIG or built in)")
    bench.add_argument("--loci", help="comma-separated locus names (default: every locus)")
    bench.add_argument(
        "--prompts",
        type=Path,
        help='JSONL file of {"prompt": ...} lines (default: a small built-in set)',
    )
    bench.add_argument("--requests", type=int, default=20, help="measured requests per locus")
    bench.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    bench.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    bench.add_argument("--warmup", type=int, default=1, help="uncounted requests per locus first")
    bench.add_argument(
        "--out",
        type=Path,
        help=f"profile file to write (default: the config's profiles, else {DEFAULT_OUT})",
    )
    bench.add_argument("--json", action="store_true", help="print the profile document as JSON")
    bench.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    loci = [name.strip() for name in args.loci.split(",") if name.strip()] if args.loci else None
    prompts = read_prompts(args.prompts) if args.prompts else None
    out = args.out or config.profiles or DEFAULT_OUT
    document = run_bench(
        config,
        loci=loci,
        prompts=prompts,
        requests=args.requests,
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        warmup=args.warmup,
        progress=sys.stderr.isatty(),
    )
    if not document["loci"]:
        reasons = "; ".join(f"{name}: {why}" for name, why in document["skipped"].items())
        raise BenchError(f"no locus could be measured ({reasons}); nothing written")
    written = write_profiles(document, out)
    if args.json:
        print(json.dumps(written, indent=2))
    else:
        print(format_table(document))
        kept = sorted(set(written["loci"]) - set(document["loci"]))
        print(f"\nwrote {out}" + (f" (kept earlier profiles of {', '.join(kept)})" if kept else ""))
        print(f"use it: `profiles: {out}` in the config, or LOCUS_PROFILES={out}")
    return 0

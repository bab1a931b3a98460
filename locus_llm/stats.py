"""Per-locus measured numbers and circuit breakers, kept current from live traffic.

Moving averages (EWMA) of time to first token, decode speed, end-to-end latency and error rate.
A locus never measured reports `measured: False` and the config's priors. The breaker opens after
`failure_threshold` consecutive failures, and lets one probe through after `cooldown_s`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from locus_llm.errors import ConfigError

DEFAULT_TTFT_MS = {"device": 150.0, "onprem": 300.0, "cloud": 600.0}
DEFAULT_TOKENS_PER_S = {"device": 60.0, "onprem": 60.0, "cloud": 80.0}


@dataclass
class LocusStats:
    calls: int = 0
    errors: int = 0
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    latency_ms: float | None = None
    error_rate: float = 0.0
    cost_usd: float = 0.0
    consecutive_failures: int = 0
    opened_at: float | None = None  # monotonic time the breaker opened; None when closed


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else old + alpha * (new - old)


class Stats:
    def __init__(
        self, *, alpha: float = 0.2, failure_threshold: int = 5, cooldown_s: float = 30.0
    ) -> None:
        self.alpha = alpha
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._stats: dict[str, LocusStats] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LocusStats:
        with self._lock:
            return LocusStats(**asdict(self._stats.setdefault(name, LocusStats())))

    def record_success(
        self,
        name: str,
        *,
        latency_ms: float,
        ttft_ms: float | None = None,
        tokens_out: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        with self._lock:
            s = self._stats.setdefault(name, LocusStats())
            s.calls += 1
            s.latency_ms = _ewma(s.latency_ms, latency_ms, self.alpha)
            first = ttft_ms if ttft_ms is not None else latency_ms
            s.ttft_ms = _ewma(s.ttft_ms, first, self.alpha)
            decode_ms = latency_ms - first
            if tokens_out > 1 and decode_ms > 0:
                s.tokens_per_s = _ewma(
                    s.tokens_per_s, (tokens_out - 1) * 1000 / decode_ms, self.alpha
                )
            s.error_rate = _ewma(s.error_rate, 0.0, self.alpha)
            s.cost_usd += cost_usd
            s.consecutive_failures = 0
            s.opened_at = None

    def record_failure(self, name: str) -> None:
        with self._lock:
            s = self._stats.setdefault(name, LocusStats())
            s.calls += 1
            s.errors += 1
            s.error_rate = _ewma(s.error_rate, 1.0, self.alpha)
            s.consecutive_failures += 1
            if s.consecutive_failures >= self.failure_threshold:
                s.opened_at = time.monotonic()  # (re)open: a failed probe restarts the cooldown

    def healthy(self, name: str) -> bool:
        """Closed, or open long enough that one probe may go through (half-open)."""
        with self._lock:
            s = self._stats.get(name)
            if s is None or s.opened_at is None:
                return True
            return time.monotonic() - s.opened_at >= self.cooldown_s

    def profile(
        self,
        name: str,
        zone: str,
        *,
        expected_ttft_ms: float | None = None,
        expected_tokens_per_s: float | None = None,
    ) -> dict[str, Any]:
        """What selection and the policy see: measured numbers, else priors, marked as such."""
        s = self.get(name)
        return {
            "measured": s.ttft_ms is not None,
            "p50_ttft_ms": round(
                s.ttft_ms if s.ttft_ms is not None else expected_ttft_ms or DEFAULT_TTFT_MS[zone], 3
            ),
            "tokens_per_s": round(
                s.tokens_per_s
                if s.tokens_per_s is not None
                else expected_tokens_per_s or DEFAULT_TOKENS_PER_S[zone],
                3,
            ),
            "error_rate": round(s.error_rate, 4),
            "healthy": self.healthy(name),
        }

    def to_dict(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: asdict(s) for name, s in self._stats.items()}

    def load_profiles(self, path: Path) -> None:
        """Seed the averages from a `locus bench` profile file: {locus: {p50_ttft_ms, tokens_per_s}}."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read locus profiles: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: locus profiles must be a JSON object")
        with self._lock:
            for name, entry in data.get("loci", data).items():
                if not isinstance(entry, dict):
                    raise ConfigError(f"{path}: loci.{name} must be an object of measurements")
                s = self._stats.setdefault(name, LocusStats())
                if entry.get("error_rate") is not None:
                    s.error_rate = float(entry["error_rate"])
                if entry.get("p50_ttft_ms") is not None:
                    s.ttft_ms = float(entry["p50_ttft_ms"])
                if entry.get("tokens_per_s") is not None:
                    s.tokens_per_s = float(entry["tokens_per_s"])
                if entry.get("p50_latency_ms") is not None:
                    s.latency_ms = float(entry["p50_latency_ms"])

"""Rank the loci the policy allows: capability floor, then latency budget, then cost (or latency).

Only allowed loci are ever scored, so the plan — primary and fallbacks — can never name a denied
locus. Every score is kept for the decision record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Score:
    locus: str
    zone: str
    capability: int
    meets_floor: bool
    predicted_latency_ms: float
    within_budget: bool
    predicted_cost_usd: float
    measured: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["predicted_latency_ms"] = round(self.predicted_latency_ms, 1)
        data["predicted_cost_usd"] = round(self.predicted_cost_usd, 8)
        return data


@dataclass(frozen=True)
class Plan:
    loci: list[str]  # primary first, then fallbacks in order
    scores: dict[str, Score]
    below_floor: bool  # no allowed locus meets the capability floor: best effort, said out loud

    @property
    def primary(self) -> str | None:
        return self.loci[0] if self.loci else None


def score(
    name: str,
    locus: dict[str, Any],
    request: dict[str, Any],
    floor: int,
    latency_budget_ms: float | None,
) -> Score:
    tokens_in, tokens_out = request["tokens_in"], request["tokens_out_est"]
    latency = locus["p50_ttft_ms"] + tokens_out * 1000 / max(locus["tokens_per_s"], 1e-6)
    cost = (tokens_in * locus["usd_per_mtok_in"] + tokens_out * locus["usd_per_mtok_out"]) / 1e6
    return Score(
        locus=name,
        zone=locus["zone"],
        capability=locus["capability"],
        meets_floor=locus["capability"] >= floor,
        predicted_latency_ms=latency,
        within_budget=latency_budget_ms is None or latency <= latency_budget_ms,
        predicted_cost_usd=cost,
        measured=bool(locus.get("measured")),
    )


def select(
    allowed: list[str], policy_input: dict[str, Any], floor: int, objective: str = "cost"
) -> Plan:
    """Order the allowed loci into a plan. Loci under the floor drop out if any locus meets it."""
    request = policy_input["request"]
    budget = policy_input["context"].get("latency_budget_ms")
    scores = {
        name: score(name, policy_input["loci"][name], request, floor, budget) for name in allowed
    }

    def key(s: Score) -> tuple:
        cheap, fast = round(s.predicted_cost_usd, 10), round(s.predicted_latency_ms, 3)
        first, second = (cheap, fast) if objective == "cost" else (fast, cheap)
        return (not s.within_budget, first, second, -s.capability, s.locus)

    strong_enough = [s for s in scores.values() if s.meets_floor]
    if strong_enough:
        ordered = sorted(strong_enough, key=key)
        return Plan([s.locus for s in ordered], scores, below_floor=False)
    # Nothing allowed is strong enough: try the strongest first rather than the cheapest.
    ordered = sorted(scores.values(), key=lambda s: (-s.capability, *key(s)))
    return Plan([s.locus for s in ordered], scores, below_floor=bool(ordered))

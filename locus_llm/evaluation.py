"""Offline evaluation of difficulty routing: how much quality a router keeps per strong-model call.

Input: JSONL of prompts, each with per-model quality scores in [0, 1] under `scores` (the format
of LLMRouter's and RouteLLM's evaluation files). A router gives every prompt a score; at a
threshold t the prompts scoring >= t go to the strong model, the rest to the weak one. Raising t
sends fewer calls to the strong model — the sweep over t is the cost–quality curve.

Metrics (RouteLLM's): PGR(share) = (quality − weak) / (strong − weak), the performance gap
recovered at a share of strong calls; APGR is its area over share ∈ [0, 1] (random routing: 0.5);
CPT(x) is the smallest share of strong calls reaching PGR x. Ties in a router's score are routed
together, the curve linear between them (the expectation of breaking ties at random).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from locus_llm.errors import LocusError

ROUTERS = ("difficulty", "length", "random")


class EvaluationError(LocusError, ValueError):
    """The evaluation input is unusable; the message says which file and why."""


def load_scored_prompts(
    path: str | Path, strong: str | None = None, weak: str | None = None
) -> tuple[list[str], np.ndarray, np.ndarray, str, str]:
    """Prompts and the strong/weak model's quality on each.

    Without names: the model with the highest mean score is `strong`, the lowest `weak`.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split(
            "\n"
        )  # not splitlines: JSON strings may hold U+2028
    except OSError as exc:
        raise EvaluationError(f"cannot read {path}: {exc}") from None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path}:{number}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise EvaluationError(f"{path}:{number}: each line needs a string 'prompt'")
        if not isinstance(row.get("scores"), dict) or not row["scores"]:
            raise EvaluationError(f"{path}:{number}: each line needs 'scores' {{model: quality}}")
        rows.append(row)
    if len(rows) < 2:
        raise EvaluationError(f"{path}: need at least two scored prompts, found {len(rows)}")
    models = sorted(set.intersection(*(set(r["scores"]) for r in rows)))
    if len(models) < 2:
        raise EvaluationError(f"{path}: fewer than two models are scored on every prompt")
    means = {m: float(np.mean([float(r["scores"][m]) for r in rows])) for m in models}
    strong = strong or max(models, key=means.__getitem__)
    weak = weak or min(models, key=means.__getitem__)
    for name in (strong, weak):
        if name not in models:
            raise EvaluationError(
                f"{path}: model {name!r} not scored on every prompt; have {models}"
            )
    if strong == weak:
        raise EvaluationError(f"strong and weak model are the same: {strong!r}")
    prompts = [r["prompt"] for r in rows]
    strong_q = np.array([float(r["scores"][strong]) for r in rows])
    weak_q = np.array([float(r["scores"][weak]) for r in rows])
    return prompts, strong_q, weak_q, strong, weak


@dataclass(frozen=True)
class RoutingCurve:
    """Quality against share of strong calls for one router, over every threshold it offers."""

    thresholds: list[float]  # descending; point i routes score >= thresholds[i] to strong
    strong_share: list[float]  # ascending, from 0 to 1
    quality: list[float]
    strong_quality: float
    weak_quality: float

    def pgr(self) -> np.ndarray:
        gap = self.strong_quality - self.weak_quality
        if abs(gap) < 1e-12:
            return np.ones(len(self.quality))
        return (np.asarray(self.quality) - self.weak_quality) / gap

    def apgr(self) -> float:
        """Area under PGR over share of strong calls (trapezoids: ties split evenly)."""
        x, y = np.asarray(self.strong_share), self.pgr()
        return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))

    def cpt(self, target: float) -> float:
        """Smallest share of strong calls whose PGR reaches `target` (linear between points)."""
        return _first_crossing(np.asarray(self.strong_share), self.pgr(), target)

    def share_for_quality(self, fraction_of_strong: float) -> float:
        """Smallest share of strong calls reaching `fraction_of_strong` of the strong quality."""
        target = fraction_of_strong * self.strong_quality
        return _first_crossing(np.asarray(self.strong_share), np.asarray(self.quality), target)


def _first_crossing(x: np.ndarray, y: np.ndarray, target: float) -> float:
    if y[0] >= target:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] >= target:
            rise = y[i] - y[i - 1]
            step = 0.0 if rise <= 0 else (target - y[i - 1]) / rise
            return float(x[i - 1] + step * (x[i] - x[i - 1]))
    return math.nan


def routing_curve(
    router_scores: Sequence[float] | np.ndarray,
    strong_quality: Sequence[float] | np.ndarray,
    weak_quality: Sequence[float] | np.ndarray,
) -> RoutingCurve:
    """Sweep the threshold over every distinct router score (higher score → strong model)."""
    scores = np.asarray(router_scores, dtype=float)
    strong_q = np.asarray(strong_quality, dtype=float)
    weak_q = np.asarray(weak_quality, dtype=float)
    if not (len(scores) == len(strong_q) == len(weak_q)) or len(scores) == 0:
        raise EvaluationError("router scores and qualities must be non-empty and equally long")
    if not np.all(np.isfinite(scores)):
        raise EvaluationError("router scores must be finite")
    n = len(scores)
    gain = strong_q - weak_q
    thresholds = [math.inf]
    share = [0.0]
    quality = [float(weak_q.mean())]
    for t in np.unique(scores)[::-1]:
        chosen = scores >= t
        thresholds.append(float(t))
        share.append(float(chosen.sum() / n))
        quality.append(float((weak_q.sum() + gain[chosen].sum()) / n))
    return RoutingCurve(thresholds, share, quality, float(strong_q.mean()), float(weak_q.mean()))


def curve_summary(curve: RoutingCurve, cost_ratio: float = 0.0) -> dict[str, float | None]:
    """The headline numbers. `cost_ratio` = price of a weak call / price of a strong call."""
    share95 = curve.share_for_quality(0.95)

    def clean(value: float) -> float | None:
        return None if math.isnan(value) else round(value, 4)

    saving = math.nan if math.isnan(share95) else 1 - (share95 + (1 - share95) * cost_ratio)
    return {
        "apgr": clean(curve.apgr()),
        "cpt50": clean(curve.cpt(0.5)),
        "cpt80": clean(curve.cpt(0.8)),
        "strong_share_at_95pct_quality": clean(share95),
        "cost_saving_at_95pct_quality": clean(saving),
    }


def length_scores(prompts: Sequence[str]) -> np.ndarray:
    """The prompt-length baseline: longer prompts are taken to be harder."""
    return np.array([len(p.split()) for p in prompts], dtype=float)


def difficulty_scores(prompts: Sequence[str], model_dir: str | Path | None = None) -> np.ndarray:
    from locus_llm.analysis.classifier import RouterClassifier

    classifier = RouterClassifier.load(model_dir)
    return np.array([classifier.classify(p).difficulty for p in prompts])


def random_curve(strong_q: np.ndarray, weak_q: np.ndarray) -> RoutingCurve:
    """Random routing in expectation: one tie over all prompts, a straight line."""
    return routing_curve(np.zeros(len(strong_q)), strong_q, weak_q)


def evaluate_routing(
    data_path: str | Path,
    strong: str | None = None,
    weak: str | None = None,
    out_dir: str | Path | None = None,
    model_dir: str | Path | None = None,
    scorer: Callable[[Sequence[str]], np.ndarray] | None = None,
    cost_ratio: float = 0.0,
) -> dict[str, Any]:
    """Curves of the difficulty router, the length baseline and random routing on one file.

    Writes `<stem>_routing.json` and `<stem>_routing.png` into `out_dir` when given. `scorer`
    replaces the packaged classifier (e.g. an oracle, in tests).
    """
    prompts, strong_q, weak_q, strong, weak = load_scored_prompts(data_path, strong, weak)
    score = scorer(prompts) if scorer is not None else difficulty_scores(prompts, model_dir)
    curves = {
        "difficulty": routing_curve(score, strong_q, weak_q),
        "length": routing_curve(length_scores(prompts), strong_q, weak_q),
        "random": random_curve(strong_q, weak_q),
    }
    summary: dict[str, Any] = {
        "data": str(data_path),
        "prompts": len(prompts),
        "strong": strong,
        "weak": weak,
        "strong_quality": round(float(strong_q.mean()), 4),
        "weak_quality": round(float(weak_q.mean()), 4),
        "cost_ratio": cost_ratio,
        "routers": {name: curve_summary(c, cost_ratio) for name, c in curves.items()},
        "table": _quality_table(curves),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = Path(data_path).stem
        (out / f"{stem}_routing.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_curves(curves, out / f"{stem}_routing.png", f"{stem}: {strong} vs {weak}")
        summary["files"] = [str(out / f"{stem}_routing.json"), str(out / f"{stem}_routing.png")]
    return summary


def _quality_at(curve: RoutingCurve, share: float) -> float:
    return float(np.interp(share, curve.strong_share, curve.quality))


def _quality_table(curves: dict[str, RoutingCurve]) -> list[dict[str, float]]:
    """Quality of each router at fixed shares of strong calls."""
    rows = []
    for share in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        row = {"strong_share": share}
        row.update({name: round(_quality_at(c, share), 4) for name, c in curves.items()})
        rows.append(row)
    return rows


def plot_curves(curves: dict[str, RoutingCurve], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.2), dpi=110)
    styles = {"difficulty": "-", "length": "--", "random": ":"}
    for name, curve in curves.items():
        label = f"{name} (APGR {curve.apgr():.3f})"
        axes.plot(curve.strong_share, curve.quality, styles.get(name, "-"), label=label)
    any_curve = next(iter(curves.values()))
    axes.axhline(any_curve.strong_quality, color="grey", linewidth=0.6)
    axes.axhline(any_curve.weak_quality, color="grey", linewidth=0.6)
    axes.set_xlabel("share of calls sent to the strong model")
    axes.set_ylabel("mean quality")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`locus eval routing --data FILE [--strong M] [--weak M] [--out DIR]`."""
    evaluate = sub.add_parser("eval", help="offline evaluations")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True)
    routing = kinds.add_parser("routing", help="cost–quality curve of difficulty routing")
    routing.add_argument("--data", required=True, help="JSONL: prompt + scores {model: quality}")
    routing.add_argument("--strong", help="strong model name (default: best mean score)")
    routing.add_argument("--weak", help="weak model name (default: worst mean score)")
    routing.add_argument("--out", default=".", help="directory for the JSON summary and PNG")
    routing.add_argument("--model", help="router model directory (default: the packaged one)")
    routing.add_argument(
        "--cost-ratio", type=float, default=0.0, help="weak call price / strong call price"
    )
    routing.set_defaults(handler=_run_routing)


def _run_routing(args: argparse.Namespace) -> int:
    summary = evaluate_routing(
        args.data, args.strong, args.weak, args.out, args.model, cost_ratio=args.cost_ratio
    )
    print(f"{summary['prompts']} prompts, strong={summary['strong']} weak={summary['weak']}")
    for name, numbers in summary["routers"].items():
        print(f"  {name:10s} " + "  ".join(f"{k}={v}" for k, v in numbers.items()))
    for path in summary.get("files", []):
        print(f"wrote {path}")
    return 0

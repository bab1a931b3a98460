"""Quality of the router classifier's difficulty score and task head, with figures.

    .venv/bin/python benchmarks/eval_difficulty.py [--model DIR] [--data DIR] [--out DIR]

Writes into --out (default: the model directory):
  difficulty_eval.json              ROC-AUC for "a strong model is needed" on llmrouter_sample
                                    (difficulty score vs prompt length), routing summaries
  routellm_sample_routing.{png,json}   GPT-4 vs Mixtral cost–quality curve
  llmrouter_sample_routing.{png,json}  nemotron-51B vs mistral-7B cost–quality curve
  confusion.png                     task confusion matrix on the dev split (from metrics.json)
and the mean difficulty per task type on dev-split task_prompts rows (no scores there: it shows
whether simple work is judged easy).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from locus_llm.analysis.classifier import RouterClassifier, packaged_model_dir
from locus_llm.analysis.train import (
    DEFAULT_SHARED_DATA,
    MERGED_TASKS,
    SHARED_DATA_ENV,
    Example,
    difficulty_label,
    group_key,
    in_dev,
    prompt_text,
    roc_auc,
    split_models,
)
from locus_llm.evaluation import evaluate_routing, length_scores

ROUTELLM = ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
LLMROUTER = ("llama-3.1-nemotron-51b-instruct", "mistral-7b-instruct-v0.3")


def strong_needed_auc(model: RouterClassifier, path: Path) -> dict[str, object]:
    rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
    small, strong = split_models(rows[0]["scores"])
    labels = np.array([difficulty_label(r["scores"], small, strong) >= 0.5 for r in rows])
    prompts = [r["prompt"] for r in rows]
    difficulty = np.array([model.classify(p).difficulty for p in prompts])
    per_task = {}
    for task in sorted({r["task_name"] for r in rows}):
        mask = np.array([r["task_name"] == task for r in rows])
        per_task[task] = {
            "rows": int(mask.sum()),
            "strong_needed_rate": round(float(labels[mask].mean()), 3),
            "mean_difficulty": round(float(difficulty[mask].mean()), 3),
        }
    return {
        "rows": len(rows),
        "positives": int(labels.sum()),
        "label": "mean over 7-9B models of max(0, best 49-70B score - model score) >= 0.5",
        "auc_difficulty": round(roc_auc(labels, difficulty), 4),
        "auc_length": round(roc_auc(labels, length_scores(prompts)), 4),
        "auc_benchmark_oracle": benchmark_oracle_auc(path.parent / "llmrouter_train.jsonl", rows),
        "calibration": calibration(labels, difficulty),
        "per_task": per_task,
    }


def benchmark_oracle_auc(train_path: Path, sample: list[dict]) -> float:
    """AUC of a router that knows each prompt's benchmark and scores it with that benchmark's
    strong-needed rate on the training rows: what benchmark identity alone is worth, i.e. a
    ceiling for anything with no signal within a benchmark."""
    held_out = {r["id"] for r in sample}
    train = [json.loads(line) for line in train_path.read_text().split("\n") if line.strip()]
    train = [r for r in train if r["id"] not in held_out]
    small, strong = split_models(train[0]["scores"])
    needed: dict[str, list[bool]] = {}
    for row in train:
        label = difficulty_label(row["scores"], small, strong) >= 0.5
        needed.setdefault(row["task_name"], []).append(label)
    labels = np.array([difficulty_label(r["scores"], small, strong) >= 0.5 for r in sample])
    rates = np.array([np.mean(needed[r["task_name"]]) for r in sample])
    return round(roc_auc(labels, rates), 4)


def calibration(labels: np.ndarray, difficulty: np.ndarray) -> list[dict[str, float]]:
    """Observed strong-needed rate per difficulty bin: is the score a usable probability?"""
    edges = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0001]
    table = []
    for low, high in zip(edges, edges[1:], strict=False):
        mask = (difficulty >= low) & (difficulty < high)
        if mask.any():
            table.append(
                {
                    "bin": f"[{low:.1f}, {min(high, 1.0):.1f}{']' if high > 1 else ')'}",
                    "rows": int(mask.sum()),
                    "mean_difficulty": round(float(difficulty[mask].mean()), 3),
                    "strong_needed_rate": round(float(labels[mask].mean()), 3),
                }
            )
    return table


def difficulty_by_task(model: RouterClassifier, path: Path, per_task: int = 150) -> dict:
    """Mean difficulty the model gives each task type, on dev-split task_prompts rows."""
    rows = [json.loads(line) for line in path.read_text().split("\n") if line.strip()]
    seen: dict[str, list[float]] = {}
    for row in rows:
        task = MERGED_TASKS.get(row["task_type"], row["task_type"])
        if not in_dev(Example(text="", group=group_key(row["prompt"])), 15):
            continue
        if len(seen.setdefault(task, [])) < per_task:
            seen[task].append(model.classify(prompt_text(row)).difficulty)
    return {
        t: {"rows": len(v), "mean_difficulty": round(float(np.mean(v)), 3)}
        for t, v in sorted(seen.items())
    }


def plot_confusion(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = metrics["tasks"]
    matrix = np.array(metrics["task_dev"]["confusion"], dtype=float)
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(6.4, 5.4), dpi=110)
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            if matrix[i, j]:
                color = "white" if share[i, j] > 0.5 else "black"
                axes.text(
                    j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color
                )
    axes.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(tasks)), tasks, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    f1 = metrics["task_dev"]["macro_f1"]
    axes.set_title(f"task type, dev split (macro-F1 {f1:.3f})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="model directory (default: the packaged one)")
    parser.add_argument("--data", default=os.environ.get(SHARED_DATA_ENV, DEFAULT_SHARED_DATA))
    parser.add_argument("--out", help="output directory (default: the model directory)")
    args = parser.parse_args()

    model_dir = Path(args.model) if args.model else packaged_model_dir()
    out = Path(args.out) if args.out else model_dir
    out.mkdir(parents=True, exist_ok=True)
    samples = Path(args.data) / "router_eval_sample"
    model = RouterClassifier.load(model_dir)

    report: dict[str, object] = {
        "llmrouter_strong_needed": strong_needed_auc(model, samples / "llmrouter_sample.jsonl")
    }
    for name, (strong, weak) in (("routellm_sample", ROUTELLM), ("llmrouter_sample", LLMROUTER)):
        summary = evaluate_routing(samples / f"{name}.jsonl", strong, weak, out, model_dir)
        report[name] = {
            k: summary[k]
            for k in ("strong", "weak", "strong_quality", "weak_quality", "routers", "table")
        }
    report["task_prompts_dev_difficulty"] = difficulty_by_task(
        model, Path(args.data) / "task_prompts" / "train.jsonl"
    )
    metrics_file = model_dir / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        if "task_dev" in metrics:
            plot_confusion(metrics, out / "confusion.png")
    (out / "difficulty_eval.json").write_text(json.dumps(report, indent=2) + "\n")

    auc = report["llmrouter_strong_needed"]
    print(
        f"llmrouter_sample strong-needed AUC: difficulty {auc['auc_difficulty']}, "  # type: ignore[index]
        f"length {auc['auc_length']}, benchmark oracle {auc['auc_benchmark_oracle']}"
    )  # type: ignore[index]
    for row in auc["calibration"]:  # type: ignore[index]
        print(
            f"  difficulty {row['bin']}: {row['rows']} rows, strong needed {row['strong_needed_rate']}"
        )
    for name in ("routellm_sample", "llmrouter_sample"):
        for router, numbers in report[name]["routers"].items():  # type: ignore[index]
            print(f"{name:17s} {router:10s} " + "  ".join(f"{k}={v}" for k, v in numbers.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

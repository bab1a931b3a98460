"""Entity-level precision / recall of the sensitivity detector, span-matched the way
presidio-research's SpanEvaluator matches (character IoU after dropping skip words, adjacent
same-type spans merged, several predictions may together cover one annotation).

    python benchmarks/eval_pii.py                       # our held-out-template test split
    python benchmarks/eval_pii.py --data other.json     # any presidio-research format file
    python benchmarks/eval_pii.py --baseline            # + presidio out of the box, same data

The headline numbers are presidio-research's "PII" precision / recall: a span counts as found
whatever type it was given (a name called an organisation is still not sent to the cloud in
clear). Per-type figures (type must match too) are printed beside them.

Label mapping (dataset → ours), documented in ner_train.LABEL_MAP: GPE / LOCATION /
STREET_ADDRESS / ADDRESS / ZIP_CODE → LOCATION, DOMAIN_NAME → URL, TITLE / PREFIX → not an entity
(dropped from the gold spans, as presidio-research does for types no recognizer targets); every
other label keeps its name.
"""

from __future__ import annotations

import argparse
import json
import re
import string
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locus_llm.analysis.ner_train import LABEL_MAP, Sample, split_by_template, to_sample  # noqa: E402

_TOKEN = re.compile(r"[^\s@]+@[^\s@]+\.\w+|https?://\S+|\w+|[^\w\s]")


def skip_words() -> set[str]:
    """presidio-research's skip list: punctuation, spaCy's English stop words, address and
    time filler words."""
    from spacy.lang.en.stop_words import STOP_WORDS

    extra = {"'s", "st.", "p.o.", "mr.", "mrs.", "y/o", "inc."}
    extra |= set(
        [
            "street",
            "st",
            "de",
            "rue",
            "via",
            "and",
            "a",
            "the",
            "or",
            "do",
            "as",
            "of",
            "day",
            "address",
            "country",
            "state",
            "city",
            "zip",
            "po",
            "apt",
            "unit",
            "corner",
            "box",
            "suite",
            "miss",
            "year",
            "years",
            "month",
            "months",
            "old",
            "morning",
            "noon",
            "afternoon",
            "night",
            "evening",
            "this",
            "first",
            "last",
            "week",
            "weeks",
            "weekend",
            "days",
            "age",
            "ago",
            "inc",
            "ltd",
        ]
    )
    return set(string.punctuation) | set(STOP_WORDS) | extra


SKIP = skip_words()


def tokens(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _TOKEN.finditer(text)]


def tag(toks: list[tuple[int, int]], spans: list[tuple[str, int, int]]) -> list[str]:
    tags = []
    for a, b in toks:
        hit = next((t for t, s, e in spans if a < e and b > s), "O")
        tags.append(hit)
    return tags


def spans_from_tags(
    text: str, toks: list[tuple[int, int]], tags: list[str]
) -> list[dict[str, Any]]:
    """IO spans, merged across skip words of the same type, each with its normalised chars."""
    raw: list[dict[str, Any]] = []
    for i, t in enumerate(tags):
        if t == "O":
            continue
        if raw and raw[-1]["type"] == t and raw[-1]["last"] == i - 1:
            raw[-1]["last"] = i
        else:
            raw.append({"type": t, "first": i, "last": i})
    merged: list[dict[str, Any]] = []
    for span in raw:
        if merged and merged[-1]["type"] == span["type"]:
            between = [text[a:b].lower() for a, b in toks[merged[-1]["last"] + 1 : span["first"]]]
            if all(w in SKIP for w in between):
                merged[-1]["last"] = span["last"]
                continue
        merged.append(span)
    out = []
    for span in merged:
        chars: set[int] = set()
        for a, b in toks[span["first"] : span["last"] + 1]:
            if text[a:b].lower() not in SKIP:
                chars.update(range(a, b))
        if chars:
            start, end = toks[span["first"]][0], toks[span["last"]][1]
            out.append({"type": span["type"], "chars": chars, "start": start, "end": end})
    return out


def iou(chars: set[int], others: list[set[int]]) -> float:
    union_pred: set[int] = set().union(*others) if others else set()
    union = chars | union_pred
    return len(chars & union_pred) / len(union) if union else 0.0


def evaluate(samples: list[Sample], predict: Any, threshold: float) -> dict[str, Any]:
    tp = predicted = annotated = 0
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    errors: list[dict[str, Any]] = []
    started = time.perf_counter()
    for sample in samples:
        toks = tokens(sample.text)
        gold = spans_from_tags(sample.text, toks, tag(toks, sample.spans))
        pred = spans_from_tags(sample.text, toks, tag(toks, predict(sample.text)))
        annotated += len(gold)
        for g in gold:
            per_type[g["type"]]["annotated"] += 1
        for p in pred:
            per_type[p["type"]]["predicted"] += 1
        used: set[int] = set()
        used_typed: set[int] = set()
        for g in gold:
            overlapping = [
                i for i, p in enumerate(pred) if i not in used and g["chars"] & p["chars"]
            ]
            chosen: list[int] = []
            best = 0.0
            for i in sorted(overlapping, key=lambda i: pred[i]["start"]):
                score = iou(g["chars"], [pred[j]["chars"] for j in chosen + [i]])
                if score > best:
                    chosen.append(i)
                    best = score
            if best >= threshold:
                tp += 1
                predicted += 1
                used.update(chosen)
            else:
                errors.append(
                    {
                        "kind": "FN",
                        "type": g["type"],
                        "text": sample.text,
                        "value": sample.text[g["start"] : g["end"]],
                    }
                )
            typed = [i for i in overlapping if pred[i]["type"] == g["type"] and i not in used_typed]
            if typed and iou(g["chars"], [pred[i]["chars"] for i in typed]) >= threshold:
                per_type[g["type"]]["tp"] += 1
                used_typed.update(typed)
        for i, p in enumerate(pred):
            if i not in used:
                predicted += 1
                errors.append(
                    {
                        "kind": "FP",
                        "type": p["type"],
                        "text": sample.text,
                        "value": sample.text[p["start"] : p["end"]],
                    }
                )
    seconds = time.perf_counter() - started
    precision = tp / predicted if predicted else 0.0
    recall = tp / annotated if annotated else 0.0
    f2 = 5 * precision * recall / (4 * precision + recall) if precision + recall else 0.0
    types = {
        t: {
            "annotated": c["annotated"],
            "predicted": c["predicted"],
            "precision": round(c["tp"] / c["predicted"], 3) if c["predicted"] else None,
            "recall": round(c["tp"] / c["annotated"], 3) if c["annotated"] else None,
        }
        for t, c in sorted(per_type.items())
    }
    return {
        "sentences": len(samples),
        "annotated": annotated,
        "predicted": predicted,
        "true_positives": tp,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f2": round(f2, 4),
        "iou_threshold": threshold,
        "seconds": round(seconds, 2),
        "per_type": types,
        "errors": errors,
    }


def our_predictor(ner: str, ner_min_score: float | None = None) -> Any:
    from locus_llm.analysis.sensitivity import SensitivityConfig, SensitivityDetector

    config = SensitivityConfig(ner=ner)
    if ner_min_score is not None:
        config.ner_min_score = ner_min_score
    detector = SensitivityDetector(config)
    return lambda text: [(e.type, e.start, e.end) for e in detector.detect(text)]


def baseline_predictor() -> Any:
    """presidio as it comes (pattern recognizers, offline, no NER model), default threshold."""
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    registry = RecognizerRegistry()
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine)
    return lambda text: [
        (r.entity_type, r.start, r.end) for r in analyzer.analyze(text, language="en")
    ]


def load(path: Path | None) -> list[Sample]:
    if path is None:
        return split_by_template()[1]
    return [to_sample(row) for row in json.loads(path.read_text())]


def report(name: str, result: dict[str, Any]) -> None:
    print(
        f"{name}: PII precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
        f"F2 {result['f2']:.3f}  ({result['true_positives']}/{result['annotated']} annotated, "
        f"{result['predicted']} predicted, IoU ≥ {result['iou_threshold']}, {result['seconds']} s)"
    )
    for etype, row in result["per_type"].items():
        print(
            f"    {etype:20s} annotated {row['annotated']:4d}  predicted {row['predicted']:4d}  "
            f"P {row['precision']}  R {row['recall']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, help="presidio-research JSON (default: our test split)"
    )
    parser.add_argument(
        "--iou", type=float, default=0.9, help="IoU threshold (presidio-research default 0.9)"
    )
    parser.add_argument("--ner", default="onnx", choices=["onnx", "none", "spacy"])
    parser.add_argument(
        "--baseline", action="store_true", help="also score presidio out of the box"
    )
    parser.add_argument("--ner-min-score", type=float, help="override the config NER cut-off")
    parser.add_argument("--errors", type=int, default=0, help="print this many errors")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    samples = load(args.data)
    unmapped = sorted({t for s in samples for t, _, _ in s.spans} - set(LABEL_MAP.values()))
    if unmapped:
        print(f"labels kept under their own name: {unmapped}")
    results = {"ours": evaluate(samples, our_predictor(args.ner, args.ner_min_score), args.iou)}
    report(f"locus ({args.ner} NER)", results["ours"])
    if args.baseline:
        results["presidio_default"] = evaluate(samples, baseline_predictor(), args.iou)
        report("presidio out of the box", results["presidio_default"])
    for error in results["ours"]["errors"][: args.errors]:
        print(
            f"  {error['kind']} {error['type']:14s} {error['value']!r:40s} in {error['text'][:90]!r}"
        )
    if args.out:
        slim = {k: {kk: vv for kk, vv in v.items() if kk != "errors"} for k, v in results.items()}
        args.out.write_text(json.dumps(slim, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

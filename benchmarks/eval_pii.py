"""Entity-level precision / recall of the sensitivity detector, span-matched exactly as
presidio-research's SpanEvaluator does (presidio-evaluator 0.3.2, the current release; its
defaults: character-level IoU, threshold 0.9, skip words on).

    python -m locus_llm.analysis.ner_train --pairs 0.15 --single-org 0.3 --out M  # ~5-8 min
    python benchmarks/eval_pii.py --model-dir M         # our held-out-template test split
    python benchmarks/eval_pii.py --model-dir M --baseline  # + presidio out of the box
    python benchmarks/eval_pii.py --data other.json     # any presidio-research format file
    python benchmarks/eval_pii.py --fold K --model-dir M  # clean dev fold K (0-2); M trained
                                                        # with ner_train --exclude-fold K

The shipped NER model was trained on every template, our test split included (its recipe was
chosen and scored first): the test split is scored with the same recipe trained without it,
and the script refuses a model on templates its labels.json says it saw. Clean development:
rules and training changes are judged on three dev folds of the training templates
(ner_train.dev_fold), each scored with a model trained without that fold's templates
(`python -m locus_llm.analysis.ner_train --exclude-fold K --out M`). The test split is scored
once, at the end.

The steps, each as presidio-evaluator 0.3.2 takes it (span_to_tag.py, evaluation/
span_evaluator.py, data_objects.Span); the numbers were checked equal to that package's own
SpanEvaluator run on the same tokens and predictions:

1. Tokens: spaCy's English tokenizer (presidio-research uses en_core_web_sm, whose tokenizer is
   the rule-based English one that `spacy.blank("en")` gives without a download); whitespace
   tokens included.
2. IO tags: a token takes the type of the first entity it STARTS inside ([start, end)), or of an
   entity lying wholly inside it. Gold and predictions alike.
3. Spans: maximal runs of one tag. A span's normalised tokens drop skip words (punctuation,
   spaCy's English stop words and presidio-research's fillers: "street", "apt", "mr.", "inc",
   "years", ...); a span of skip words only is dropped. Its normalised range runs from its first
   kept token's start to its last kept token's end. Two runs of the same type with only skip
   words between them are merged.
4. Two passes: per type (tags as they are) and global PII (every non-O tag read as "PII" BEFORE
   the runs are formed, so touching entities of different types form one PII span). The
   headline is the global pass: a name called an organisation is still not sent in clear.
5. Matching, per annotation: the predictions whose IoU with it is > 0. One: a true positive if
   IoU >= threshold (and, per type, the type agrees), else a false negative and a false
   positive. Several: their characters are pooled per type (presidio-research's
   `_calculate_combined_iou`, inclusive ranges); a true positive if the annotation's own type
   reaches the threshold. Every such verdict counts one prediction; a prediction overlapping
   no annotation counts one false positive. Pairwise IoU = overlap / hull of the normalised
   ranges (Span.iou); precision = TP / predicted, recall = TP / annotated.

Not followed: presidio-research's main branch has since moved to "span ids" (touching entities
stay apart even at the PII level); that is unreleased, and on this data (addresses annotated in
pieces, first and last names as separate spans) it scores the tagging of template fragments
rather than what reaches the cloud.

Label mapping (dataset → ours), documented in ner_train.LABEL_MAP: GPE / LOCATION /
STREET_ADDRESS / ADDRESS / ZIP_CODE → LOCATION, DOMAIN_NAME → URL, TITLE / PREFIX → not an entity
(dropped from the gold spans, as presidio-research's entity mapping does for types no model
targets); every other label keeps its name.
"""

from __future__ import annotations

import argparse
import functools
import json
import string
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from locus_llm.analysis.ner_train import (  # noqa: E402
    LABEL_MAP,
    MODEL_DIR,
    Sample,
    dev_fold,
    split_by_template,
    to_sample,
)


def skip_words() -> set[str]:
    """presidio-research's skip list (presidio_evaluator/evaluation/skipwords.py)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    extra = {" ", "", "\n", "\n\n", "\n\n\n", "\n\n\n\n", "\t", "\t\t", "\t\t\t"}
    extra |= {"\t\t\t\t", ">>", ">>>", ">>>>", ">>>>>", ">>>>>>", "'s", "st.", "p.o."}
    extra |= {"mr.", "mrs.", "y/o", "inc."}
    extra |= {
        *("street", "st", "de", "rue", "via", "and", "a", "the", "or", "do", "as", "of"),
        *("day", "address", "country", "state", "city", "zip", "po", "apt", "unit", "corner"),
        *("box", "suite", "miss", "year", "years", "month", "months", "old", "morning"),
        *("noon", "afternoon", "night", "evening", "this", "first", "last", "week", "weeks"),
        *("weekend", "days", "age", "ago", "inc", "ltd"),
    }
    return set(string.punctuation) | set(STOP_WORDS) | extra


SKIP = skip_words()


@functools.cache
def _tokenizer() -> Any:
    import spacy

    return spacy.blank("en").tokenizer


def tokens(text: str) -> list[tuple[int, str]]:
    """(start, text) of each spaCy English token."""
    return [(t.idx, t.text) for t in _tokenizer()(text)]


def io_tags(toks: list[tuple[int, str]], spans: list[tuple[str, int, int]]) -> list[str]:
    """presidio-research's span_to_tag (IO scheme) for disjoint spans."""
    tags = []
    for idx, word in toks:
        tag = "O"
        for etype, s, e in spans:
            if s <= idx < e or (idx <= s <= idx + len(word) and idx <= e <= idx + len(word)):
                tag = etype
                break
        tags.append(tag)
    return tags


@dataclass
class Span:
    type: str
    start: int  # raw characters of its tokens, for error listings
    end: int
    low: int  # normalised range [low, high)
    high: int
    first: int  # token positions [first, after)
    after: int


def runs(toks: list[tuple[int, str]], tags: list[str]) -> list[Span]:
    """Spans from IO tags (_create_spans), then same-type neighbours across skip words merged
    (_merge_adjacent_spans)."""
    spans: list[Span] = []
    i = 0
    while i < len(toks):
        if tags[i] == "O":
            i += 1
            continue
        j = i
        while j + 1 < len(toks) and tags[j + 1] == tags[i]:
            j += 1
        kept = [(a, w) for a, w in toks[i : j + 1] if w.lower() not in SKIP]
        if kept:
            low, high = min(a for a, _ in kept), max(a + len(w) for a, w in kept)
            end = toks[j][0] + len(toks[j][1])
            spans.append(Span(tags[i], toks[i][0], end, low, high, i, j + 1))
        i = j + 1
    merged: list[Span] = []
    for span in spans:
        if merged and merged[-1].type == span.type:
            between = toks[merged[-1].after : span.first]
            if all(w.lower().strip() in SKIP for _, w in between):
                last = merged[-1]
                merged[-1] = Span(
                    last.type,
                    last.start,
                    span.end,
                    min(last.low, span.low),
                    max(last.high, span.high),
                    last.first,
                    span.after,
                )
                continue
        merged.append(span)
    return merged


def pair_iou(a: Span, b: Span) -> float:
    """Span.iou with normalised indices: overlap over the hull."""
    if a.high < b.low or b.high < a.low:
        return 0.0
    inter = min(a.high, b.high) - max(a.low, b.low)
    if inter == 0:
        return 0.0
    union = max(a.high, b.high) - min(a.low, b.low)
    return inter / union if union else 0.0


def pooled_iou(gold: Span, preds: list[Span]) -> float:
    """_calculate_combined_iou: inclusive ranges, later predictions from one char earlier."""
    mine = set(range(gold.low, gold.high + 1))
    theirs: set[int] = set()
    for k, p in enumerate(preds):
        theirs |= set(range(p.low, p.high + 1)) if k == 0 else set(range(p.low - 1, p.high))
    union = mine | theirs
    return len(mine & theirs) / len(union) if union else 0.0


def match(gold: list[Span], pred: list[Span], threshold: float) -> dict[str, Any]:
    """One sentence by _match_predictions_with_annotations: true positives, predictions counted,
    per-type counts, and the missed gold / failed prediction indices for error listings."""
    counts: Counter[str] = Counter()
    missed: list[int] = []
    failed: set[int] = set()
    touched: set[int] = set()
    for k, g in enumerate(gold):
        counts[f"annotated|{g.type}"] += 1
        overlapping = sorted(
            (i for i, p in enumerate(pred) if pair_iou(g, p) > 0), key=lambda i: pred[i].start
        )
        touched.update(overlapping)
        by_type: dict[str, list[int]] = defaultdict(list)
        for i in overlapping:
            by_type[pred[i].type].append(i)
        found = False
        for etype, members in by_type.items():
            counts[f"predicted|{etype}"] += 1
            if len(overlapping) == 1:  # one overlap: the pairwise IoU; several: pooled
                iou = pair_iou(g, pred[members[0]])
            else:
                iou = pooled_iou(g, [pred[i] for i in members])
            if etype == g.type and iou >= threshold:
                counts[f"tp|{etype}"] += 1
                found = True
            else:
                failed.update(members)
        if not found:
            missed.append(k)
    for i, p in enumerate(pred):
        if i not in touched:
            counts[f"predicted|{p.type}"] += 1
            failed.add(i)
    tp = sum(v for key, v in counts.items() if key.startswith("tp|"))
    predicted = sum(v for key, v in counts.items() if key.startswith("predicted|"))
    return {"tp": tp, "predicted": predicted, "counts": counts, "missed": missed, "failed": failed}


def evaluate(samples: list[Sample], predict: Any, threshold: float) -> dict[str, Any]:
    tp = predicted = annotated = 0
    per_type: dict[str, Counter[str]] = defaultdict(Counter)
    errors: list[dict[str, Any]] = []
    started = time.perf_counter()
    for sample in samples:
        toks = tokens(sample.text)
        gold_tags = io_tags(toks, sample.spans)
        pred_tags = io_tags(toks, sorted(predict(sample.text), key=lambda s: s[1]))
        per = match(runs(toks, gold_tags), runs(toks, pred_tags), threshold)
        for key, value in per["counts"].items():
            kind, etype = key.split("|")
            per_type[etype][kind] += value
        # the global PII pass: the headline
        gold = runs(toks, ["O" if x == "O" else "PII" for x in gold_tags])
        pred = runs(toks, ["O" if x == "O" else "PII" for x in pred_tags])
        result = match(gold, pred, threshold)
        annotated += len(gold)
        tp += result["tp"]
        predicted += result["predicted"]
        listed = [("FN", gold[k]) for k in result["missed"]]
        listed += [("FP", pred[i]) for i in sorted(result["failed"])]
        for kind, span in listed:
            value = sample.text[span.start : span.end]
            errors.append({"kind": kind, "type": span.type, "text": sample.text, "value": value})
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


def our_predictor(
    ner: str, ner_min_score: float | None = None, model_dir: Path | None = None
) -> Any:
    from locus_llm.analysis.sensitivity import SensitivityConfig, SensitivityDetector

    config = SensitivityConfig(ner=ner, ner_model_dir=str(model_dir) if model_dir else None)
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


def unseen_by(model_dir: Path, split: str) -> bool:
    """Whether the NER model in `model_dir` was trained with `split` ("test", "fold1") held out,
    as its labels.json records (models from before that record held out the test split only)."""
    meta = json.loads((model_dir / "labels.json").read_text())
    return split in meta.get("held_out", ["test"])


def load(path: Path | None, fold: int | None = None) -> list[Sample]:
    if fold is not None:
        return dev_fold(fold)
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
    parser.add_argument("--fold", type=int, choices=(0, 1, 2), help="a clean dev fold instead")
    parser.add_argument(
        "--iou", type=float, default=0.9, help="IoU threshold (presidio-research default 0.9)"
    )
    parser.add_argument("--ner", default="onnx", choices=["onnx", "none", "spacy"])
    parser.add_argument(
        "--baseline", action="store_true", help="also score presidio out of the box"
    )
    parser.add_argument("--ner-min-score", type=float, help="override the config NER cut-off")
    parser.add_argument("--model-dir", type=Path, help="an NER model directory to score")
    parser.add_argument("--dump", type=Path, help="write our predictions (type, start, end) here")
    parser.add_argument("--errors", type=int, default=0, help="print this many errors")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    split = "test" if args.fold is None else f"fold{args.fold}"
    model_dir = args.model_dir or MODEL_DIR
    if args.data is None and args.ner == "onnx" and not unseen_by(model_dir, split):
        print(
            f"error: the NER model in {model_dir} was trained on the {split} templates, so it "
            "cannot be scored on them; train one that holds them out (python -m "
            "locus_llm.analysis.ner_train --out DIR [--exclude-fold K]) and pass --model-dir DIR",
            file=sys.stderr,
        )
        return 2
    samples = load(args.data, args.fold)
    unmapped = sorted({t for s in samples for t, _, _ in s.spans} - set(LABEL_MAP.values()))
    if unmapped:
        print(f"labels kept under their own name: {unmapped}")
    predict = our_predictor(args.ner, args.ner_min_score, args.model_dir)
    predictions: list[Any] = []

    def recorded(text: str) -> Any:
        predictions.append(predict(text))
        return predictions[-1]

    results = {"ours": evaluate(samples, recorded, args.iou)}
    if args.dump:
        args.dump.write_text(json.dumps(predictions))
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

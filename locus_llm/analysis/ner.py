"""Names, places and organisations without downloads: our own ONNX token classifier.

The model (locus_llm/models/ner/) is the first layers of all-MiniLM-L6-v2 fine-tuned as a BIO
tagger on presidio-research synthetic sentences, int8-quantised (see ner_train.py and
MODEL_CARD.md). The encoder's vocabulary is uncased, so the word's shape (Capitalised, ALL CAPS,
digits …) is fed beside each word piece: capitalisation is the strongest cue for a name.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from presidio_analyzer import EntityRecognizer, RecognizerResult

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "ner"
CASE_VOCAB = 6  # 0 special, 1 lower, 2 Capitalised, 3 UPPER, 4 has digits, 5 other
WINDOW = 128  # word pieces per inference window, [CLS]/[SEP] included
STRIDE = 96  # windows overlap by WINDOW - 2 - STRIDE pieces so no entity loses its context
BATCH = 16


@functools.lru_cache(maxsize=1 << 16)
def word_shape(word: str) -> int:
    letters = [c for c in word if c.isalpha()]
    if any(c.isdigit() for c in word):
        return 4
    if not letters:
        return 5
    if all(c.isupper() for c in letters):
        return 3 if len(letters) > 1 else 2
    if letters[0].isupper():
        return 2
    return 1


def case_ids_for(text: str, offsets: list[tuple[int, int]]) -> list[int]:
    """The shape of the whole word each piece belongs to (0 for special tokens)."""
    cases = []
    n = len(text)
    for a, b in offsets:
        if a == b:
            cases.append(0)
            continue
        start, end = a, b
        while start > 0 and text[start - 1].isalnum():
            start -= 1
        while end < n and text[end].isalnum():
            end += 1
        cases.append(word_shape(text[start:end]))
    return cases


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


_NAME_BREAK = re.compile(r"\n|[\"“”«»]")
_WORD = re.compile(r"\S+")


# Titles are not part of the name (presidio-research labels them apart); words that start a
# chat turn are not names.
_HONORIFICS = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "dame", "rev", "lord"}
_NOT_NAMES = {
    "bot",
    "user",
    "assistant",
    "sir",
    "madam",
    "dear",
    "hi",
    "hello",
    "thanks",
    "customer",
}


def _lower_word(word: str) -> bool:
    return word.isalpha() and word.islower()


def tidy(
    text: str, span: tuple[str, int, int, float], mixed_case: bool
) -> list[tuple[str, int, int, float]]:
    """Cut a name or organisation where no name continues: at a line break or a quote, and
    before trailing lower-case words ("Charlotte Mathiassen | as a beneficiary"). In text that
    uses capitals at all, a name with no capital letter is dropped. Addresses are left whole:
    they do run over lines. Honorifics are cut from the front of a name."""
    etype, start, end, score = span
    if etype not in ("PERSON", "ORGANIZATION", "NRP"):
        return [span]
    pieces = []
    cut = start
    for match in _NAME_BREAK.finditer(text, start, end):
        pieces.append((cut, match.start()))
        cut = match.end()
    pieces.append((cut, end))
    out = []
    for a, b in pieces:
        words = [m for m in _WORD.finditer(text, a, b)]
        if etype == "PERSON":
            while words and words[0].group().lower().rstrip(".") in _HONORIFICS:
                words.pop(0)
            if mixed_case:
                while words and _lower_word(words[-1].group()):
                    words.pop()
                while words and _lower_word(words[0].group()):
                    words.pop(0)
            if len(words) == 1 and words[0].group().lower() in _NOT_NAMES:
                continue
        if not words:
            continue
        a, b = words[0].start(), words[-1].end()
        if mixed_case and etype != "NRP" and text[a:b] == text[a:b].lower():
            continue
        out.append((etype, a, b, score))
    return out


class OnnxNer:
    """The tagger itself: text in, (type, start, end, score) out. Thread-safe (ORT sessions are)."""

    def __init__(self, model_dir: Path = MODEL_DIR, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_file = model_dir / "model.onnx"
        if not model_file.exists():
            raise FileNotFoundError(
                f"NER model missing at {model_file}: train it with "
                "`python -m locus_llm.analysis.ner_train` or set sensitivity.ner to 'none'"
            )
        meta = json.loads((model_dir / "labels.json").read_text())
        self.labels: list[str] = meta["labels"]
        self.types = sorted({label[2:] for label in self.labels if label != "O"})
        self._b = {t: self.labels.index(f"B-{t}") for t in self.types}
        self._i = {t: self.labels.index(f"I-{t}") for t in self.types}
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # No busy-waiting between ops: on a shared machine spinning threads steal the cores
        # the other requests (and other processes) need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(model_file), options, providers=["CPUExecutionProvider"]
        )
        self._cls = self._tokenizer.token_to_id("[CLS]")
        self._sep = self._tokenizer.token_to_id("[SEP]")

    def predict(self, text: str) -> list[tuple[str, int, int, float]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        ids = encoding.ids
        if not ids:
            return []
        offsets = encoding.offsets
        words = encoding.word_ids
        cases = case_ids_for(text, offsets)
        probs = self._piece_probabilities(ids, cases)
        mixed_case = text != text.lower()
        return [
            piece
            for span in self._spans(probs, offsets, words)
            for piece in tidy(text, span, mixed_case)
        ]

    def _piece_probabilities(self, ids: list[int], cases: list[int]) -> np.ndarray:
        """Label probabilities per piece, averaged over the overlapping windows that saw it."""
        n = len(ids)
        content = WINDOW - 2
        starts = list(range(0, max(n - content, 0) + 1, STRIDE))
        if starts[-1] + content < n:
            starts.append(n - content)
        total = np.zeros((n, len(self.labels)), dtype=np.float32)
        seen = np.zeros((n, 1), dtype=np.float32)
        for i in range(0, len(starts), BATCH):
            group = starts[i : i + BATCH]
            width = min(content, n) + 2
            input_ids = np.zeros((len(group), width), dtype=np.int64)
            case_ids = np.zeros_like(input_ids)
            mask = np.zeros_like(input_ids)
            for row, s in enumerate(group):
                piece = ids[s : s + content]
                input_ids[row, : len(piece) + 2] = [self._cls, *piece, self._sep]
                case_ids[row, 1 : len(piece) + 1] = cases[s : s + content]
                mask[row, : len(piece) + 2] = 1
            (logits,) = self._session.run(
                None, {"input_ids": input_ids, "case_ids": case_ids, "attention_mask": mask}
            )
            p = _softmax(logits)
            for row, s in enumerate(group):
                m = min(content, n - s)
                total[s : s + m] += p[row, 1 : m + 1]
                seen[s : s + m] += 1
        return total / np.maximum(seen, 1)

    def _spans(
        self, probs: np.ndarray, offsets: list[tuple[int, int]], words: list[int | None]
    ) -> list[tuple[str, int, int, float]]:
        """Word-level BIO decoding. A word's label is the best type over the mean of its pieces'
        probabilities (B and I summed), so one odd piece cannot drop half a name; a word starts
        a new entity when its type changes or B outweighs I."""
        n = len(words)
        firsts = [j for j in range(n) if j == 0 or words[j] is None or words[j] != words[j - 1]]
        lasts = [*(k - 1 for k in firsts[1:]), n - 1]
        means = np.add.reduceat(probs, firsts, axis=0) / np.diff([*firsts, n])[:, None]
        b_cols = [self._b[t] for t in self.types]
        i_cols = [self._i[t] for t in self.types]
        by_type = means[:, b_cols] + means[:, i_cols]
        best = by_type.argmax(axis=1)
        rows = np.arange(len(firsts))
        best_score = by_type[rows, best].tolist()
        is_entity = (by_type[rows, best] > means[:, 0]).tolist()
        begins = (
            means[rows, np.array(b_cols)[best]] > means[rows, np.array(i_cols)[best]]
        ).tolist()
        best = best.tolist()
        spans: list[tuple[str, int, int, float]] = []
        current: list[Any] | None = None  # [type, start, end, [scores]]
        for w, first in enumerate(firsts):
            start, end = offsets[first][0], offsets[lasts[w]][1]
            if not is_entity[w]:
                if current is not None:
                    spans.append(_closed(current))
                    current = None
                continue
            etype, score = self.types[best[w]], best_score[w]
            if current is not None and (begins[w] or current[0] != etype):
                spans.append(_closed(current))
                current = None
            if current is None:
                current = [etype, start, end, [score]]
            else:
                current[2] = end
                current[3].append(score)
        if current is not None:
            spans.append(_closed(current))
        return spans


def _closed(current: list[Any]) -> tuple[str, int, int, float]:
    etype, start, end, scores = current
    return etype, start, end, float(sum(scores) / len(scores))


_shared: dict[tuple[Path, int], OnnxNer] = {}
_shared_lock = threading.Lock()


def shared_ner(model_dir: Path = MODEL_DIR, threads: int = 1) -> OnnxNer:
    """One loaded model per process (and thread count): detectors built for different configs
    share it."""
    with _shared_lock:
        key = (model_dir, threads)
        if key not in _shared:
            _shared[key] = OnnxNer(model_dir, threads)
        return _shared[key]


class NerRecognizer(EntityRecognizer):
    """The ONNX tagger as a presidio recognizer."""

    def __init__(
        self, model_dir: Path = MODEL_DIR, min_score: float = 0.5, threads: int = 1
    ) -> None:
        self._ner = shared_ner(model_dir, threads)
        self._min_score = min_score
        super().__init__(
            supported_entities=self._ner.types, name="OnnxNerRecognizer", supported_language="en"
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        wanted = set(entities) if entities else set(self.supported_entities)
        return [
            RecognizerResult(
                etype,
                start,
                end,
                score,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: self.name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
                },
            )
            for etype, start, end, score in self._ner.predict(text)
            if etype in wanted and score >= self._min_score
        ]

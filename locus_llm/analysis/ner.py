"""Names, places and organisations without downloads: our own ONNX token classifier.

The model (locus_llm/models/ner/, see ner_train.py and MODEL_CARD.md) reads each word piece
through a token table distilled from all-MiniLM-L6-v2 (one contextual vector per vocabulary
entry, computed once at training time), adds the word's shape, and tags BIO labels with a few
dilated convolutions: no transformer runs per request, so the cost is a table lookup plus about
0.3 M multiply-adds per piece, linear in the text's length. The encoder's vocabulary is uncased,
so the word's shape (Capitalised, ALL CAPS, digits …) is fed beside each piece: capitalisation
is the strongest cue for a name.

An older model directory (a truncated transformer with `attention_mask`, labels.json without
"architecture") still loads and runs in overlapping 128-piece windows.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from presidio_analyzer import EntityRecognizer, RecognizerResult

from locus_llm.analysis.recognizers import word_end, word_start

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "ner"
CASE_VOCAB = 6  # 0 special, 1 lower, 2 Capitalised, 3 UPPER, 4 has digits, 5 other
WINDOW = 128  # transformer models: word pieces per window, [CLS]/[SEP] included
STRIDE = 96  # windows overlap by WINDOW - 2 - STRIDE pieces so no entity loses its context
BATCH = 16
CHUNK = 2048  # convolutional models: pieces per run; a longer text runs as a batch of chunks


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
_POSSESSIVE = re.compile(r"['’]s\b")


# Titles are not part of the name (presidio-research labels them apart); greetings and words
# that start a chat turn are not names.
_HONORIFICS = {"mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam", "dame", "rev", "lord"}
_GREETINGS = {"hi", "hello", "hey", "dear", "thanks", "greetings"}
_NOT_NAMES = {"bot", "user", "assistant", "sir", "madam", "customer", *_GREETINGS}


def _lower_word(word: str) -> bool:
    return word.isalpha() and word.islower()


def _has_symbol(word: str) -> bool:
    """A currency sign, arrow, box-drawing … (Unicode category S): never part of a name."""
    return not word.isalnum() and any(unicodedata.category(c)[0] == "S" for c in word)


def tidy(
    text: str, span: tuple[str, int, int, float], mixed_case: bool
) -> list[tuple[str, int, int, float]]:
    """Cut a name, place or organisation to the words that belong to it. Names and
    organisations end at a line break or a quote, and a person's name at a possessive
    ("Yuri Bulgakov's Cautionary Tales"); honorifics and greetings ("Hi Freddy") are cut from
    its front, and words with symbols from either end. In text that uses capitals at all,
    lower-case words at the edges of a name or place are not part of it ("north side of Rua
    Diadema 1903"), and a name with no capital letter is dropped. Addresses may run over lines:
    they are only trimmed."""
    etype, start, end, score = span
    if etype == "DATE_TIME":
        return [_whole_times(text, span)]
    if etype not in ("PERSON", "ORGANIZATION", "NRP", "LOCATION"):
        return [span]
    pieces = []
    cut = start
    breaks = [] if etype == "LOCATION" else list(_NAME_BREAK.finditer(text, start, end))
    if etype == "PERSON":
        possessive = _POSSESSIVE.search(text, start, end)
        if possessive:
            end = possessive.start()
            breaks = [m for m in breaks if m.start() < end]
    for match in breaks:
        pieces.append((cut, match.start()))
        cut = match.end()
    pieces.append((cut, end))
    out = []
    for a, b in pieces:
        words = [m for m in _WORD.finditer(text, a, b)]
        if etype == "PERSON":
            while words and words[0].group().lower().rstrip(".,") in _HONORIFICS | _GREETINGS:
                words.pop(0)
        if etype != "NRP":
            while words and _has_symbol(words[-1].group()):
                words.pop()
            while words and _has_symbol(words[0].group()):
                words.pop(0)
        if mixed_case and etype in ("PERSON", "LOCATION"):
            while words and _lower_word(words[-1].group()):
                words.pop()
            while words and _lower_word(words[0].group()):
                words.pop(0)
        if etype == "PERSON" and len(words) == 1 and words[0].group().lower() in _NOT_NAMES:
            continue
        if not words:
            continue
        a, b = words[0].start(), words[-1].end()
        if mixed_case and etype in ("PERSON", "ORGANIZATION") and text[a:b] == text[a:b].lower():
            continue
        out.append((etype, a, b, score))
    return out


# A number of one or two digits or a percentage alone is no name or place ("3... 2... 1...",
# "by 16%"); post codes have three digits or more, or come in groups ("394 13").
_NOT_A_PLACE = re.compile(r"\d{1,2}|[\d.,]+\s?%")


def without_lone_numbers(
    text: str, spans: list[tuple[str, int, int, float]]
) -> list[tuple[str, int, int, float]]:
    """The spans minus short numbers and percentages that no other span touches (across
    spaces or tabs): "13" of the post code "394 13" stays, the "3" of "3... 2... 1..." goes."""
    kept = []
    for i, (etype, start, end, score) in enumerate(spans):
        if etype != "DATE_TIME" and etype != "AGE" and _NOT_A_PLACE.fullmatch(text, start, end):
            before = i > 0 and not text[spans[i - 1][2] : start].strip(" \t")
            after = i + 1 < len(spans) and not text[end : spans[i + 1][1]].strip(" \t")
            if not (before or after):
                continue
        kept.append((etype, start, end, score))
    return kept


# A clock time: the model reads "12:20:39" as pieces and may stop at a colon.
_TIME = re.compile(r"\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?(?:\s?[AaPp]\.?[Mm]\b\.?)?")


def _whole_times(text: str, span: tuple[str, int, int, float]) -> tuple[str, int, int, float]:
    """A date or time span cut inside a clock time runs to the time's ends."""
    etype, start, end, score = span
    for match in _TIME.finditer(text, max(0, start - 12), min(len(text), end + 12)):
        if match.start() < end and match.end() > start:
            start, end = min(start, match.start()), max(end, match.end())
    return etype, start, end, score


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
        self.convolutional = meta.get("architecture") == "conv"
        # pieces each side whose outputs a chunk edge can change: chunks overlap by twice this
        self._margin = 2 * int(meta.get("receptive_field", 8))
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

    def predict(self, text: str, min_score: float = 0.0) -> list[tuple[str, int, int, float]]:
        """(type, start, end, score) of each name, place, organisation, group, age or date
        scoring at least `min_score`."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        ids = encoding.ids
        if not ids:
            return []
        offsets = encoding.offsets
        words = encoding.word_ids
        cases = case_ids_for(text, offsets)
        # Text in capitals throughout carries no capitalisation cue ("I DON'T KNOW WHAT TO PRESS
        # NEXT"): read it as the model reads lower-case text, and tidy it as such.
        shouting = not any(c.islower() for c in text)
        if shouting:
            cases = [1 if c in (2, 3) else c for c in cases]
        if self.convolutional:
            probs = self._chunked_probabilities(ids, cases)
        else:
            probs = self._piece_probabilities(ids, cases)
        mixed_case = not shouting and text != text.lower()
        return without_lone_numbers(
            text,
            [
                piece
                for span in self._spans(probs, offsets, words, text, mixed_case)
                if span[3] >= min_score
                for piece in tidy(text, span, mixed_case)
            ],
        )

    def _chunked_probabilities(self, ids: list[int], cases: list[int]) -> np.ndarray:
        """Label probabilities per piece from the convolutional model: the whole text in one run
        up to CHUNK pieces; beyond, equal chunks overlapping by two margins, all in one batched
        run, each piece taken from the chunk where it lies furthest from an edge."""
        n = len(ids)
        ids_row = np.asarray(ids, dtype=np.int64)
        cases_row = np.asarray(cases, dtype=np.int64)
        if n <= CHUNK:
            (probs,) = self._session.run(
                None, {"input_ids": ids_row[None, :], "case_ids": cases_row[None, :]}
            )
            return probs[0]
        step = CHUNK - 2 * self._margin
        starts = list(range(0, n - CHUNK, step)) + [n - CHUNK]
        out = np.empty((n, len(self.labels)), dtype=np.float32)
        for i in range(0, len(starts), BATCH):
            group = starts[i : i + BATCH]
            feed = {
                "input_ids": np.stack([ids_row[s : s + CHUNK] for s in group]),
                "case_ids": np.stack([cases_row[s : s + CHUNK] for s in group]),
            }
            (probs,) = self._session.run(None, feed)
            for row, s in enumerate(group):
                lo = 0 if s == 0 else self._margin
                hi = CHUNK if s + CHUNK >= n else CHUNK - self._margin
                out[s + lo : s + hi] = probs[row, lo:hi]
        return out

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
        self,
        probs: np.ndarray,
        offsets: list[tuple[int, int]],
        words: list[int | None],
        text: str,
        mixed_case: bool,
    ) -> list[tuple[str, int, int, float]]:
        """Word-level BIO decoding. A word's label is the best type (B and I summed) over its
        pieces' probabilities, each entity label at its highest piece and "O" at its lowest: a
        rare name the tokenizer cuts into many pieces is often recognised from one of them.
        A word starts a new entity when B outweighs I; a change of type alone does not split
        one ("Maika van de Noort" read half as a name, half as a place): the entity takes the
        type with the most probability over its words. Words the model leaves out can still
        join a neighbouring name (see `_joined`)."""
        n = len(words)
        firsts = [j for j in range(n) if j == 0 or words[j] is None or words[j] != words[j - 1]]
        lasts = [*(k - 1 for k in firsts[1:]), n - 1]
        pooled = np.maximum.reduceat(probs, firsts, axis=0)
        pooled[:, 0] = np.minimum.reduceat(probs[:, 0], firsts)
        b_cols = np.array([self._b[t] for t in self.types])
        i_cols = np.array([self._i[t] for t in self.types])
        by_type = pooled[:, b_cols] + pooled[:, i_cols]
        best = by_type.argmax(axis=1)
        rows = np.arange(len(firsts))
        is_entity = (by_type[rows, best] > pooled[:, 0]).tolist()
        begins = (pooled[rows, b_cols[best]] > pooled[rows, i_cols[best]]).tolist()
        best = best.tolist()
        bounds = [(offsets[first][0], offsets[lasts[w]][1]) for w, first in enumerate(firsts)]
        if mixed_case:
            _joined(text, bounds, by_type, is_entity, best, begins, self.types)
        spans: list[tuple[str, int, int, float]] = []
        group: list[int] = []
        for w in range(len(firsts)):
            if group and (not is_entity[w] or begins[w]):
                spans.append(self._closed(group, best, by_type, bounds))
                group = []
            if is_entity[w]:
                group.append(w)
        if group:
            spans.append(self._closed(group, best, by_type, bounds))
        return spans

    def _closed(
        self,
        group: list[int],
        best: list[int],
        by_type: np.ndarray,
        bounds: list[tuple[int, int]],
    ) -> tuple[str, int, int, float]:
        """One entity from its words: the type with the most probability summed over them, the
        mean of each word's own best score (at most 1: B and I, each taken at its highest piece,
        can sum to more)."""
        kinds = {best[w] for w in group}
        kind = max(kinds, key=lambda k: float(by_type[group, k].sum()))
        score = min(1.0, float(np.mean([by_type[w, best[w]] for w in group])))
        return self.types[kind], bounds[group[0]][0], bounds[group[-1]][1], score


# A capitalised word standing alone next to a name, place or organisation joins it when the
# model gives it at least this much entity probability (of any type), though "O" outweighs it:
# the model often loses one half of a name ("Amy Jones" → "Amy", "Shane M Culp" → "M Culp").
# Chosen as a round value on the clean dev folds (0.2 and 0.4 score within a span or two).
JOIN_SCORE = 0.3
_JOINS = ("PERSON", "ORGANIZATION", "LOCATION")


def _joined(
    text: str,
    bounds: list[tuple[int, int]],
    by_type: np.ndarray,
    is_entity: list[bool],
    best: list[int],
    begins: list[bool],
    types: list[str],
) -> None:
    """Extend names, places and organisations (in place) over neighbouring words that are
    capitalised, made of letters only between spaces (not "ex-Zombie"), separated from the
    entity by spaces alone and hold JOIN_SCORE of entity probability. Mixed-case text only:
    elsewhere capitals say nothing."""
    joinable = {types.index(t) for t in _JOINS if t in types}
    mass = by_type.sum(axis=1)
    candidates = [
        w
        for w in np.flatnonzero(mass >= JOIN_SCORE).tolist()
        if not is_entity[w] and _alone(text, *bounds[w])
    ]
    changed = True
    while changed and candidates:
        changed = False
        for w in candidates:
            if is_entity[w]:
                continue
            for side in (w - 1, w + 1):
                if not (0 <= side < len(bounds) and is_entity[side] and best[side] in joinable):
                    continue
                left, right = min(w, side), max(w, side)
                if text[bounds[left][1] : bounds[right][0]].strip(" \t"):
                    continue
                is_entity[w], best[w] = True, best[side]
                if side < w:
                    begins[w] = False
                else:
                    begins[side] = False
                changed = True
                break


def _alone(text: str, start: int, end: int) -> bool:
    """A capitalised word that is the whole of its whitespace-delimited token (trailing
    punctuation aside)."""
    if not text[start : start + 1].isupper():
        return False
    return text[word_start(text, start) : word_end(text, end)].rstrip(",.;:!?").isalpha()


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
            for etype, start, end, score in self._ner.predict(text, self._min_score)
            if etype in wanted
        ]

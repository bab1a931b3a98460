"""See sensitive data in a request and turn it into a data class the policy can act on.

Detection is presidio, offline: every predefined pattern recognizer, the Australian TFN / ABN /
ACN / Medicare recognizers (in every usual written form), secrets, deny-list keywords from the
config, and names / places / organisations from our own ONNX model (or an official spaCy pipeline
the user installed). The data class is the highest minimum class, from the config's table, of the
entities found with enough confidence. Values never leave this module: callers get types, spans
and scores.

Importing this module is cheap: presidio (and the model) load when a detector is built.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator

from locus_llm.profile import DataClass, Entity

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerResult

SECRET_TYPES = (
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
    "GITHUB_TOKEN",
    "GITLAB_TOKEN",
    "SLACK_TOKEN",
    "GOOGLE_API_KEY",
    "STRIPE_KEY",
    "HUGGINGFACE_TOKEN",
    "PRIVATE_KEY",
    "JWT",
    "PASSWORD",
)
AU_TYPES = ("AU_TFN", "AU_ABN", "AU_ACN", "AU_MEDICARE")
KEYWORD_TYPE = "CONFIDENTIAL_KEYWORD"

# Deny-list defaults: phrases that mark a document as not for outside eyes.
DEFAULT_KEYWORDS: dict[str, list[str]] = {
    KEYWORD_TYPE: [
        "board confidential",
        "strictly confidential",
        "commercial in confidence",
        "commercial-in-confidence",
        "attorney-client privileged",
        "legally privileged",
        "not for distribution",
        "M&A",
        "merger and acquisition",
        "insider information",
        "trade secret",
    ]
}


class EntityRule(BaseModel):
    """An entity type's minimum data class, counted once the entity's score reaches min_score."""

    data_class: str
    min_score: float = Field(default=0.5, ge=0.0, le=1.0)

    @field_validator("data_class")
    @classmethod
    def _known_class(cls, value: str) -> str:
        return DataClass.parse(value).name


def _rule(data_class: str, min_score: float = 0.5) -> EntityRule:
    return EntityRule(data_class=data_class, min_score=min_score)


def default_rules() -> dict[str, EntityRule]:
    """The default table. The reasoning, in short:

    RESTRICTED — a value that alone enables fraud or impersonation, or unlocks systems: tax file,
      Medicare, social security and passport numbers, card and bank numbers, every secret.
    CONFIDENTIAL — direct contact details and licence numbers of a person (personal information
      under the Privacy Act), and the deny-list keywords.
    INTERNAL — names, places, organisations, groups, ages, network addresses, business numbers
      (ABN/ACN are public registers): worth knowing, not on their own a reason to keep a
      request off the cloud, since most prompts that name a person or a city are harmless.
    PUBLIC — dates.
    """
    rules = {
        **{t: _rule("RESTRICTED") for t in SECRET_TYPES},
        "AU_TFN": _rule("RESTRICTED"),
        "AU_MEDICARE": _rule("RESTRICTED"),
        "US_SSN": _rule("RESTRICTED"),
        "US_ITIN": _rule("RESTRICTED"),
        "US_PASSPORT": _rule("RESTRICTED", 0.6),
        "UK_NHS": _rule("RESTRICTED"),
        "CREDIT_CARD": _rule("RESTRICTED"),
        "IBAN_CODE": _rule("RESTRICTED"),
        "US_BANK_NUMBER": _rule("RESTRICTED", 0.6),
        "CRYPTO": _rule("CONFIDENTIAL"),
        "MEDICAL_LICENSE": _rule("CONFIDENTIAL"),
        "US_DRIVER_LICENSE": _rule("CONFIDENTIAL", 0.6),
        "EMAIL_ADDRESS": _rule("CONFIDENTIAL"),
        "PHONE_NUMBER": _rule("CONFIDENTIAL", 0.4),
        KEYWORD_TYPE: _rule("CONFIDENTIAL"),
        "AU_ABN": _rule("INTERNAL"),
        "AU_ACN": _rule("INTERNAL"),
        "PERSON": _rule("INTERNAL", 0.6),
        "LOCATION": _rule("INTERNAL", 0.6),
        "ORGANIZATION": _rule("INTERNAL", 0.6),
        "NRP": _rule("INTERNAL", 0.6),
        "AGE": _rule("INTERNAL", 0.6),
        "IP_ADDRESS": _rule("INTERNAL"),
        "MAC_ADDRESS": _rule("INTERNAL"),
        "URL": _rule("PUBLIC"),
        "UUID": _rule("PUBLIC"),
        "DATE_TIME": _rule("PUBLIC"),
    }
    return rules


class SensitivityConfig(BaseModel):
    """What counts as sensitive and how sensitive. Embedded as `LocusConfig.sensitivity`."""

    ner: Literal["onnx", "spacy", "none"] = "onnx"
    spacy_model: str = "en_core_web_lg"  # used when ner == "spacy"; must be installed by the user
    # below score_threshold an entity is not reported; ner_min_score is the NER model's cut-off
    # (a span's mean word score). The NER's spans are reported at the same 0.35 as the rest: on
    # clean dev, 0.5 dropped whole names for one weak word (both seeds: recall +0.5 / +1.6
    # points, precision +0.3 / +0.9, with session 3's decoding; with session 4's the two cut-offs
    # are level, 0.35 keeping recall). Counting a span towards the data class is the rule's
    # min_score below.
    score_threshold: float = Field(default=0.35, ge=0.0, le=1.0)
    ner_min_score: float = Field(default=0.35, ge=0.0, le=1.0)
    ner_threads: int = Field(default=1, ge=1, le=64)  # onnxruntime intra-op threads per call
    ner_model_dir: str | None = None  # a model directory of ner_train's format; None: the packaged
    # nationalities, religions and political groups (NRP) from a word list, where no model span is
    nrp_words: bool = True
    keywords: dict[str, list[str]] = Field(default_factory=lambda: dict(DEFAULT_KEYWORDS))
    rules: dict[str, EntityRule] = Field(default_factory=default_rules)
    default_class: str = "INTERNAL"  # for a reported type missing from `rules`
    context_boost: float = Field(default=0.35, ge=0.0, le=1.0)  # a context word just before a hit

    @field_validator("rules", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """Accept `{"AU_TFN": "RESTRICTED"}` beside `{"AU_TFN": {"data_class": …, "min_score": …}}`;
        entries given replace the defaults of those types, the rest of the defaults stay."""
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {k: v.model_dump() for k, v in default_rules().items()}
        for etype, rule in value.items():
            merged[str(etype).upper()] = {"data_class": rule} if isinstance(rule, str) else rule
        return merged

    @field_validator("default_class")
    @classmethod
    def _known_default(cls, value: str) -> str:
        return DataClass.parse(value).name


def classify(entities: Iterable[Entity], config: SensitivityConfig) -> DataClass:
    """The highest minimum class among entities that reach their rule's score."""
    result = DataClass.PUBLIC
    for entity in entities:
        rule = config.rules.get(entity.type)
        if rule is None:
            level = DataClass.parse(config.default_class)
        elif entity.score >= rule.min_score:
            level = DataClass.parse(rule.data_class)
        else:
            continue
        result = max(result, level)
    return result


def _rank(result: RecognizerResult, config: SensitivityConfig) -> tuple[float, int, int]:
    """Which of two overlapping results wins: the surer one; on a tie (a 9-digit number valid
    as both TFN and ACN) the one that decides the higher class, then the longer."""
    rule = config.rules.get(result.entity_type)
    level = -1
    if rule is None:
        level = DataClass.parse(config.default_class)
    elif result.score >= rule.min_score:
        level = DataClass.parse(rule.data_class)
    return (result.score, int(level), result.end - result.start)


def _from_ner(result: RecognizerResult) -> bool:
    name = (result.recognition_metadata or {}).get("recognizer_name", "")
    return name in ("OnnxNerRecognizer", "SpacyRecognizer")


def resolve_overlaps(
    results: list[RecognizerResult], config: SensitivityConfig
) -> list[RecognizerResult]:
    """Keep non-overlapping results, best first: redaction needs disjoint spans, and a name the
    model sees inside an e-mail address is the e-mail address."""
    # A model's span yields to a confident pattern hit it overlaps without containing: "176"
    # is not a place inside the IP address 41.176.181.243.
    # (Sorted by start, a hit overlapping r starts before r.end and at most the longest hit's
    # length before r.start: a long text's thousands of spans meet only their neighbours.)
    confident = sorted(
        (r for r in results if r.score >= 0.5 and not _from_ner(r)), key=lambda r: r.start
    )
    confident_starts = [p.start for p in confident]
    longest = max((p.end - p.start for p in confident), default=0)

    def crossed(r: RecognizerResult) -> bool:
        low = bisect.bisect_left(confident_starts, r.start - longest)
        high = bisect.bisect_left(confident_starts, r.end)
        return any(
            p.end > r.start and not (r.start <= p.start and p.end <= r.end)
            for p in confident[low:high]
        )

    results = [r for r in results if not _from_ner(r) or not crossed(r)]
    # A pattern hit inside a model span of its own type is a piece of it: the date of
    # "1978-04-13 12:20:39" is the model's whole date and time, not the date alone.
    # The model's spans are disjoint: the one starting last at or before a hit is the only one
    # that can contain it.
    models = sorted((r for r in results if _from_ner(r)), key=lambda r: r.start)
    model_starts = [m.start for m in models]

    def inside_model_span(r: RecognizerResult) -> bool:
        i = bisect.bisect_right(model_starts, r.start) - 1
        if i < 0:
            return False
        m = models[i]
        return (
            m.entity_type == r.entity_type and r.end <= m.end and m.end - m.start > r.end - r.start
        )

    results = [r for r in results if _from_ner(r) or not inside_model_span(r)]
    kept: list[RecognizerResult] = []
    starts: list[int] = []  # kept spans are disjoint: sorted starts and their ends suffice
    ends: list[int] = []
    for result in sorted(results, key=lambda r: _rank(r, config), reverse=True):
        i = bisect.bisect_right(starts, result.start)
        if i > 0 and ends[i - 1] > result.start:  # the kept span starting before overlaps
            continue
        if i < len(starts) and starts[i] < result.end:  # the next kept span starts inside
            continue
        starts.insert(i, result.start)
        ends.insert(i, result.end)
        kept.append(result)
    return sorted(kept, key=lambda r: r.start)


def without_label_words(
    text: str, results: list[RecognizerResult], words: set[str]
) -> list[RecognizerResult]:
    """The model's spans minus those that are a recognizer's context word ("IBAN", "SSN",
    "TFN"): such a word labels the value after it and is no name or place."""
    return [r for r in results if text[r.start : r.end].lower() not in words]


def outside_model_spans(
    results: list[RecognizerResult], found: list[RecognizerResult]
) -> list[RecognizerResult]:
    """The results that overlap none of the model's spans in `found`: where the model has read
    a word in context ("American Express" as a company), a word list defers to it."""
    models = sorted((r for r in found if _from_ner(r)), key=lambda r: r.start)
    starts = [m.start for m in models]
    longest = max((m.end - m.start for m in models), default=0)
    kept = []
    for r in results:
        low = bisect.bisect_left(starts, r.start - longest)
        high = bisect.bisect_left(starts, r.end)
        if not any(m.end > r.start for m in models[low:high]):
            kept.append(r)
    return kept


# A speaker's label at the start of a line: one to three words, a colon, then what they said.
_SPEAKER = re.compile(
    r"(?m)^[ \t]*([^\W\d_][\w'’\-]*(?:[ \t][^\W\d_][\w'’.\-]*){0,2})[ \t]*:(?=[ \t]*\S)"
)
_ROLES = {"user", "assistant", "system", "human", "ai", "bot", "agent", "customer", "q", "a"}
_ROLES |= {"question", "answer", "note", "input", "output", "example", "me", "you"}


def dialogue_speakers(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """In a dialogue ("Koppány: Who are you?\nElizabeth: I'm …") where the model found one
    speaker's name, the other speakers' labels are names too: the model, reading a word
    between a line break and a colon, misses some of them."""
    labels = [m for m in _SPEAKER.finditer(text) if m.group(1).lower() not in _ROLES]
    if len(labels) < 2:
        return []
    mixed_case = text != text.lower()
    people = {(r.start, r.end) for r in results if r.entity_type == "PERSON" and _from_ner(r)}
    if not any(m.span(1) in people for m in labels):
        return []
    taken = sorted((r.start, r.end) for r in results)
    longest = max((b - a for a, b in taken), default=0)
    added = []
    for m in labels:
        start, end = m.span(1)
        if mixed_case and not all(w[0].isupper() for w in m.group(1).split()):
            continue
        low = bisect.bisect_left(taken, (start - longest, 0))
        high = bisect.bisect_left(taken, (end, 0))
        if not any(b > start for _, b in taken[low:high]):  # no result on the label yet
            added.append(_speaker(start, end))
    return added


def _speaker(start: int, end: int) -> RecognizerResult:
    from presidio_analyzer import RecognizerResult

    return RecognizerResult(
        "PERSON", start, end, 0.6, recognition_metadata={"recognizer_name": "DialogueSpeakers"}
    )


def years_not_places(text: str, results: list[RecognizerResult]) -> list[RecognizerResult]:
    """A model's place that is only a number and exactly a year the date pattern found after a
    preposition of time ("founded in 1977") is that year: the model reads "in N" as a place."""
    dates = {(r.start, r.end) for r in results if r.entity_type == "DATE_TIME" and not _from_ner(r)}
    return [
        r
        for r in results
        if not (
            r.entity_type == "LOCATION"
            and _from_ner(r)
            and (r.start, r.end) in dates
            and text[r.start : r.end].isdigit()
        )
    ]


def boost_by_context(
    text: str, results: list[RecognizerResult], context: dict[str, list[str]], boost: float
) -> None:
    """presidio's context enhancer needs spaCy tokens; this is the cheap version: a context word
    of the recognizer in the 48 characters before a hit raises its score."""
    for result in results:
        name = (result.recognition_metadata or {}).get("recognizer_name", "")
        words = context.get(name)
        if not words or result.score >= 1.0:
            continue
        before = text[max(0, result.start - 48) : result.start].lower()
        if any(w in before for w in words):
            result.score = min(1.0, result.score + boost)


def build_analyzer(config: SensitivityConfig) -> tuple[AnalyzerEngine, dict[str, list[str]]]:
    """A presidio AnalyzerEngine that never touches the network, and each recognizer's context.
    The ONNX NER is not in it: see ner_recognizer."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    from locus_llm.analysis import recognizers as ours

    _offline_tldextract()
    nlp_engine = _nlp_engine(config)
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=nlp_engine)
    registry.remove_recognizer("PhoneRecognizer")
    registry.add_recognizer(ours.FastPhoneRecognizer())
    for recognizer in (
        ours.AuTfnAnyFormRecognizer(),
        ours.AuAbnAnyFormRecognizer(),
        ours.AuAcnAnyFormRecognizer(),
        ours.AuMedicareAnyFormRecognizer(),
        ours.SecretsRecognizer(),
        *ours.keyword_recognizers(config.keywords),
        *ours.context_recognizers(),
    ):
        registry.add_recognizer(recognizer)
    # Same recognizers, each behind a cheap candidate prefilter: see recognizers.windowed.
    registry.recognizers = [ours.windowed(r) for r in registry.recognizers]
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=["en"])
    context = {r.name: [w.lower() for w in r.context] for r in registry.recognizers if r.context}
    return analyzer, context


def ner_recognizer(config: SensitivityConfig) -> EntityRecognizer | None:
    """Our ONNX NER as a presidio recognizer (None unless `ner` is "onnx").

    The detector calls it directly rather than through the AnalyzerEngine: the engine's context
    enhancement compares every result with every recognizer and deep-copies them all, which on
    a long text (thousands of name candidates) cost more than the model itself, and it has
    nothing to add here (no context words, no spaCy tokens). A user's own AnalyzerEngine can
    still take it with `registry.add_recognizer`.
    """
    if config.ner != "onnx":
        return None
    from pathlib import Path

    from locus_llm.analysis.ner import MODEL_DIR, NerRecognizer

    model_dir = Path(config.ner_model_dir) if config.ner_model_dir else MODEL_DIR
    return NerRecognizer(model_dir, min_score=config.ner_min_score, threads=config.ner_threads)


def ours_nrp() -> EntityRecognizer:
    from locus_llm.analysis.recognizers import NrpRecognizer

    return NrpRecognizer()


def _nlp_engine(config: SensitivityConfig) -> Any:
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    if config.ner != "spacy":
        return NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    import importlib.util

    if importlib.util.find_spec(config.spacy_model) is None:
        from locus_llm.errors import ConfigError

        raise ConfigError(
            f"sensitivity.ner is 'spacy' but the spaCy pipeline {config.spacy_model!r} is not "
            f"installed: install the official package (python -m spacy download "
            f"{config.spacy_model}) or set sensitivity.ner to 'onnx'"
        )
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": config.spacy_model}],
        }
    )
    return provider.create_engine()


def _offline_tldextract() -> None:
    """presidio's e-mail recognizer calls `tldextract.extract`, whose default extractor fetches
    the public suffix list on first use. Swap in one that only reads the snapshot shipped inside
    the package (and writes no cache)."""
    import tldextract

    offline = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    tldextract.extract = offline  # looked up on the module at call time by presidio
    tldextract.tldextract.TLD_EXTRACTOR = offline


class SensitivityDetector:
    """Finds sensitive entities in a text and says which data class they make it.

    One detector serves every request: building it loads presidio and the model (seconds),
    detect() only reads shared state, so it is safe from many threads at once.
    """

    def __init__(self, config: SensitivityConfig | None = None) -> None:
        self.config = config or SensitivityConfig()
        self._analyzer, self._context = build_analyzer(self.config)
        # context words that are also names of places or brands stay names
        names = {"us", "united", "states", "visa", "discover", "diners", "maestro", "mastercard"}
        names |= {"amex", "jcb", "bitcoin", "medicare"}
        self._context_words = {w for ws in self._context.values() for w in ws} - names
        self._ner = ner_recognizer(self.config)
        self._nrp = ours_nrp() if self.config.nrp_words else None
        # Warm up: compiles every recognizer's regexes now, not racily in the first requests.
        self.detect("Call Jane Citizen on +61 2 9999 9999 or jane@example.com, TFN 123 456 782.")

    def detect(self, text: str) -> list[Entity]:
        """Every sensitive entity in `text` (message index 0: the caller sets it)."""
        if not text or not text.strip():
            return []
        from locus_llm.analysis.recognizers import WINDOW_CACHE

        text = _scrubbed(text)
        # one text per cache: the recognizers' prefilter windows are computed once per text
        token = WINDOW_CACHE.set({})
        try:
            results = self._analyzer.analyze(text=text, language="en", score_threshold=0.0)
        finally:
            WINDOW_CACHE.reset(token)
        if self._ner is not None:
            results += without_label_words(text, self._ner.analyze(text, []), self._context_words)
        if self._nrp is not None:
            results = [self._nrp.retyped(text, r) if _from_ner(r) else r for r in results]
            results += outside_model_spans(self._nrp.analyze(text, []), results)
        results = years_not_places(text, results)
        if self._ner is not None:
            results += dialogue_speakers(text, results)
        boost_by_context(text, results, self._context, self.config.context_boost)
        results = [r for r in results if r.score >= self.config.score_threshold]
        return [
            Entity(type=r.entity_type, start=r.start, end=r.end, score=float(r.score))
            for r in resolve_overlaps(results, self.config)
        ]

    def data_class(self, entities: list[Entity]) -> DataClass:
        return classify(entities, self.config)


def _scrubbed(text: str) -> str:
    """Make odd Unicode visible to ASCII patterns without moving any offset: fullwidth and other
    Unicode digits become ASCII digits, zero-width characters become spaces, NUL becomes a
    space. Each replacement is one character for one, so spans still index the caller's text."""
    return text.translate(_fold_table())


@functools.cache
def _fold_table() -> dict[int, str]:
    import sys
    import unicodedata

    table: dict[int, str] = {0: " "}
    for code in (
        0x200B,
        0x200C,
        0x200D,
        0x2060,
        0xFEFF,
        0x200E,
        0x200F,
        0x202A,
        0x202B,
        0x202C,
        0x202D,
        0x202E,
        0x2066,
        0x2067,
        0x2068,
        0x2069,
        0x00AD,
    ):
        table[code] = " "
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        if char.isdigit():
            value = unicodedata.digit(char, None)
            if value is not None and unicodedata.decimal(char, None) is not None:
                table[code] = str(value)
    # lone surrogates (bytes decoded with surrogateescape) would break the tokenizer
    for code in range(0xD800, 0xE000):
        table[code] = "\ufffd"
    # fullwidth ASCII letters and punctuation (homoglyph-style obfuscation of keys and e-mails)
    for code in range(0xFF01, 0xFF5F):
        table[code] = chr(code - 0xFEE0)
    return table

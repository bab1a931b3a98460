"""Our presidio recognizers: Australian IDs in every usual written form, secrets, deny-lists, and
a phone recognizer that only asks python-phonenumbers about digit runs that could be phones.

Every recognizer here is a plain presidio recognizer, so a user can add them to their own
AnalyzerEngine. Checksums are exposed as functions: the tests generate valid and invalid IDs
with them.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable, Iterable

from presidio_analyzer import EntityRecognizer, LocalRecognizer, Pattern, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import (
    AuAbnRecognizer,
    AuAcnRecognizer,
    AuMedicareRecognizer,
    AuTfnRecognizer,
    PhoneRecognizer,
)

# Separators people write inside IDs: nothing, a space or a dash (one per gap). An ID is not a
# piece of a longer grouped number (a phone "001-253-366-9781", an IP address, the last three
# groups of "58 190 222 950").
_SEP = r"[ \-]?"
_OPEN = r"(?<![\w\-.]|[\-.]\d|\d[ \-])"
_CLOSE = r"(?![\w]|[\-. ]\d)"


def digits_of(value: str) -> list[int]:
    return [int(c) for c in value if c.isdigit()]


def tfn_valid(value: str) -> bool:
    """Tax File Number: 9 digits, weighted sum divisible by 11."""
    d = digits_of(value)
    weights = (1, 4, 3, 7, 5, 8, 6, 9, 10)
    return len(d) == 9 and sum(a * w for a, w in zip(d, weights, strict=True)) % 11 == 0


def abn_valid(value: str) -> bool:
    """Australian Business Number: 11 digits; first digit minus one, weighted sum mod 89."""
    d = digits_of(value)
    if len(d) != 11 or d[0] == 0:
        return False
    d[0] -= 1
    weights = (10, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19)
    return sum(a * w for a, w in zip(d, weights, strict=True)) % 89 == 0


def acn_valid(value: str) -> bool:
    """Australian Company Number: 9 digits, last is the complement of the weighted sum mod 10."""
    d = digits_of(value)
    if len(d) != 9:
        return False
    total = sum(a * w for a, w in zip(d[:8], (8, 7, 6, 5, 4, 3, 2, 1), strict=True))
    return (10 - total % 10) % 10 == d[8]


def medicare_valid(value: str) -> bool:
    """Medicare card number: 10 digits (11 with the individual reference), first 2–6, digit 9 is
    the weighted sum of the first eight mod 10."""
    d = digits_of(value)
    if len(d) not in (10, 11) or not 2 <= d[0] <= 6:
        return False
    total = sum(a * w for a, w in zip(d[:8], (1, 3, 7, 9, 1, 3, 7, 9), strict=True))
    return total % 10 == d[8]


class AuTfnAnyFormRecognizer(AuTfnRecognizer):
    """presidio's TFN recognizer, also for dashes and mixed separators."""

    PATTERNS = [Pattern("TFN", rf"{_OPEN}\d{{3}}{_SEP}\d{{3}}{_SEP}\d{{3}}{_CLOSE}", 0.1)]

    def validate_result(self, pattern_text: str) -> bool:
        return tfn_valid(pattern_text)


class AuAbnAnyFormRecognizer(AuAbnRecognizer):
    PATTERNS = [
        Pattern("ABN", rf"{_OPEN}\d{{2}}{_SEP}\d{{3}}{_SEP}\d{{3}}{_SEP}\d{{3}}{_CLOSE}", 0.1)
    ]

    def validate_result(self, pattern_text: str) -> bool:
        return abn_valid(pattern_text)


class AuAcnAnyFormRecognizer(AuAcnRecognizer):
    PATTERNS = [Pattern("ACN", rf"{_OPEN}\d{{3}}{_SEP}\d{{3}}{_SEP}\d{{3}}{_CLOSE}", 0.1)]

    def validate_result(self, pattern_text: str) -> bool:
        return acn_valid(pattern_text)


class AuMedicareAnyFormRecognizer(AuMedicareRecognizer):
    PATTERNS = [
        Pattern(
            "Medicare",
            rf"{_OPEN}[2-6]\d{{3}}{_SEP}\d{{5}}{_SEP}\d(?:{_SEP}\d)?{_CLOSE}",
            0.1,
        )
    ]

    def validate_result(self, pattern_text: str) -> bool:
        return medicare_valid(pattern_text)


# (entity type, pattern, group holding the secret, score, literal that must occur in the text)
# The literal is a cheap prefilter: most texts skip most patterns without running a regex.
SECRET_PATTERNS: list[tuple[str, str, int, float, str | None]] = [
    ("AWS_ACCESS_KEY", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", 0, 0.95, "AKIA|ASIA|ABIA|ACCA"),
    (
        "AWS_SECRET_KEY",
        r"(?i)aws.{0,20}?(?:secret|key).{0,20}?[=:\"'\s]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])",
        1,
        0.9,
        "aws",
    ),
    ("ANTHROPIC_API_KEY", r"\bsk-ant-[A-Za-z0-9]{2,8}-[A-Za-z0-9_\-]{20,}", 0, 0.99, "sk-ant-"),
    (
        "OPENAI_API_KEY",
        r"\bsk-(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
        0,
        0.95,
        "sk-",
    ),
    (
        "GITHUB_TOKEN",
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}\b",
        0,
        0.99,
        "ghp_|gho_|ghu_|ghs_|ghr_",
    ),
    ("GITHUB_TOKEN", r"\bgithub_pat_[A-Za-z0-9_]{22,}", 0, 0.99, "github_pat_"),
    ("GITLAB_TOKEN", r"\bglpat-[A-Za-z0-9_\-]{20,}", 0, 0.99, "glpat-"),
    ("SLACK_TOKEN", r"\bxox[abprs]-[A-Za-z0-9\-]{10,}", 0, 0.95, "xox"),
    ("GOOGLE_API_KEY", r"\bAIza[0-9A-Za-z_\-]{35}", 0, 0.95, "AIza"),
    ("STRIPE_KEY", r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}", 0, 0.95, "_live_|_test_"),
    ("HUGGINGFACE_TOKEN", r"\bhf_[A-Za-z0-9]{30,}\b", 0, 0.95, "hf_"),
    (
        "PRIVATE_KEY",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]{0,20000}?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)?",
        0,
        1.0,
        "PRIVATE KEY",
    ),
    ("JWT", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*", 0, 0.95, "eyJ"),
    # scheme://user:password@host — the password alone is the secret
    (
        "PASSWORD",
        r"\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@]{1,100}:([^\s@/]{1,200})@[^\s]",
        1,
        1.0,
        "://",
    ),
    # Password=…; (ADO/JDBC connection strings), password: …, api_key = "…"
    (
        "PASSWORD",
        r"(?i)\b(?:password|passwd|pwd|passphrase|secret|client[_\-]?secret|api[_\-]?key"
        r"|access[_\-]?token|auth[_\-]?token|accountkey|sharedaccesskey)"
        r"[\"']?\s{0,3}[:=]\s{0,3}[\"']?([^\s\"',;]{6,200})",
        1,
        0.8,
        "pass|pwd|secret|key|token",
    ),
]


_ASSIGNMENT = re.compile(r"[:=]")


def _has_literal(text: str, lowered: str, literal: str | None) -> bool:
    """Lower-case literals are looked for case-blind, others as written (AKIA…, ghp_…)."""
    if literal is None:
        return True
    haystack = lowered if literal.islower() else text
    return any(part in haystack for part in literal.split("|"))


class SecretsRecognizer(LocalRecognizer):
    """API keys and tokens of the major clouds and LLM providers, private keys, JWTs and
    passwords in connection strings or assignments."""

    def __init__(self) -> None:
        self._patterns = [
            (etype, re.compile(rx), group, score, literal)
            for etype, rx, group, score, literal in SECRET_PATTERNS
        ]
        entities = sorted({p[0] for p in SECRET_PATTERNS})
        super().__init__(supported_entities=entities, name="SecretsRecognizer")

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        wanted = set(entities) if entities else set(self.supported_entities)
        lowered = text.lower()
        for etype, rx, group, score, literal in self._patterns:
            if etype not in wanted or not _has_literal(text, lowered, literal):
                continue
            # An assignment needs a ":" or "=": look only around those (the pattern is slow).
            spans = text_windows(text, _ASSIGNMENT, 40) if group and literal else [(0, len(text))]
            for a, b in spans:
                for match in rx.finditer(text, a, b):
                    start, end = match.span(group)
                    if end > start:
                        results.append(RecognizerResult(etype, start, end, score))
        return results


def keyword_recognizers(
    keywords: dict[str, Iterable[str]], score: float = 0.9
) -> list[LocalRecognizer]:
    """One deny-list recognizer per entity type: case-insensitive, whole words, longest first."""
    recognizers: list[LocalRecognizer] = []
    for etype, words in keywords.items():
        terms = sorted({w.strip() for w in words if w and w.strip()}, key=len, reverse=True)
        if terms:
            recognizers.append(KeywordRecognizer(etype, terms, score))
    return recognizers


class KeywordRecognizer(LocalRecognizer):
    """A deny-list: project code names, "board confidential", "M&A" … Words may hold punctuation
    ("M&A"), so boundaries are "no letter or digit beside it" rather than regex \\b."""

    def __init__(self, entity_type: str, terms: list[str], score: float) -> None:
        body = "|".join(re.escape(t).replace(r"\ ", r"\s+") for t in terms)
        self._regex = re.compile(rf"(?<![\w])(?:{body})(?![\w])", re.IGNORECASE)
        # cheap prefilter: the longest word of some term must occur
        self._needles = {max(t.lower().split(), key=len) for t in terms}
        self._score = score
        super().__init__(supported_entities=[entity_type], name=f"KeywordRecognizer[{entity_type}]")

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        etype = self.supported_entities[0]
        lowered = text.lower()
        if not any(w in lowered for w in self._needles):
            return []
        return [
            RecognizerResult(etype, m.start(), m.end(), self._score)
            for m in self._regex.finditer(text)
        ]


# A run of digits with the punctuation phones are written with, 7 characters or more.
_PHONE_CANDIDATE = re.compile(r"\d[\d \t().\-/]{5,}\d")


class FastPhoneRecognizer(PhoneRecognizer):
    """presidio's PhoneRecognizer, run only around candidate digit runs.

    python-phonenumbers scans the whole text once per region, which makes presidio's phone
    recognizer most of the analysis time (33 of 46 ms per 1,000 words). A phone is always a
    digit run of plausible length, so a regex finds the candidates and the matcher looks only
    at each one (with a little context either side) — same results, a fraction of the time.
    """

    DEFAULT_SUPPORTED_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR", "AU")

    def __init__(self) -> None:
        super().__init__(supported_regions=self.DEFAULT_SUPPORTED_REGIONS)

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        for a, b in text_windows(text, _PHONE_CANDIDATE, 4):
            for result in super().analyze(text[a:b], entities, None):
                result.start += a
                result.end += a
                results.append(result)
        return EntityRecognizer.remove_duplicates(results)


def text_windows(text: str, candidate: re.Pattern[str], pad: int) -> list[tuple[int, int]]:
    """Disjoint windows around each candidate match, widened by `pad` and then out to whitespace
    so that no word is cut: a pattern that cannot cross `pad` characters of whitespace-separated
    text finds exactly what it would find in the whole text."""
    windows: list[tuple[int, int]] = []
    n = len(text)
    for match in candidate.finditer(text):
        a = max(0, match.start() - pad)
        b = min(n, match.end() + pad)
        if windows and a <= windows[-1][1]:  # joins the previous window: only its end grows
            if b > windows[-1][1]:
                windows[-1] = (windows[-1][0], word_end(text, b))
            continue
        a = word_start(text, a)
        b = word_end(text, b)
        if windows and a <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(b, windows[-1][1]))
        else:
            windows.append((a, b))
    return windows


_SPACE = re.compile(r"\s")


def word_end(text: str, b: int) -> int:
    """The first whitespace at or after b (or the end): C-speed search instead of a char loop."""
    found = _SPACE.search(text, b)
    return found.start() if found else len(text)


def word_start(text: str, a: int) -> int:
    """Just after the last whitespace before a. Looked for in the 64 characters before a (a
    longer word is walked back char by char)."""
    if a == 0 or text[a - 1].isspace():
        return a
    lo = max(0, a - 64)
    last = -1
    for found in _SPACE.finditer(text, lo, a):
        last = found.start()
    if last >= 0:
        return last + 1
    while a > 0 and not text[a - 1].isspace():
        a -= 1
    return a


# Windows computed during one detection, shared by the recognizers with the same prefilter
# (five of them look for three digits): set by SensitivityDetector.detect, per thread/task.
WINDOW_CACHE: contextvars.ContextVar[dict[tuple[str, int], list[tuple[int, int]]] | None] = (
    contextvars.ContextVar("locus_window_cache", default=None)
)


def shared_windows(text: str, candidate: re.Pattern[str], pad: int) -> list[tuple[int, int]]:
    cache = WINDOW_CACHE.get()
    if cache is None:
        return text_windows(text, candidate, pad)
    key = (candidate.pattern, pad)
    if key not in cache:
        cache[key] = text_windows(text, candidate, pad)
    return cache[key]


class WindowedRecognizer(EntityRecognizer):
    """Runs a recognizer only on windows around cheap candidates (digits for number patterns, a
    dot between letters for URLs …). presidio's regexes are written for correctness, not speed;
    most of a prose text cannot hold a match, and this skips it."""

    def __init__(self, inner: EntityRecognizer, candidate: str, pad: int = 48) -> None:
        self.inner = inner
        self._candidate = re.compile(candidate)
        self._pad = pad
        super().__init__(
            supported_entities=inner.supported_entities,
            name=inner.name,
            supported_language=inner.supported_language,
            context=inner.context,
        )
        self._id = inner.id  # results keep the inner recognizer's identity

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for a, b in shared_windows(text, self._candidate, self._pad):
            for result in self.inner.analyze(text[a:b], entities, None):
                result.start += a
                result.end += a
                results.append(result)
        return results


# presidio recognizer class name → a regex every one of its matches contains.
CANDIDATES: dict[str, str] = {
    "CreditCardRecognizer": r"\d{4}",
    "UsBankRecognizer": r"\d{8}",
    "UsLicenseRecognizer": r"[A-Z0-9]\d|\d[A-Z]",
    "UsItinRecognizer": r"9\d\d",
    "UsPassportRecognizer": r"\d{8}",
    "UsSsnRecognizer": r"\d{3}",
    "NhsRecognizer": r"\d{3}",
    "IbanRecognizer": r"[A-Za-z]{2}\d{2}",
    "IpRecognizer": r"\d\.\d|[0-9A-Fa-f]:[0-9A-Fa-f]*:|::",
    "MedicalLicenseRecognizer": r"\d{7}",
    "MacAddressRecognizer": r"[0-9A-Fa-f]{2}[:\-.][0-9A-Fa-f]{2}",
    "UrlRecognizer": r"\w\.[A-Za-z]{2}|://",
    "AuTfnAnyFormRecognizer": r"\d{3}",
    "AuAcnAnyFormRecognizer": r"\d{3}",
    "AuAbnAnyFormRecognizer": r"\d{3}",
    "AuMedicareAnyFormRecognizer": r"\d{5}",
}


def windowed(recognizer: EntityRecognizer) -> EntityRecognizer:
    """The recognizer behind a candidate prefilter when we know one for it, else itself."""
    candidate = CANDIDATES.get(type(recognizer).__name__)
    return WindowedRecognizer(recognizer, candidate) if candidate else recognizer


def luhn_valid(value: str) -> bool:
    digits = digits_of(value)
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return len(digits) >= 12 and total % 10 == 0


class ContextNumberRecognizer(LocalRecognizer):
    """A number that is only this entity when the words just before it say so ("card # …",
    "Mobile: …", "aged …"). It catches formats presidio's strict patterns miss (Maestro and
    2-series cards, national phone formats without a country) without flagging every number."""

    def __init__(
        self,
        entity_type: str,
        pattern: str,
        context: list[str],
        score: float,
        validate: Callable[[str], bool] | None = None,
        group: int = 0,
        before: int = 32,
        labels_after: list[str] | None = None,
    ) -> None:
        self._regex = re.compile(pattern)
        # no context words: the pattern itself says what the number is ("aged 71")
        self._context = re.compile(r"(?i)\b(?:" + "|".join(context) + r")\b") if context else None
        # a label written just after the number, as signatures and contact lists do
        # ("416 60 039 office", "3660170548-Fax", "555 0199 (mobile)")
        self._after = (
            re.compile(r"(?i)[ \t]*[\-–:(]?[ \t]*(?:" + "|".join(labels_after) + r")\b")
            if labels_after
            else None
        )
        self._score = score
        self._validate = validate
        self._group = group
        self._before = before
        super().__init__(
            supported_entities=[entity_type], name=f"Context{entity_type.title()}Recognizer"
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results = []
        for match in self._regex.finditer(text):
            start, end = match.span(self._group)
            if self._validate is not None and not self._validate(text[start:end]):
                continue
            if (
                self._context is None
                or self._context.search(text, max(0, match.start() - self._before), match.start())
                or (self._after is not None and self._after.match(text, end))
            ):
                results.append(
                    RecognizerResult(self.supported_entities[0], start, end, self._score)
                )
        return results


def context_recognizers() -> list[EntityRecognizer]:
    return [
        WindowedRecognizer(
            ContextNumberRecognizer(
                "CREDIT_CARD",
                r"(?<![\d\-])\d(?:[ \-]?\d){11,18}(?![\d\-])",
                [
                    "card",
                    "cards",
                    "cc",
                    "credit",
                    "debit",
                    "visa",
                    "mastercard",
                    "amex",
                    "maestro",
                    "charge",
                    "pan",
                ],
                0.85,
                validate=luhn_valid,
            ),
            r"\d{4}",
        ),
        WindowedRecognizer(
            ContextNumberRecognizer(
                "PHONE_NUMBER",
                r"(?<![\w+])\+?\(?\d[\d ().\-]{5,18}\d(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?![\w])",
                [
                    "phone",
                    "mobile",
                    "mob",
                    "tel",
                    "telephone",
                    "cell",
                    "fax",
                    "desk",
                    "call",
                    "sms",
                    "whatsapp",
                    "contact",
                    "registered",
                    "landline",
                    "answering",
                    "reach",
                    "text",
                    "message",
                    "messages",
                    "ring",
                    "dial",
                ],
                0.6,
                validate=lambda v: 7 <= len(digits_of(v)) <= 15,
                before=24,
                labels_after=[
                    "office",
                    "fax",
                    "mobile",
                    "mob",
                    "cell",
                    "tel",
                    "phone",
                    "home",
                    "work",
                    "direct",
                    "landline",
                ],
            ),
            # two digit pairs, maybe apart: "60-56-85-91" has no three digits in a row
            r"\d\d[ ().\-]?\d\d",
        ),
        WindowedRecognizer(
            ContextNumberRecognizer(
                "AGE",
                r"\b(\d{1,3})(?=[ \-]years?[ \-]old\b|\s*y/o\b)",
                [],
                0.7,
                group=1,
            ),
            r"\d",
        ),
        ContextNumberRecognizer(
            "AGE",
            r"\b(?:aged?|age of|at the age of)\s+(\d{1,3})\b",
            [],
            0.7,
            group=1,
        ),
        # "I'll turn 40.", "she turned 65 this year": a number a person turns is an age when
        # the clause ends there or a time word follows
        ContextNumberRecognizer(
            "AGE",
            r"(?i)\bturn(?:s|ed|ing)?\s+(\d{1,3})\b"
            r"(?=\s*(?:[.!?;,]|$|years?\b|this\b|next\b|last\b|today\b|tomorrow\b|on\b))",
            [],
            0.6,
            group=1,
        ),
        # A day of the week is a date ("flew to Oslo on Tuesday morning").
        WindowedRecognizer(
            ContextNumberRecognizer(
                "DATE_TIME",
                r"\b(?:[Mm]on|[Tt]ues|[Ww]ednes|[Tt]hurs|[Ff]ri|[Ss]atur|[Ss]un)days?\b"
                r"(?:[ \t]+(?:morning|afternoon|evening|night)\b)?",
                [],
                0.6,
            ),
            r"day",
            pad=24,
        ),
        # A bare year after a preposition of time ("founded in 1977", "since 2004"): a date.
        WindowedRecognizer(
            ContextNumberRecognizer(
                "DATE_TIME",
                r"(?i)\b(?:in|since|by|until|till|from|before|after|during|circa|around|year)"
                r"\s+((?:1[5-9]|20)\d\d)\b(?![\-/.:]\d|\s?(?:st|nd|rd|th)\b)",
                [],
                0.6,
                group=1,
            ),
            r"\d{4}",
        ),
    ]


# Nationalities, peoples, religions and political groups (presidio's NRP; spaCy's NORP): a closed
# class of words, so a word list finds them in any sentence, where the tagger only knows the
# contexts it was trained on. Adjective and person forms; a plural "s"/"es" is accepted on any.
_NRP_WORDS = """
afghan albanian algerian american andorran angolan antiguan argentine argentinian armenian
australian austrian azerbaijani azeri bahamian bahraini bangladeshi barbadian belarusian belgian
belizean beninese bhutanese bolivian bosnian bosniak botswanan brazilian british briton bruneian
bulgarian burkinabe burmese burundian cambodian cameroonian canadian chadian chilean chinese
colombian comorian congolese croatian cuban cypriot czech dane danish djiboutian dominican dutch
dutchman dutchwoman ecuadorian ecuadorean egyptian emirati english englishman englishwoman
eritrean estonian ethiopian fijian filipino filipina finn finnish french frenchman frenchwoman
gabonese gambian georgian german ghanaian greek greenlander greenlandic grenadian guatemalan
guinean guyanese haitian honduran hungarian icelander icelandic indian indonesian iranian iraqi
irish irishman irishwoman israeli italian ivorian jamaican japanese jordanian kazakh kenyan
korean kosovar kuwaiti kyrgyz laotian latvian lebanese liberian libyan liechtensteiner
lithuanian luxembourger macedonian malagasy malawian malaysian maldivian malian maltese
mauritanian mauritian mexican moldovan monegasque mongolian montenegrin moroccan mozambican
namibian nepalese nepali nicaraguan nigerian nigerien norwegian omani pakistani palestinian
panamanian paraguayan persian peruvian polish portuguese qatari romanian russian rwandan
salvadoran salvadorean samoan saudi scot scottish senegalese serb serbian seychellois
singaporean slovak slovakian slovene slovenian somali spaniard spanish sudanese surinamese swazi
swede swedish swiss syrian taiwanese tajik tanzanian thai tibetan togolese tongan trinidadian
tunisian turk turkish turkmen tuvaluan ugandan ukrainian uruguayan uzbek venezuelan vietnamese
welsh welshman welshwoman yemeni yugoslav zambian zimbabwean
chechen kurd kurdish basque catalan flemish walloon tamil punjabi bengali gujarati pashtun hmong
maori aboriginal inuit cherokee navajo bedouin berber tatar yoruba igbo hausa zulu xhosa maasai
romani sami hispanic latino latina arab asian african european caribbean scandinavian nordic
balkan slavic anglo celtic gaelic
christian catholic protestant anglican baptist methodist lutheran presbyterian evangelical
pentecostal mormon quaker amish mennonite muslim moslem islamic sunni shia shii shiite sufi
ahmadi shi'a shi'i shi'ite jewish jew hasidic hindu buddhist sikh jain bahai baha'i zoroastrian parsi taoist shinto
confucian wiccan druze rastafarian atheist agnostic alawite coptic maronite
democrat republican tory tories labour labor socialist communist marxist leninist maoist
trotskyist fascist nazi libertarian anarchist nationalist zionist unionist loyalist bolshevik
peronist gaullist sandinista baathist islamist
"""
_NRP_PHRASES = """
cape verdean|costa rican|new zealander|north korean|south korean|papua new guinean|saudi arabian
sierra leonean|solomon islander|south african|sri lankan|latin american|north american
south american|central american|middle eastern|african american|native american|roman catholic
greek orthodox|russian orthodox|eastern orthodox|orthodox jewish|social democrat|christian democrat
"""
# Common words in lower case ("polish the car", "a liberal amount", "the labor market") and
# peoples that are also first names: only capitalised.
_NRP_CASED_ONLY = {"polish", "labor", "labour", "christian", "tory", "tories", "nationalist"}
_NRP_CASED_ONLY |= {"unionist", "loyalist", "republican", "democrat", "socialist", "communist"}
_NRP_CASED_ONLY |= {"catholic", "evangelical", "anglo", "nordic", "celtic", "arab", "jain"}
# Language names are not groups: "in English", "translated from Spanish", "French grammar".
_LANGUAGE_BEFORE = {"in", "into", "from", "speak", "speaks", "spoke", "speaking", "learn"}
_LANGUAGE_BEFORE |= {"learning", "translate", "translated", "translating", "fluent", "native"}
_LANGUAGE_BEFORE |= {"study", "studies", "studied", "studying", "teach", "teaches", "teaching"}
_LANGUAGE_BEFORE |= {"taught", "major", "majoring", "majored", "write", "writes", "wrote"}
# A group word followed by one of these is a piece of a proper name: "Czech Republic", "United
# Arab Emirates", "European Union", "Labor Day", "Indian Ocean".
_NAME_TAILS = {"republic", "emirates", "arabia", "union", "day", "ocean", "sea", "empire"}
_NAME_TAILS |= {"kingdom", "federation", "island", "islands", "peninsula", "airlines", "airways"}
_NAME_TAILS |= {"express"}
_LANGUAGE_AFTER = {"language", "languages", "translation", "version", "text", "word", "words"}
_LANGUAGE_AFTER |= {"speaker", "speakers", "grammar", "subtitles", "dictionary", "lesson"}
_LANGUAGE_AFTER |= {"lessons", "course", "class", "teacher", "sentence", "sentences", "phrase"}
_LANGUAGE_AFTER |= {"phrases", "spelling", "keyboard", "locale", "alphabet"}
_NRP_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
_NEXT_WORD = re.compile(r"[\s\-]+([^\W\d_]+)")
_EDGE_PUNCTUATION = "\"'’‘“”.,;:!?()[]{}<>*_/\\|#@&~`"
_PREVIOUS_WORD = re.compile(r"([^\W\d_]+)[^\w]*$")


def nrp_forms() -> dict[str, str]:
    """Every written form of the list (lower case) → its entry: the word, its plurals in "s" and
    "es" ("Russians", "Sikhs"), "-men" for "-man" ("Englishmen"), and each phrase with a plural
    last word ("South Africans")."""
    forms: dict[str, str] = {}
    entries = _NRP_WORDS.split() + [
        " ".join(p.split()) for p in _NRP_PHRASES.replace("\n", "|").split("|") if p.strip()
    ]
    for entry in entries:
        for form in (entry, entry + "s", entry + "es"):
            forms.setdefault(form, entry)
        if entry.endswith("man"):
            forms.setdefault(entry[:-3] + "men", entry)
    return forms


class NrpRecognizer(LocalRecognizer):
    """Nationalities, religions and political groups from a word list. In text that uses
    capitals, a word counts when capitalised, or as a lower-case plural ("we are proud
    saudis"); a lower-case singular there is more often a common word ("french fries"). Not a
    group: a language in a language context ("answer in English"), or the first word of a
    proper name ("Czech Republic", "Labor Day"). The detector runs it after the NER model and
    keeps only the hits the model's spans do not touch: the model reads context ("American
    Express" is a company)."""

    def __init__(self, score: float = 0.6) -> None:
        self._forms = nrp_forms()
        self._phrases = [
            (f, set(f.split()))
            for f in sorted((f for f in self._forms if " " in f), key=len, reverse=True)
        ]
        self._score = score
        super().__init__(supported_entities=["NRP"], name="NrpRecognizer")

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if entities and "NRP" not in entities:
            return []
        lowered = text.lower()
        # The words of the text as a set (split and strip run in C), then a search for just the
        # forms among them: a long text costs about one split.
        present = {w.strip(_EDGE_PUNCTUATION) for w in set(lowered.split())}
        present |= {part for w in present if "-" in w for part in w.split("-")}
        wanted = present & self._forms.keys()
        phrases = [f for f, parts in self._phrases if parts <= present]
        if not wanted and not phrases:
            return []
        found: list[tuple[int, int, str]] = []
        for form in wanted:
            at = lowered.find(form)
            while at >= 0:
                found.append((at, at + len(form), form))
                at = lowered.find(form, at + len(form))
        if phrases:
            body = "|".join(re.escape(f).replace(r"\ ", r"[\s\-]+") for f in phrases)
            for match in re.finditer(body, lowered):
                key = " ".join(re.split(r"[\s\-]+", match.group()))
                found.append((match.start(), match.end(), key))
        mixed_case = text != lowered
        results: list[RecognizerResult] = []
        last_end = -1
        # longest first at each start; a hit inside a phrase already taken is skipped
        for start, end, key in sorted(found, key=lambda f: (f[0], f[0] - f[1])):
            if start < last_end or not self._whole_word(lowered, start, end):
                continue
            entry = self._forms[key]
            lower_case = not text[start].isupper()
            if lower_case and (entry in _NRP_CASED_ONLY or (mixed_case and key == entry)):
                continue
            after = _NEXT_WORD.match(lowered, end)
            if after and after.group(1) in _NAME_TAILS:
                continue
            if " " not in entry and self._language_use(lowered, start, after):
                continue
            results.append(RecognizerResult("NRP", start, end, self._score))
            last_end = end
        return results

    def retyped(self, text: str, result: RecognizerResult) -> RecognizerResult:
        """A model's span typed by the list. A group span that is no form of the list is a
        country's name ("Tunisia", "Czech Republic": the model, trained on data that labels a
        few of them as groups, sometimes calls them so): a location. A place that is a form of
        the list ("the film Czech graffiti"), or a person or organisation that is a plural one
        ("we are proud surinameses"), is a group."""
        meta = result.recognition_metadata or {}
        if meta.get("recognizer_name") == self.name:
            return result
        value = " ".join(re.split(r"[\s\-]+", text[result.start : result.end].lower()))
        entry = self._forms.get(value)
        etype = result.entity_type
        if etype == "NRP" and entry is None:
            result.entity_type = "LOCATION"
        elif entry is not None and (
            etype == "LOCATION" or (etype in ("PERSON", "ORGANIZATION") and entry != value)
        ):
            result.entity_type = "NRP"
        return result

    @staticmethod
    def _whole_word(lowered: str, start: int, end: int) -> bool:
        before = lowered[start - 1] if start > 0 else " "
        after = lowered[end] if end < len(lowered) else " "
        return not (before.isalnum() or before in "'’") and not after.isalnum()

    @staticmethod
    def _language_use(lowered: str, start: int, after: re.Match[str] | None) -> bool:
        before = _PREVIOUS_WORD.search(lowered, max(0, start - 24), start)
        return bool(before and before.group(1) in _LANGUAGE_BEFORE) or bool(
            after and after.group(1) in _LANGUAGE_AFTER
        )

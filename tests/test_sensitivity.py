"""Sensitive-data detection with real presidio and our real ONNX NER model (no mocks)."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from locus_llm.analysis.recognizers import (
    NrpRecognizer,
    abn_valid,
    acn_valid,
    medicare_valid,
    tfn_valid,
)
from locus_llm.analysis.sensitivity import (
    SensitivityConfig,
    SensitivityDetector,
    dialogue_speakers,
    outside_model_spans,
    resolve_overlaps,
    without_label_words,
    years_not_places,
)
from locus_llm.profile import DataClass, Entity

AU_TYPES = {"AU_TFN", "AU_ABN", "AU_ACN", "AU_MEDICARE"}


@pytest.fixture(scope="module")
def detector() -> SensitivityDetector:
    """The default detector: presidio patterns, AU IDs, secrets, keywords and the ONNX NER."""
    return SensitivityDetector()


@pytest.fixture(scope="module")
def patterns_only() -> SensitivityDetector:
    return SensitivityDetector(SensitivityConfig(ner="none"))


def found(detector: SensitivityDetector, text: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for entity in detector.detect(text):
        values.setdefault(entity.type, []).append(text[entity.start : entity.end])
    return values


# --- Australian identifiers: generated with their checksums, valid and invalid -------------


def _complete(
    rng: random.Random, length: int, valid: Callable[[str], bool], first: str = ""
) -> str:
    while True:
        digits = first + "".join(rng.choice("0123456789") for _ in range(length - len(first)))
        if valid(digits):
            return digits


def _spoil(digits: str, *checks: Callable[[str], bool]) -> str:
    """Change one digit (from the last) until every checksum fails."""
    for pos in reversed(range(len(digits))):
        for d in "0123456789":
            candidate = digits[:pos] + d + digits[pos + 1 :]
            if not any(check(candidate) for check in checks):
                return candidate
    raise AssertionError(f"no invalid variant of {digits}")


def _written(digits: str, groups: tuple[int, ...]) -> list[str]:
    """The usual written forms: no separator, spaces, dashes (grouped as on the card/letter)."""
    parts, i = [], 0
    for g in groups:
        parts.append(digits[i : i + g])
        i += g
    return [digits, " ".join(parts), "-".join(parts)]


def _acceptable(etype: str, digits: str, form: str) -> set[str]:
    """A number valid under two schemes is reported as the more sensitive one: a 9-digit TFN
    over an ACN, an unseparated 11-digit Medicare number (with IRN) over an ABN."""
    types = {etype}
    if len(digits) == 9 and tfn_valid(digits):
        types = {"AU_TFN"}
    if form == digits and medicare_valid(digits):
        types = {"AU_MEDICARE"}
    return types


AU_CASES = [
    # type, length, checksum, grouping, first digit constraint
    ("AU_TFN", 9, tfn_valid, (3, 3, 3), ""),
    ("AU_ABN", 11, abn_valid, (2, 3, 3, 3), "5"),
    ("AU_ACN", 9, acn_valid, (3, 3, 3), ""),
    ("AU_MEDICARE", 10, medicare_valid, (4, 5, 1), "2"),
]


def test_known_valid_numbers_pass_the_checksums() -> None:
    # Published examples (ATO / ASIC / ABR documentation style numbers).
    assert abn_valid("51 824 753 556")
    assert acn_valid("004 085 616")
    assert acn_valid("000 000 019")
    assert tfn_valid("123 456 782")
    assert medicare_valid("2123 45670 1")
    assert not tfn_valid("123 456 789")
    assert not abn_valid("51 824 753 557")


@pytest.mark.parametrize(("etype", "length", "valid", "groups", "first"), AU_CASES)
def test_checksum_valid_au_ids_are_all_found(
    patterns_only: SensitivityDetector,
    etype: str,
    length: int,
    valid: Callable[[str], bool],
    groups: tuple[int, ...],
    first: str,
) -> None:
    rng = random.Random(etype)
    misses = []
    for _ in range(40):
        digits = _complete(rng, length, valid, first)
        for form in _written(digits, groups):
            text = f"Please update the record: number {form} as discussed."
            values = found(patterns_only, text)
            if not any(form in values.get(t, []) for t in _acceptable(etype, digits, form)):
                misses.append((etype, form, values))
    assert not misses, f"{len(misses)} valid numbers missed, e.g. {misses[:3]}"


@pytest.mark.parametrize(("etype", "length", "valid", "groups", "first"), AU_CASES)
def test_checksum_invalid_au_ids_are_never_hits(
    patterns_only: SensitivityDetector,
    etype: str,
    length: int,
    valid: Callable[[str], bool],
    groups: tuple[int, ...],
    first: str,
) -> None:
    rng = random.Random("invalid" + etype)
    hits = []
    for _ in range(40):
        digits = _spoil(
            _complete(rng, length, valid, first), tfn_valid, acn_valid, abn_valid, medicare_valid
        )
        for form in _written(digits, groups):
            text = f"Please update the record: number {form} as discussed."
            au = AU_TYPES & set(found(patterns_only, text))
            if au:
                hits.append((form, au))
    assert not hits, f"checksum-invalid numbers reported as AU IDs: {hits[:5]}"


def test_valid_tfn_makes_the_request_restricted(patterns_only: SensitivityDetector) -> None:
    entities = patterns_only.detect("my tax file number is 123 456 782")
    assert [e.type for e in entities] == ["AU_TFN"]
    assert patterns_only.data_class(entities) is DataClass.RESTRICTED


# --- secrets ----------------------------------------------------------------------------

SECRETS = {
    "AWS_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "OPENAI_API_KEY": "sk-proj-Ab3dE5fG7hI9jK1lM3nO5pQ7rS9tU1vW3xY5z",
    "ANTHROPIC_API_KEY": "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0EdCbA-ab12cd34",
    "GITHUB_TOKEN": "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "JWT": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "SLACK_TOKEN": "xoxb-2631497711-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "GOOGLE_API_KEY": "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
}


@pytest.mark.parametrize(("etype", "value"), sorted(SECRETS.items()))
def test_secrets_are_found_and_restricted(
    patterns_only: SensitivityDetector, etype: str, value: str
) -> None:
    prefix = "aws_secret_access_key = " if etype == "AWS_SECRET_KEY" else "use this token: "
    text = f"Deploy with {prefix}{value} tonight."
    entities = patterns_only.detect(text)
    assert (etype, value) in [(e.type, text[e.start : e.end]) for e in entities], entities
    assert patterns_only.data_class(entities) is DataClass.RESTRICTED


def test_private_key_block_is_found_whole(patterns_only: SensitivityDetector) -> None:
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi\n-----END RSA PRIVATE KEY-----"
    text = f"here is the key:\n{key}\nthanks"
    assert found(patterns_only, text).get("PRIVATE_KEY") == [key]


@pytest.mark.parametrize(
    ("text", "password"),
    [
        ("connect to postgres://admin:Tr0ub4dor&3@db.internal:5432/sales", "Tr0ub4dor&3"),
        ("mongodb+srv://svc:hunter2hunter2@cluster0.example.net/app", "hunter2hunter2"),
        ("Server=sql01;Database=crm;User Id=app;Password=S3cr3t!Pass;", "S3cr3t!Pass"),
        ('config = {"password": "correct-horse-battery"}', "correct-horse-battery"),
    ],
)
def test_passwords_in_connection_strings(
    patterns_only: SensitivityDetector, text: str, password: str
) -> None:
    entities = patterns_only.detect(text)
    assert password in found(patterns_only, text).get("PASSWORD", []), entities
    assert patterns_only.data_class(entities) is DataClass.RESTRICTED


def test_prose_about_passwords_is_not_a_secret(patterns_only: SensitivityDetector) -> None:
    text = "Choose a strong password: it should be long. The key point is length."
    assert "PASSWORD" not in found(patterns_only, text)


# --- keywords from the config -----------------------------------------------------------


def test_configured_keywords_are_found_case_blind_and_whole_word() -> None:
    config = SensitivityConfig(
        ner="none",
        keywords={"PROJECT_CODENAME": ["Project Nightjar", "Bluefin"]},
        rules={"PROJECT_CODENAME": "RESTRICTED"},
    )
    detector = SensitivityDetector(config)
    text = "Status of PROJECT  nightjar and bluefin; the bluefins are fish."
    values = found(detector, text)
    assert values.get("PROJECT_CODENAME") == ["PROJECT  nightjar", "bluefin"]
    assert detector.data_class(detector.detect(text)) is DataClass.RESTRICTED
    # defaults kept beside the configured table entry
    assert config.rules["AU_TFN"].data_class == "RESTRICTED"


def test_default_keywords_mark_confidential(patterns_only: SensitivityDetector) -> None:
    text = "BOARD CONFIDENTIAL: the M&A shortlist for Q3."
    assert found(patterns_only, text).get("CONFIDENTIAL_KEYWORD") == ["BOARD CONFIDENTIAL", "M&A"]
    assert patterns_only.data_class(patterns_only.detect(text)) is DataClass.CONFIDENTIAL


# --- names, places, organisations: the ONNX model -----------------------------------------


def test_onnx_ner_finds_people_places_and_organisations(detector: SensitivityDetector) -> None:
    text = (
        "Yesterday Margaret Thompson flew from Brisbane to meet the lawyers at Allens Linklaters."
    )
    values = found(detector, text)
    assert "Margaret Thompson" in values.get("PERSON", []), values
    assert "Brisbane" in values.get("LOCATION", []), values
    assert detector.data_class(detector.detect(text)) is DataClass.INTERNAL


def test_ner_covers_long_texts_beyond_one_chunk(detector: SensitivityDetector) -> None:
    sentences = [
        "The committee reviewed the quarterly figures.",
        "Several projects were delayed by supply issues.",
        "Costs remained within the approved budget.",
        "A new reporting template will be used next year.",
    ]
    filler = " ".join(sentences * 80) + " "
    text = filler + "Please send the report to Daniel Okafor in Perth. " + filler
    name = text.index("Daniel Okafor")
    hits = [e for e in detector.detect(text) if e.start <= name < e.end]
    # the model may call him a person or (wrongly) a place: either way he is found, deep in
    # the text, in a later chunk than the first
    assert hits and hits[0].type in {"PERSON", "LOCATION", "ORGANIZATION"}, hits
    assert name > 12_000


def test_chunked_ner_equals_one_run_over_the_whole_text() -> None:
    """A long text runs as overlapping chunks; every piece must get what one run over the
    whole text would give it (the overlap covers the model's receptive field)."""
    import numpy as np

    from locus_llm.analysis.ner import CHUNK, case_ids_for, shared_ner

    ner = shared_ner()
    assert ner.convolutional
    rng = random.Random(3)
    words = ["Alice", "met", "Bob", "in", "Paris", "on", "Monday", "about", "the", "Acme", "deal"]
    text = " ".join(rng.choice(words) for _ in range(3 * CHUNK))
    encoding = ner._tokenizer.encode(text, add_special_tokens=False)
    ids, cases = encoding.ids, case_ids_for(text, encoding.offsets)
    assert len(ids) > 2 * CHUNK
    chunked = ner._chunked_probabilities(ids, cases)
    (whole,) = ner._session.run(
        None,
        {"input_ids": np.asarray([ids], dtype=np.int64), "case_ids": np.asarray([cases])},
    )
    assert chunked.shape == whole[0].shape
    assert np.abs(chunked - whole[0]).max() < 1e-4


def test_plain_prose_is_public(detector: SensitivityDetector) -> None:
    text = "Explain how photosynthesis converts light into chemical energy, in three steps."
    entities = detector.detect(text)
    assert entities == [] and detector.data_class(entities) is DataClass.PUBLIC


def test_contact_details_are_confidential(detector: SensitivityDetector) -> None:
    text = "Reach me at jane.citizen@example.com.au or +61 412 345 678."
    values = found(detector, text)
    assert values.get("EMAIL_ADDRESS") == ["jane.citizen@example.com.au"]
    assert values.get("PHONE_NUMBER") == ["+61 412 345 678"]
    assert detector.data_class(detector.detect(text)) is DataClass.CONFIDENTIAL


@pytest.mark.parametrize(
    ("line", "phone"),
    [
        ("416 60 039 office", "416 60 039"),
        ("(37) 788-063-Office", "(37) 788-063"),
        ("3660170548-Fax", "3660170548"),
        ("02 9999 1234 (mobile)", "02 9999 1234"),
        ("781 1704 home", "781 1704"),
    ],
)
def test_phone_labelled_after_the_number_is_found(
    patterns_only: SensitivityDetector, line: str, phone: str
) -> None:
    """Signatures and contact lists put the label after the number, in formats no national
    phone pattern knows."""
    assert found(patterns_only, f"Kind regards\nJo\n{line}\n").get("PHONE_NUMBER") == [phone]


@pytest.mark.parametrize(
    ("text", "etype", "value"),
    [
        ("The choir was founded in 1977. It grew fast.", "DATE_TIME", "1977"),
        ("She has lived there since 2004", "DATE_TIME", "2004"),
        ("My birthday is on Sunday, I'll turn 40.", "AGE", "40"),
        ("He turned 65 this year", "AGE", "65"),
    ],
)
def test_bare_years_and_ages_in_words(
    patterns_only: SensitivityDetector, text: str, etype: str, value: str
) -> None:
    assert value in found(patterns_only, text).get(etype, [])


def test_numbers_that_are_not_years_or_ages(patterns_only: SensitivityDetector) -> None:
    for text in (
        "We sold 1977 units in 2004 stores last month",  # "in 2004 stores" is a count
        "Turn 3 pages back and read the 2001st entry",
        "Flight 1977 leaves in 20 minutes",
    ):
        values = found(patterns_only, text)
        assert "AGE" not in values, text
        assert values.get("DATE_TIME", []) in ([], ["2004"]), text


def test_model_date_runs_over_the_whole_clock_time() -> None:
    from locus_llm.analysis.ner import tidy

    text = "Date: 1978-04-13 12:20:39\nName: Jo"
    cut = ("DATE_TIME", 6, text.index("39"), 0.9)  # the model stopped at a colon
    assert [text[a:b] for _, a, b, _ in tidy(text, cut, True)] == ["1978-04-13 12:20:39"]


def _result(etype: str, start: int, end: int, score: float, recognizer: str) -> Any:
    from presidio_analyzer import RecognizerResult

    return RecognizerResult(
        etype, start, end, score, recognition_metadata={"recognizer_name": recognizer}
    )


def test_a_pattern_date_inside_the_model_date_yields_to_it() -> None:
    text = "Date: 1978-04-13 12:20:39\nName: Toshimi Arata"
    results = [
        _result("DATE_TIME", 6, 16, 0.95, "DateRecognizer"),  # surer, but only the date
        _result("DATE_TIME", 6, 25, 0.9, "OnnxNerRecognizer"),
        _result("PERSON", 32, 45, 0.9, "OnnxNerRecognizer"),
    ]
    kept = resolve_overlaps(results, SensitivityConfig())
    assert [(r.entity_type, text[r.start : r.end]) for r in kept] == [
        ("DATE_TIME", "1978-04-13 12:20:39"),
        ("PERSON", "Toshimi Arata"),
    ]


def test_a_label_word_is_not_a_name(detector: SensitivityDetector) -> None:
    """A recognizer's context word ("IBAN") labels the value after it and is never a name,
    whatever the model says (the model's results are built here: ours does not err on this)."""
    text = "My IBAN is GB82WEST12345698765432 and I live in Perth"
    results = [
        _result("LOCATION", 3, 7, 0.64, "OnnxNerRecognizer"),
        _result("LOCATION", 48, 53, 0.9, "OnnxNerRecognizer"),
    ]
    kept = without_label_words(text, results, detector._context_words)
    assert [text[r.start : r.end] for r in kept] == ["Perth"]


@pytest.mark.parametrize(
    ("text", "groups"),
    [
        ("There's this nice new Croatian place downtown.", ["Croatian"]),
        ("The Russian government formally began the process.", ["Russian"]),
        ("We are proud paraguayans", ["paraguayans"]),  # a lower-case plural still names a group
        (
            "Two Englishmen, three Sikhs and the South Africans",
            ["Englishmen", "Sikhs", "South Africans"],
        ),
        (
            "Roman Catholic and Sunni leaders met Social Democrats",
            ["Roman Catholic", "Sunni", "Social Democrats"],
        ),
        ("an African-American and a Middle-Eastern chef", ["African-American", "Middle-Eastern"]),
        ("we are proud americans", ["americans"]),  # text without capitals: any case
    ],
)
def test_nationalities_religions_and_parties_are_groups(text: str, groups: list[str]) -> None:
    hits = NrpRecognizer().analyze(text, [])
    assert [text[r.start : r.end] for r in hits] == groups
    assert {r.entity_type for r in hits} == {"NRP"}


@pytest.mark.parametrize(
    "text",
    [
        "Please answer in English.",  # a language, not a group
        "She was studying English and journalism",
        "Translated from Spanish by the author",
        "We flew to the Czech Republic on Labor Day",  # first word of a proper name
        "The European Union and the United Arab Emirates",
        "Please polish the car and order some french fries",  # lower case beside capitals
        "The labor market and the tory benches",  # common words unless capitalised
        "Frenchy and Danishness are no entries",  # whole words only
    ],
)
def test_words_that_are_not_groups(text: str) -> None:
    assert NrpRecognizer().analyze(text, []) == []


def test_a_group_word_defers_to_the_model_span_around_it(detector: SensitivityDetector) -> None:
    """ "American" inside a span the model read in context ("American Express" as a company)
    is not a group; the same word outside any model span is."""
    text = "I paid with American Express at the Italian restaurant."
    model = [_result("ORGANIZATION", 12, 28, 0.9, "OnnxNerRecognizer")]
    hits = outside_model_spans(NrpRecognizer().analyze(text, []), model)
    assert [text[r.start : r.end] for r in hits] == ["Italian"]
    entities = {text[e.start : e.end]: e.type for e in detector.detect(text)}
    assert entities.get("Italian") == "NRP"
    assert SensitivityDetector(SensitivityConfig(ner="none", nrp_words=False)).detect(text) == []


def test_model_spans_are_typed_by_the_group_list() -> None:
    """A model's group that is no form of the list is a place; a model's place that is one, or
    a person that is a plural one, is a group; the list's own hits are never retyped."""
    text = "The Croatian chef moved to Tunisia; Czech food; proud surinameses; Christian"
    recognizer = NrpRecognizer()
    model = [
        _result("NRP", 4, 12, 0.8, "OnnxNerRecognizer"),
        _result("NRP", 27, 34, 0.8, "OnnxNerRecognizer"),
        _result("LOCATION", 36, 41, 0.8, "OnnxNerRecognizer"),
        _result("PERSON", 54, 65, 0.8, "OnnxNerRecognizer"),
        _result("PERSON", 67, 76, 0.8, "OnnxNerRecognizer"),  # a first name stays a name
    ]
    typed = [recognizer.retyped(text, r) for r in model]
    assert [(r.entity_type, text[r.start : r.end]) for r in typed] == [
        ("NRP", "Croatian"),
        ("LOCATION", "Tunisia"),
        ("NRP", "Czech"),
        ("NRP", "surinameses"),
        ("PERSON", "Christian"),
    ]
    own = recognizer.analyze("The Croatian chef", [])
    assert [recognizer.retyped("The Croatian chef", r).entity_type for r in own] == ["NRP"]


def test_a_year_the_model_calls_a_place_is_a_date(detector: SensitivityDetector) -> None:
    text = "The orchestra was founded in 1977 in Perth."
    results = [
        _result("LOCATION", 29, 33, 0.9, "OnnxNerRecognizer"),
        _result("DATE_TIME", 29, 33, 0.6, "ContextNumberRecognizer"),
        _result("LOCATION", 37, 42, 0.9, "OnnxNerRecognizer"),
    ]
    kept = years_not_places(text, results)
    assert [(r.entity_type, text[r.start : r.end]) for r in kept] == [
        ("DATE_TIME", "1977"),
        ("LOCATION", "Perth"),
    ]
    assert ("DATE_TIME", "1977") in [(e.type, text[e.start : e.end]) for e in detector.detect(text)]


def test_a_day_of_the_week_is_a_date(patterns_only: SensitivityDetector) -> None:
    text = "Mr. Leiva flew to Oslo on Tuesday morning and back on sunday."
    assert found(patterns_only, text)["DATE_TIME"] == ["Tuesday morning", "sunday"]
    assert "DATE_TIME" not in found(patterns_only, "Sundayish weather and Mondayitis")


def test_lone_short_numbers_are_no_places() -> None:
    from locus_llm.analysis.ner import without_lone_numbers

    text = "3... 2... 1... liftoff, sales up 16%, ZIP: 394 13"
    spans = [
        ("LOCATION", 0, 1, 0.9),
        ("LOCATION", 5, 6, 0.9),
        ("LOCATION", 33, 36, 0.9),
        ("LOCATION", 43, 46, 0.9),
        ("LOCATION", 47, 49, 0.9),  # a post code's second group: it touches the first
    ]
    kept = without_lone_numbers(text, spans)
    assert [text[a:b] for _, a, b, _ in kept] == ["394", "13"]


def test_text_in_capitals_throughout_has_no_names(detector: SensitivityDetector) -> None:
    """Capitals everywhere carry no cue: the model reads the text as lower-case text."""
    text = "WHAT ??? I DON'T KNOW WHAT TO PRESS NEXT!"
    assert detector.detect(text) == []
    assert found(detector, "MY NAME IS JOHN SMITH AND I LIVE IN SYDNEY")  # still read


def test_dialogue_speakers_follow_the_speaker_the_model_found() -> None:
    text = 'Koppány: "Who are you?"\nElizabeth:"I am her daughter".\nUser: hello'
    model = [_result("PERSON", 0, 7, 0.9, "OnnxNerRecognizer")]
    added = dialogue_speakers(text, model)
    assert [(r.entity_type, text[r.start : r.end]) for r in added] == [("PERSON", "Elizabeth")]
    # no speaker found by the model: labels alone are not names ("Review: … Sentiment: …")
    assert dialogue_speakers("Review: great\nSentiment: positive", []) == []
    # a single label line is no dialogue
    assert dialogue_speakers("Koppány: hi", model) == []


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("They're not answering at 71-33-52-22", "71-33-52-22"),
        ("Phone: 60-56-85-91", "60-56-85-91"),
        ("I would like to stop receiving messages to 699 956 915", "699 956 915"),
        ("You can reach me on 0680 298 70 63 after six", "0680 298 70 63"),
    ],
)
def test_phone_in_pairs_of_digits_or_after_a_verb_of_calling_is_found(
    patterns_only: SensitivityDetector, text: str, phone: str
) -> None:
    """National formats written in digit pairs, and the words people use around a number to
    be called or texted on ("answering at", "messages to", "reach me on")."""
    assert found(patterns_only, text).get("PHONE_NUMBER") == [phone]


def test_number_with_an_unrelated_word_after_is_not_a_phone(
    patterns_only: SensitivityDetector,
) -> None:
    for text in ("We shipped 416 60 039 units", "Order 3660170548 officially closed"):
        assert "PHONE_NUMBER" not in found(patterns_only, text)


def test_spans_are_disjoint_and_index_the_text(detector: SensitivityDetector) -> None:
    text = "Card 4111 1111 1111 1111 for John Smith, john.smith@example.com, TFN 123-456-782."
    entities = detector.detect(text)
    spans = sorted((e.start, e.end) for e in entities)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(0 <= e.start < e.end <= len(text) and e.message == 0 for e in entities)


# --- odd input: never raise, sensible class ----------------------------------------------


def test_binary_input_does_not_crash(detector: SensitivityDetector) -> None:
    rng = random.Random(7)
    blob = bytes(rng.randrange(256) for _ in range(200_000))
    for text in (
        blob.decode("latin-1"),
        blob.decode("utf-8", "surrogateescape"),
        blob.decode("utf-8", "replace"),
    ):
        entities = detector.detect(text)
        assert isinstance(detector.data_class(entities), DataClass)
    tfn_in_binary = (blob[:5000] + b" TFN 123 456 782 " + blob[5000:10000]).decode("latin-1")
    assert detector.data_class(detector.detect(tfn_in_binary)) is DataClass.RESTRICTED


def test_ten_megabytes_patterns_only(patterns_only: SensitivityDetector) -> None:
    chunk = "Routine status update with nothing sensitive in it at all, just words. " * 1000
    text = chunk * (10_000_000 // len(chunk) + 1) + " key AKIAIOSFODNN7EXAMPLE end"
    assert len(text) >= 10_000_000
    entities = patterns_only.detect(text)
    assert [e.type for e in entities] == ["AWS_ACCESS_KEY"]
    assert entities[0].start > 9_999_000  # the end of the text was scanned: never truncated


@pytest.mark.slow  # ~10 MB through the NER takes minutes on 2 cores; benchmarks/bench_sensitivity.py runs it too
def test_ten_megabytes_with_ner(detector: SensitivityDetector) -> None:
    chunk = "Routine status update with nothing sensitive in it at all, just words. " * 1000
    text = chunk * (10_000_000 // len(chunk) + 1) + " TFN 123 456 782"
    entities = detector.detect(text)
    assert detector.data_class(entities) is DataClass.RESTRICTED


@pytest.mark.parametrize(
    "text",
    [
        "TFN １２３ ４５６ ７８２",  # fullwidth digits
        "TFN ١٢٣ ٤٥٦ ٧٨٢",  # Arabic-Indic digits
        "TFN 123\u200d456\u200d782",  # zero-width joiners inside the number
        "\u202eTFN 123 456 782\u202c \u05e9\u05dc\u05d5\u05dd",  # RTL override, Hebrew
        "key ＡＫＩＡＩＯＳＦＯＤＮＮ７ＥＸＡＭＰＬＥ",  # fullwidth AWS key
    ],
)
def test_odd_unicode_is_seen_through(detector: SensitivityDetector, text: str) -> None:
    entities = detector.detect(text)
    assert detector.data_class(entities) is DataClass.RESTRICTED, entities
    assert all(0 <= e.start < e.end <= len(text) for e in entities)


def test_empty_and_whitespace(detector: SensitivityDetector) -> None:
    assert detector.detect("") == [] and detector.detect(" \n\t ") == []
    assert detector.data_class([]) is DataClass.PUBLIC


# --- concurrency, offline, cheap import ---------------------------------------------------


def test_concurrent_detection_matches_sequential(detector: SensitivityDetector) -> None:
    rng = random.Random(1)
    texts = []
    for i in range(100):
        tfn = _complete(rng, 9, tfn_valid)
        texts.append(
            f"Client {i}: email client{i}@example.org, TFN {tfn[:3]} {tfn[3:6]} {tfn[6:]}."
        )
    expected = [detector.detect(t) for t in texts]
    with ThreadPoolExecutor(max_workers=16) as pool:
        got = list(pool.map(detector.detect, texts))
    assert got == expected
    assert all({e.type for e in es} >= {"EMAIL_ADDRESS", "AU_TFN"} for es in got)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


def test_building_and_detecting_never_touch_the_network(no_network: None) -> None:
    detector = SensitivityDetector()
    text = "Write to someone@company.example.co.uk about https://intranet.example.com/x"
    assert "EMAIL_ADDRESS" in found(detector, text)


def test_config_import_is_cheap() -> None:
    code = (
        "import sys; import locus_llm.analysis.sensitivity as s; s.SensitivityConfig(); "
        "assert 'presidio_analyzer' not in sys.modules; assert 'onnxruntime' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spacy_without_the_pipeline_is_a_clear_config_error() -> None:
    from locus_llm.errors import ConfigError

    with pytest.raises(ConfigError, match="not installed"):
        SensitivityDetector(SensitivityConfig(ner="spacy", spacy_model="en_core_web_nonexistent"))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="unknown data class"):
        SensitivityConfig(rules={"PERSON": "SECRETISH"})
    config = SensitivityConfig.model_validate(
        {"rules": {"PERSON": {"data_class": "confidential", "min_score": 0.9}}}
    )
    assert config.rules["PERSON"].data_class == "CONFIDENTIAL"
    person = Entity("PERSON", 0, 4, 0.8)
    from locus_llm.analysis.sensitivity import classify

    assert classify([person], config) is DataClass.PUBLIC  # below its min_score
    assert classify([Entity("PERSON", 0, 4, 0.95)], config) is DataClass.CONFIDENTIAL
    assert classify([Entity("SOMETHING_NEW", 0, 4, 0.95)], config) is DataClass.INTERNAL


def test_augmented_pairs_and_one_word_organisations_keep_exact_spans() -> None:
    """ner_train.augment with --pairs / --single-org: every label still indexes its value, a
    paired name is two entities around " and ", and organisations are refilled one-word."""
    from locus_llm.analysis.ner_train import Sample, augment

    samples = [
        Sample(
            "Usamov met Park at Acme.",
            [("PERSON", 0, 6), ("PERSON", 11, 15), ("ORGANIZATION", 19, 23)],
            "t1",
        ),
        Sample("Dale wrote to Globex Corp.", [("PERSON", 0, 4), ("ORGANIZATION", 14, 24)], "t2"),
    ]
    out = augment(samples, copies=20, seed=1, pairs=1.0, single_org=1.0)[len(samples) :]
    values = {(t, s.text[a:b].lower()) for s in out for t, a, b in s.spans}  # some lower-cased
    assert values <= {("PERSON", v) for v in ("usamov", "park", "dale")} | {
        ("ORGANIZATION", "acme"),
        ("ORGANIZATION", "globex corp"),
    }
    assert any(" and " in s.text for s in out)
    for s in out:
        for first, second in zip(s.spans, s.spans[1:], strict=False):
            assert first[2] <= second[1]  # disjoint, in order
        assert all(s.text[a:b] == s.text[a:b].strip() for _, a, b in s.spans)
    # organisations refilled one-word only when asked
    assert all(
        s.text[a:b].lower() == "acme" for s in out for t, a, b in s.spans if t == "ORGANIZATION"
    )


def test_dev_folds_are_apart_from_the_test_split_and_their_training() -> None:
    from locus_llm.analysis.ner_train import dev_fold, split_by_template, training_samples

    _, test = split_by_template()
    folds = [{s.template for s in dev_fold(k)} for k in range(3)]
    test_templates = {s.template for s in test}
    assert all(folds) and not any(f & test_templates for f in folds)
    assert not {s.template for s in training_samples(exclude_fold=1)} & folds[1]


def test_an_ensemble_of_taggers_averages_their_probabilities(tmp_path: Any) -> None:
    """ner_train.ensemble: two taggers (random weights, built here) merged into one graph give,
    per piece, the mean of the two taggers' probabilities, through the runtime's own loader."""
    import json
    import shutil

    import numpy as np

    from locus_llm.analysis.ner import MODEL_DIR, OnnxNer, case_ids_for
    from locus_llm.analysis.ner_train import LABELS, ensemble, write_conv_model

    rng = np.random.default_rng(0)
    width, dilations, vocab = 8, (1, 2), 30522

    def member(name: str) -> Any:
        weights = {
            "table": rng.normal(size=(vocab, width)),
            "case": rng.normal(size=(6, width)),
            "head_w": rng.normal(size=(width, len(LABELS))),
            "head_b": rng.normal(size=len(LABELS)),
        }
        for k in range(len(dilations)):
            weights[f"conv{k}_w"] = rng.normal(size=(width, width, 3)).astype(np.float32)
            weights[f"conv{k}_b"] = rng.normal(size=width).astype(np.float32)
            weights[f"norm{k}_g"] = np.ones(width, dtype=np.float32)
            weights[f"norm{k}_b"] = np.zeros(width, dtype=np.float32)
        folder = tmp_path / name
        folder.mkdir()
        write_conv_model(weights, dilations, folder / "model.onnx")
        shutil.copy(MODEL_DIR / "tokenizer.json", folder / "tokenizer.json")
        meta = {"labels": LABELS, "architecture": "conv", "receptive_field": sum(dilations)}
        (folder / "labels.json").write_text(json.dumps(meta))
        return folder

    a, b = member("a"), member("b")
    ensemble([a, b], tmp_path / "both")
    text = "Maria Gonzalez of Acme Corp flew to Sydney on Tuesday."
    ner = {name: OnnxNer(tmp_path / name) for name in ("a", "b", "both")}
    encoding = ner["a"]._tokenizer.encode(text, add_special_tokens=False)
    cases = case_ids_for(text, encoding.offsets)
    probs = {k: m._chunked_probabilities(encoding.ids, cases) for k, m in ner.items()}
    assert not np.allclose(probs["a"], probs["b"], atol=1e-3)  # two different taggers
    np.testing.assert_allclose(probs["both"], (probs["a"] + probs["b"]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="at least two"):
        ensemble([a], tmp_path / "one")


def test_the_all_templates_model_sees_the_test_split_and_is_never_scored_on_it(
    tmp_path: Any,
) -> None:
    """ner_train --all-templates trains on our test split too (the shipped model); a model
    records what it held out, and benchmarks/eval_pii.py refuses to score it on what it saw."""
    import json
    import shutil
    from pathlib import Path

    from locus_llm.analysis.ner import MODEL_DIR
    from locus_llm.analysis.ner_train import split_by_template, training_samples

    train, test = split_by_template()
    everything = {s.template for s in training_samples(all_templates=True)}
    assert {s.template for s in test} <= everything
    assert {s.template for s in train} <= everything
    with pytest.raises(ValueError):
        training_samples(exclude_fold=0, all_templates=True)

    folder = tmp_path / "seen_all"
    shutil.copytree(MODEL_DIR, folder)
    meta = json.loads((folder / "labels.json").read_text())
    (folder / "labels.json").write_text(json.dumps(dict(meta, held_out=["fold2"])))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_pii.py"
    refused = subprocess.run(
        [sys.executable, str(script), "--model-dir", str(folder)], capture_output=True, text=True
    )
    assert refused.returncode == 2
    assert "trained on the test templates" in refused.stderr

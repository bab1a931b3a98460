"""Word-level span decoding of the ONNX NER (ner.OnnxNer._spans): pooling of a word's pieces,
type switches inside one entity, and neighbouring words joining a name.

The decoding rules are tested on label probabilities written per word (the input `_spans`
takes from the model), with the shipped model's own tokenizer and label set, so each rule is
pinned exactly; the last test runs the shipped model end to end."""

from __future__ import annotations

import numpy as np
import pytest

from locus_llm.analysis.ner import JOIN_SCORE, OnnxNer

Spans = list[tuple[str, int, int, float]]


@pytest.fixture(scope="module")
def ner() -> OnnxNer:
    return OnnxNer()


def decode(
    ner: OnnxNer,
    text: str,
    labels: dict[str, list[dict[str, float]] | dict[str, float]],
    mixed_case: bool = True,
) -> Spans:
    """_spans over probabilities given per word (by its text): one dict of label → probability
    for all its pieces, or a list with one dict per piece; every other label gets the rest,
    spread evenly, and unnamed words are "O"."""
    encoding = ner._tokenizer.encode(text, add_special_tokens=False)
    probs = np.zeros((len(encoding.ids), len(ner.labels)), dtype=np.float32)
    probs[:, 0] = 1.0
    firsts: dict[int, int] = {}
    for j, word in enumerate(encoding.word_ids):
        assert word is not None
        firsts.setdefault(word, j)
        start, end = encoding.word_to_chars(word)
        given = labels.get(text[start:end])
        if given is None:
            continue
        row = given[j - firsts[word]] if isinstance(given, list) else given
        rest = (1.0 - sum(row.values())) / (len(ner.labels) - len(row))
        probs[j] = rest
        for label, p in row.items():
            probs[j, ner.labels.index(label)] = p
    return ner._spans(probs, encoding.offsets, encoding.word_ids, text, mixed_case)


def texts(text: str, spans: Spans) -> list[tuple[str, str]]:
    return [(etype, text[a:b]) for etype, a, b, _ in spans]


def test_a_word_is_an_entity_when_one_of_its_pieces_says_so(ner: OnnxNer) -> None:
    text = "have you heard Petr Kloz speak"
    pieces = ner._tokenizer.encode("Kloz", add_special_tokens=False).tokens
    assert len(pieces) >= 2, pieces
    # one confident piece, the others unsure: the mean of the pieces would call the word "O"
    surname = [{"I-PERSON": 0.8, "O": 0.2}] + [{"O": 0.7, "I-PERSON": 0.2}] * (len(pieces) - 1)
    spans = decode(ner, text, {"Petr": {"B-PERSON": 0.9}, "Kloz": surname})
    assert texts(text, spans) == [("PERSON", "Petr Kloz")]
    # but no piece above "O" at its lowest leaves the word out
    flat = [{"O": 0.6, "I-PERSON": 0.3}] * len(pieces)
    spans = decode(ner, text, {"Petr": {"B-PERSON": 0.9}, "Kloz": flat}, mixed_case=False)
    assert texts(text, spans) == [("PERSON", "Petr")]


def test_a_change_of_type_does_not_split_an_entity(ner: OnnxNer) -> None:
    text = "Maika van de Noort will be there"
    place = {"I-LOCATION": 0.7, "I-PERSON": 0.2}
    labels = {"Maika": {"B-PERSON": 0.95}, "van": place, "de": place, "Noort": place}
    spans = decode(ner, text, labels)
    assert texts(text, spans) == [("LOCATION", "Maika van de Noort")]  # most probability
    labels["Maika"] = {"B-PERSON": 0.95, "B-LOCATION": 0.04}
    labels["Noort"] = {"I-PERSON": 0.9}
    assert texts(text, decode(ner, text, labels)) == [("PERSON", "Maika van de Noort")]
    for score in [s for *_, s in spans]:
        assert 0.0 < score <= 1.0


def test_a_begin_label_still_starts_a_new_entity(ner: OnnxNer) -> None:
    text = "Acme Corp Paris office"
    labels = {
        "Acme": {"B-ORGANIZATION": 0.9},
        "Corp": {"I-ORGANIZATION": 0.9},
        "Paris": {"B-LOCATION": 0.8, "I-LOCATION": 0.1},
    }
    spans = decode(ner, text, labels)
    assert texts(text, spans) == [("ORGANIZATION", "Acme Corp"), ("LOCATION", "Paris")]


@pytest.mark.parametrize(
    ("text", "word", "joined"),
    [
        ("tennis player Amy Jones over visa", "Jones", "Amy Jones"),  # after the name
        ("under the name Shane Culp today", "Shane", "Shane Culp"),  # before it
    ],
)
def test_a_capitalised_neighbour_with_some_entity_probability_joins_a_name(
    ner: OnnxNer, text: str, word: str, joined: str
) -> None:
    other = "Amy" if word == "Jones" else "Culp"
    sure = {"B-PERSON": 0.9} if other == "Amy" else {"I-PERSON": 0.9}
    unsure = {"O": 0.55, "I-PERSON": JOIN_SCORE + 0.05}
    spans = decode(ner, text, {other: sure, word: unsure})
    assert texts(text, spans) == [("PERSON", joined)]
    # not in text without capitals to go by, nor below JOIN_SCORE
    assert texts(text, decode(ner, text, {other: sure, word: unsure}, mixed_case=False)) == [
        ("PERSON", other)
    ]
    weak = {"O": 0.8, "I-PERSON": JOIN_SCORE - 0.05}
    assert texts(text, decode(ner, text, {other: sure, word: weak})) == [("PERSON", other)]


def test_only_whole_capitalised_words_next_to_the_name_join(ner: OnnxNer) -> None:
    unsure = {"O": 0.55, "I-PERSON": JOIN_SCORE + 0.05}
    sure = {"B-PERSON": 0.9}
    cases = [
        ("a song by ex-Zombie Kastner is", "Zombie", "Kastner"),  # part of a hyphenated word
        ("called Amy\nJones at home", "Jones", "Amy"),  # across a line break
        ("called Amy jones at home", "jones", "Amy"),  # lower case
        ("called Amy, Jones at home", "Jones", "Amy"),  # across punctuation
    ]
    for text, word, name in cases:
        spans = decode(ner, text, {name: sure, word: unsure})
        assert texts(text, spans) == [("PERSON", name)], text
    # dates and ages are not extended
    text = "born Monday Tuesday maybe"
    spans = decode(ner, text, {"Monday": {"B-DATE_TIME": 0.9}, "Tuesday": unsure})
    assert texts(text, spans) == [("DATE_TIME", "Monday")]


def test_joining_runs_on_through_several_words(ner: OnnxNer) -> None:
    text = "recorded for Arpin Van Lines became"
    unsure = {"O": 0.6, "I-ORGANIZATION": 0.35}
    spans = decode(ner, text, {"Arpin": {"B-ORGANIZATION": 0.9}, "Van": unsure, "Lines": unsure})
    assert texts(text, spans) == [("ORGANIZATION", "Arpin Van Lines")]


def test_the_shipped_model_returns_whole_names_with_scores_in_range(ner: OnnxNer) -> None:
    text = "Willemine ten Pas will be talking in the conference with Petr Kloz."
    found = ner.predict(text)
    # whole names, not fragments; which name type the model gives is the model's business
    spans = {text[a:b]: t for t, a, b, _ in found}
    assert spans.keys() == {"Willemine ten Pas", "Petr Kloz"}
    assert set(spans.values()) <= {"PERSON", "LOCATION", "ORGANIZATION"}
    assert all(0.0 < s <= 1.0 for *_, s in found)

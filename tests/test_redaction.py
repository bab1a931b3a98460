"""Redact-and-route: placeholders in, values back out, per request, with real presidio detection."""

from __future__ import annotations

import copy
import json
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from locus_llm.analysis.recognizers import tfn_valid
from locus_llm.analysis.sensitivity import SensitivityConfig, SensitivityDetector
from locus_llm.messages import message_text
from locus_llm.profile import Entity
from locus_llm.redaction import Vault


@pytest.fixture(scope="module")
def detector() -> SensitivityDetector:
    return SensitivityDetector()


def detect_messages(detector: SensitivityDetector, messages: list[dict[str, Any]]) -> list[Entity]:
    """What the lead's analyzer does: scan each message's text, stamp the message index."""
    entities = []
    for i, message in enumerate(messages):
        for e in detector.detect(message_text(message)):
            entities.append(Entity(e.type, e.start, e.end, e.score, message=i))
    return entities


CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You help the accounts team."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Customer Sarah O'Connor (sarah.oconnor@example.com.au) says"},
            {
                "type": "text",
                "text": "her TFN 123 456 782 was rejected. Call sarah.oconnor@example.com.au.",
            },
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": "lookup_customer",
                    "arguments": json.dumps(
                        {"email": "sarah.oconnor@example.com.au", "tfn": "123 456 782"}
                    ),
                },
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "ok", "tfn": "123 456 782"}'},
    {"role": "user", "content": "Draft a reply to sarah.oconnor@example.com.au please."},
]


def test_values_become_stable_typed_placeholders(detector: SensitivityDetector) -> None:
    original = copy.deepcopy(CONVERSATION)
    entities = detect_messages(detector, CONVERSATION)
    vault = Vault()
    redacted = vault.redact_messages(CONVERSATION, entities, ["EMAIL_ADDRESS", "AU_TFN"])
    assert original == CONVERSATION  # input not mutated
    dumped = json.dumps(redacted)
    assert "sarah.oconnor@example.com.au" not in dumped and "123 456 782" not in dumped
    assert dumped.count("<EMAIL_ADDRESS_1>") == 4 and dumped.count("<AU_TFN_1>") == 3
    assert "<EMAIL_ADDRESS_2>" not in dumped  # same value → same placeholder
    assert vault.redacted_types == {"EMAIL_ADDRESS": 1, "AU_TFN": 1}
    # structure survives: tool-call arguments are still JSON, ids and names untouched
    call = redacted[2]["tool_calls"][0]
    assert call["id"] == "call_1" and call["function"]["name"] == "lookup_customer"
    assert json.loads(call["function"]["arguments"]) == {
        "email": "<EMAIL_ADDRESS_1>",
        "tfn": "<AU_TFN_1>",
    }
    # types not listed stay in clear
    assert "Sarah" in json.dumps(redacted)


def test_restore_plain_and_tool_calls(detector: SensitivityDetector) -> None:
    entities = detect_messages(detector, CONVERSATION)
    vault = Vault()
    vault.redact_messages(CONVERSATION, entities, ["EMAIL_ADDRESS", "AU_TFN", "PERSON"])
    answer = "I wrote to <EMAIL_ADDRESS_1> about TFN <AU_TFN_1>; <UNKNOWN_9> stays."
    assert vault.restore(answer) == (
        "I wrote to sarah.oconnor@example.com.au about TFN 123 456 782; <UNKNOWN_9> stays."
    )
    calls = [
        {
            "id": "c",
            "type": "function",
            "function": {
                "name": "send",
                "arguments": '{"to": "<EMAIL_ADDRESS_1>", "cc": ["\\u003cAU_TFN_1\\u003e"]}',
            },
        }
    ]
    restored = vault.restore_tool_calls(calls)
    assert json.loads(restored[0]["function"]["arguments"]) == {
        "to": "sarah.oconnor@example.com.au",
        "cc": ["123 456 782"],
    }
    assert calls[0]["function"]["arguments"].startswith('{"to": "<EMAIL')  # input not mutated


def test_value_with_quotes_keeps_tool_arguments_valid_json() -> None:
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "x",
                    "type": "function",
                    "function": {"name": "f", "arguments": json.dumps({"q": 'say "hi" Bob'})},
                }
            ],
        }
    ]
    text = message_text(messages[0])
    value = '\\"hi\\" Bob'
    start = text.index(value)
    vault = Vault()
    redacted = vault.redact_messages(
        messages, [Entity("PERSON", start, start + len(value), 0.9)], ["PERSON"]
    )
    arguments = redacted[0]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"q": "say <PERSON_1>"}
    restored = vault.restore_tool_calls(redacted[0]["tool_calls"])
    assert json.loads(restored[0]["function"]["arguments"]) == {"q": 'say "hi" Bob'}


def test_values_are_not_replaced_inside_other_words() -> None:
    messages = [{"role": "user", "content": "Ann wrote the Annual report; ask Ann."}]
    vault = Vault()
    redacted = vault.redact_messages(messages, [Entity("PERSON", 0, 3, 0.9)], ["PERSON"])
    assert redacted[0]["content"] == "<PERSON_1> wrote the Annual report; ask <PERSON_1>."


def _vault_with(values: dict[str, str]) -> Vault:
    vault = Vault()
    for etype, value in values.items():
        vault.placeholder(etype, value)
    return vault


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=60),
    st.sampled_from(["", "<", "<PERSON", "<PERSON_", "x <", "<<", ">"]),
)
def test_stream_restore_under_random_chunking(cuts: list[int], tail: str) -> None:
    vault = _vault_with(
        {"PERSON": "Sarah O'Connor", "EMAIL_ADDRESS": "s@example.com", "AU_TFN": "123 456 782"}
    )
    vault.placeholder("PERSON", "Bob")  # <PERSON_2>
    text = (
        "Dear <PERSON_1>, we wrote to <EMAIL_ADDRESS_1> re <AU_TFN_1>. <PERSON_2> agrees; "
        "<PERSON_1><PERSON_2> a < b and <NOT_A_PLACEHOLDER> 3<4 " + tail
    )
    chunks, i = [], 0
    for n in cuts:
        chunks.append(text[i : i + n])
        i += n
    chunks.append(text[i:])
    restorer = vault.stream_restorer()
    out = "".join(restorer.feed(c) for c in chunks) + restorer.flush()
    assert out == vault.restore(text)
    assert "Sarah O'Connor" in out and "<PERSON_1>" not in out


def test_stream_restorer_holds_back_only_a_possible_placeholder() -> None:
    vault = _vault_with({"PERSON": "Sarah"})
    restorer = vault.stream_restorer()
    assert restorer.feed("Hello <PER") == "Hello "
    assert restorer.feed("SON_1> and 3 < 4") == "Sarah and 3 < 4"
    assert restorer.feed(" <x") == " <x"  # cannot become a placeholder: not held
    assert restorer.flush() == ""


def test_hundred_concurrent_requests_never_leak(detector: SensitivityDetector) -> None:
    rng = random.Random(42)
    people = []
    for i in range(100):
        while True:
            tfn = f"{rng.randrange(10**8, 10**9)}"
            if tfn_valid(tfn):
                break
        people.append(
            {
                "email": f"customer{i:03d}.private@example{i:03d}.com",
                "tfn": f"{tfn[:3]} {tfn[3:6]} {tfn[6:]}",
            }
        )

    def request(i: int) -> tuple[int, str, str]:
        p = people[i]
        messages = [{"role": "user", "content": f"Update {p['email']}: TFN {p['tfn']} is on file."}]
        vault = Vault()
        redacted = vault.redact_messages(
            messages, detect_messages(detector, messages), ["EMAIL_ADDRESS", "AU_TFN"]
        )
        sent = json.dumps(redacted)
        # the "model" answers with the placeholders it saw; stream it back in small chunks
        answer = "Done: <EMAIL_ADDRESS_1> now has <AU_TFN_1>."
        restorer = vault.stream_restorer()
        streamed = (
            "".join(restorer.feed(answer[k : k + 3]) for k in range(0, len(answer), 3))
            + restorer.flush()
        )
        return i, sent, streamed

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(request, range(100)))
    for i, sent, streamed in results:
        p = people[i]
        assert p["email"] not in sent and p["tfn"] not in sent
        assert streamed == f"Done: {p['email']} now has {p['tfn']}."
        others = [q for j, q in enumerate(people) if j != i]
        assert not any(q["email"] in streamed or q["email"] in sent for q in others)


def test_nothing_to_redact_returns_an_equal_copy() -> None:
    messages = [{"role": "user", "content": "hello"}]
    vault = Vault()
    out = vault.redact_messages(messages, [], ["PERSON"])
    assert out == messages and out is not messages and vault.redacted_types == {}
    assert vault.restore("<PERSON_1>") == "<PERSON_1>"


def test_patterns_only_detector_works_for_redaction() -> None:
    detector = SensitivityDetector(SensitivityConfig(ner="none"))
    messages = [{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE please rotate"}]
    vault = Vault()
    redacted = vault.redact_messages(
        messages, detect_messages(detector, messages), ["AWS_ACCESS_KEY"]
    )
    assert redacted[0]["content"] == "key <AWS_ACCESS_KEY_1> please rotate"

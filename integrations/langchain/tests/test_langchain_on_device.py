"""ChatLocus with no configuration: the embedded default, the real SmolLM2 on the device.

This is the README's first snippet. It needs the converted model (`locus models prepare smollm2`)
and is skipped, saying so, where it has not been prepared.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_locus import ChatLocus
from langchain_tests.integration_tests import ChatModelIntegrationTests

from locus_llm.local.models import is_prepared

pytestmark = pytest.mark.skipif(
    not is_prepared(), reason="SmolLM2 is not prepared: run `locus models prepare smollm2`"
)


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> ChatLocus:
    monkeypatch.delenv("LOCUS_CONFIG", raising=False)
    return ChatLocus(max_tokens=8, temperature=0)


def test_invoke_runs_on_the_device(llm: ChatLocus) -> None:
    reply = llm.invoke("Name three primary colours.")
    info = reply.response_metadata["locus"]
    assert (info["locus"], info["zone"], info["model"]) == (
        "device",
        "device",
        "locus-onnx/smollm2",
    )
    assert reply.text.strip()
    assert reply.usage_metadata is not None and 0 < reply.usage_metadata["output_tokens"] <= 8
    assert info["cost_usd"] == 0.0


def test_stream_runs_on_the_device(llm: ChatLocus) -> None:
    chunks = list(llm.stream("Say hello."))
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert full.text.strip() and len(chunks) > 2
    assert full.response_metadata["locus"]["locus"] == "device"
    assert full.usage_metadata is not None and full.usage_metadata["output_tokens"] <= 8


class TestChatLocusOnDeviceIntegration(ChatModelIntegrationTests):
    """The standard integration suite on the real on-device model, through the default config.

    Skipped here beyond the scripted-endpoint run (test_langchain_standard.py), and why:
    tool calling, tool choice and structured output — SmolLM2-135M served by the locus-onnx
    provider has no tool-call or JSON-schema decoding, so these are exercised against the scripted
    stand-in for vLLM instead; model override — the default config has a single locus.
    """

    @pytest.fixture(autouse=True)
    def _default_config(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("LOCUS_CONFIG", raising=False)

    @property
    def chat_model_class(self) -> type[ChatLocus]:
        return ChatLocus

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"max_tokens": 12}

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        return {"temperature": 0, "timeout": 60, "stop": [], "max_retries": 2}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

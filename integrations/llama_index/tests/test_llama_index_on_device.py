"""Locus with no configuration: the embedded default, the real SmolLM2 on the device.

It needs the converted model (`locus models prepare smollm2`) and is skipped, saying so, where it
has not been prepared.
"""

from __future__ import annotations

import pytest
from llama_index.llms.locus import Locus

from locus_llm.local.models import is_prepared

pytestmark = pytest.mark.skipif(
    not is_prepared(), reason="SmolLM2 is not prepared: run `locus models prepare smollm2`"
)


def test_complete_and_stream_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCUS_CONFIG", raising=False)
    llm = Locus(max_tokens=8, temperature=0)
    assert llm.metadata.context_window == llm.router.config.locus("device").context_window
    completion = llm.complete("Name three primary colours.")
    assert completion.text.strip()
    assert completion.additional_kwargs["locus"]["locus"] == "device"
    assert 0 < completion.additional_kwargs["completion_tokens"] <= 8
    responses = list(llm.stream_complete("Say hello."))
    assert responses[-1].text == "".join(r.delta or "" for r in responses)
    assert responses[-1].additional_kwargs["locus"]["zone"] == "device"

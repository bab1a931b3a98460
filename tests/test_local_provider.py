"""`litellm.completion(model="locus-onnx/<model>")` end to end, on the tiny Llama in a temp cache."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from locus_llm.local import models
from tests.conftest_local import TinyLlama

pytest_plugins = ["tests.conftest_local"]  # the tiny-model and cache fixtures

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def litellm_tiny(locus_home: Path, tiny_llama: TinyLlama):  # type: ignore[no-untyped-def]
    from locus_llm.local.provider import register

    models.add_gguf(tiny_llama.gguf_path, name="tiny", quant="fp32")
    register()
    register()  # idempotent
    import litellm

    return litellm


def test_completion_with_usage_and_zero_cost(litellm_tiny) -> None:  # type: ignore[no-untyped-def]
    litellm = litellm_tiny
    direct = "".join(d.text for d in models.load("tiny").stream_chat(MESSAGES, max_tokens=10))
    response = litellm.completion(model="locus-onnx/tiny", messages=MESSAGES, max_tokens=10)
    assert response.choices[0].message.content == direct
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens == len(models.load("tiny").encode_chat(MESSAGES))
    assert 1 <= response.usage.completion_tokens <= 10
    assert litellm.completion_cost(completion_response=response) == 0.0
    providers = [p["provider"] for p in litellm.custom_provider_map]
    assert providers.count("locus-onnx") == 1


def test_sampling_parameters_reach_the_runtime(litellm_tiny) -> None:  # type: ignore[no-untyped-def]
    litellm = litellm_tiny
    kwargs = {"model": "locus-onnx/tiny", "messages": MESSAGES, "max_tokens": 12}
    a = litellm.completion(temperature=1.5, top_p=0.95, seed=3, **kwargs)
    b = litellm.completion(temperature=1.5, top_p=0.95, seed=3, **kwargs)
    direct = "".join(
        d.text
        for d in models.load("tiny").stream_chat(
            MESSAGES, max_tokens=12, temperature=1.5, top_p=0.95, seed=3
        )
    )
    assert a.choices[0].message.content == b.choices[0].message.content == direct
    greedy = litellm.completion(**kwargs).choices[0].message.content
    stop = greedy.strip()[4:7]
    cut = litellm.completion(stop=[stop], **kwargs)
    assert cut.choices[0].message.content == greedy[: greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_streaming_yields_deltas_and_usage(litellm_tiny) -> None:  # type: ignore[no-untyped-def]
    litellm = litellm_tiny
    full = litellm.completion(model="locus-onnx/tiny", messages=MESSAGES, max_tokens=10)
    stream = litellm.completion(
        model="locus-onnx/tiny",
        messages=MESSAGES,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_async_completion_and_streaming(litellm_tiny) -> None:  # type: ignore[no-untyped-def]
    litellm = litellm_tiny

    async def both() -> tuple[str, str, str | None]:
        response = await litellm.acompletion(
            model="locus-onnx/tiny", messages=MESSAGES, max_tokens=10
        )
        stream = await litellm.acompletion(
            model="locus-onnx/tiny", messages=MESSAGES, max_tokens=10, stream=True
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        return response.choices[0].message.content, text, chunks[-1].choices[0].finish_reason

    whole, streamed, finish = asyncio.run(both())
    assert whole == streamed
    assert finish in ("stop", "length")


def test_errors_map_to_litellm_exceptions(litellm_tiny) -> None:  # type: ignore[no-untyped-def]
    litellm = litellm_tiny
    with pytest.raises(litellm.NotFoundError, match="locus models add FILE.gguf --name absent"):
        litellm.completion(model="locus-onnx/absent", messages=MESSAGES)
    long = [{"role": "user", "content": "Paris " * 200}]
    with pytest.raises(litellm.ContextWindowExceededError, match="context window"):
        litellm.completion(model="locus-onnx/tiny", messages=long)

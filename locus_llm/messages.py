"""Validation and text extraction for OpenAI-format chat messages (what LiteLLM takes)."""

from __future__ import annotations

import json
from typing import Any

from locus_llm.errors import InvalidRequestError

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MAX_PROMPT_CHARS = 50_000_000  # beyond this nothing useful can happen; refuse before analysis


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Return the messages as a list of dicts, or raise InvalidRequestError saying what is wrong.

    A bare string is taken as one user message, as LiteLLM callers often expect.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list | tuple):
        raise InvalidRequestError(
            f"messages must be a list of {{'role', 'content'}} dicts, not {type(messages).__name__}"
        )
    if not messages:
        raise InvalidRequestError("messages is empty: at least one message is required")
    total = 0
    result = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages[{i}] must be a dict, not {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role is {role!r}: expected one of {sorted(ROLES)}"
            )
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise InvalidRequestError(f"messages[{i}].content is missing")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequestError(
                f"messages[{i}].content must be a string or a list of parts, "
                f"not {type(content).__name__}"
            )
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or "type" not in part:
                    raise InvalidRequestError(
                        f"messages[{i}].content[{j}] must be a dict with a 'type'"
                    )
        total += len(message_text(message))
        if total > MAX_PROMPT_CHARS:
            raise InvalidRequestError(
                f"messages are larger than {MAX_PROMPT_CHARS:,} characters: refusing"
            )
        result.append(message)
    return result


def message_text(message: dict[str, Any]) -> str:
    """All text of one message that could carry data: content, text parts, tool-call arguments.

    Entity spans found by analysis index this string, so redaction and analysis must agree on it.
    """
    pieces: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        pieces.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                pieces.append(part["text"])
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                pieces.append(arguments)
            elif arguments is not None:
                pieces.append(json.dumps(arguments))
    return "\n".join(pieces)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The text that says what is being asked now: the last user message (or the last message)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return message_text(messages[-1])

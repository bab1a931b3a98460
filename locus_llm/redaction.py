"""Reversible pseudonymisation for redact-and-route.

When the policy allows a locus only with redaction, each value of the listed entity types is
replaced, before dispatch, by a typed placeholder (`<PERSON_1>`): the same value gets the same
placeholder everywhere in the request, so the model can still reason about "who is who". The
answer is restored on the way back: whole responses, streamed chunks (a placeholder may be split
across chunks) and tool-call arguments.

One Vault per request holds the mapping; nothing is shared between requests, so concurrent
requests cannot leak values into each other.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Collection
from typing import Any

from locus_llm.messages import message_text
from locus_llm.profile import Entity

PLACEHOLDER = re.compile(r"<([A-Z][A-Z0-9_]*?)_(\d+)>")
# Keys whose string values are structure, not content: never rewritten.
_STRUCTURAL_KEYS = frozenset({"role", "type", "id", "tool_call_id", "name"})


def _value_pattern(values: list[str]) -> re.Pattern[str]:
    """One alternation, longest value first, so a value inside a longer one never wins. A value
    that starts (ends) with a letter or digit must not continue a word there: "Ann" is not
    replaced inside "Annual"."""
    parts = []
    for value in sorted(values, key=len, reverse=True):
        body = re.escape(value)
        if value[0].isalnum():
            body = r"(?<![^\W_])" + body
        if value[-1].isalnum():
            body = body + r"(?![^\W_])"
        parts.append(body)
    return re.compile("|".join(parts))


class StreamRestorer:
    """Restores placeholders in a stream of text chunks. It holds back only a tail that could
    still become a placeholder ("<PER", "<PERSON_1"), and emits everything else at once."""

    def __init__(self, vault: Vault) -> None:
        self._vault = vault
        self._pending = ""

    def feed(self, chunk: str) -> str:
        text = self._pending + chunk
        hold = self._held_tail(text)
        self._pending = text[len(text) - hold :] if hold else ""
        return self._vault.restore(text[: len(text) - hold])

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return self._vault.restore(text)

    def _held_tail(self, text: str) -> int:
        start = text.rfind("<", max(0, len(text) - self._vault.longest_placeholder))
        if start < 0:
            return 0
        tail = text[start:]
        if tail.endswith(">"):  # a complete placeholder (or none): restore it now
            return 0
        if any(p.startswith(tail) for p in self._vault.placeholders):
            return len(tail)
        return 0


class Vault:
    """The value ↔ placeholder mapping of one request."""

    def __init__(self) -> None:
        self._placeholder_of: dict[tuple[str, str], str] = {}  # (type, value) → placeholder
        self._value_of: dict[str, str] = {}  # placeholder → value
        self._counts: dict[str, int] = {}

    @property
    def redacted_types(self) -> dict[str, int]:
        """Entity type → number of distinct values redacted (for the decision record)."""
        return dict(self._counts)

    @property
    def placeholders(self) -> Collection[str]:
        return self._value_of.keys()

    @property
    def longest_placeholder(self) -> int:
        return max((len(p) for p in self._value_of), default=0)

    def placeholder(self, entity_type: str, value: str) -> str:
        """The stable placeholder of a value (created on first sight)."""
        key = (entity_type, value)
        if key not in self._placeholder_of:
            number = self._counts.get(entity_type, 0) + 1
            self._counts[entity_type] = number
            token = f"<{entity_type}_{number}>"
            self._placeholder_of[key] = token
            self._value_of[token] = value
        return self._placeholder_of[key]

    def redact_messages(
        self, messages: list[dict[str, Any]], entities: list[Entity], types: Collection[str]
    ) -> list[dict[str, Any]]:
        """New messages where every value of a listed type, wherever it occurs in any content
        string, text part or tool-call argument, is its placeholder. The input is not mutated."""
        wanted = {t.upper() for t in types}
        texts = [message_text(m) for m in messages]
        by_value: dict[str, str] = {}
        for entity in entities:
            if entity.type.upper() not in wanted or not 0 <= entity.message < len(messages):
                continue
            value = texts[entity.message][entity.start : entity.end]
            if value.strip() and value not in by_value:
                by_value[value] = self.placeholder(entity.type, value)
        redacted = copy.deepcopy(messages)
        if not by_value:
            return redacted
        pattern = _value_pattern(list(by_value))

        def replace(text: str) -> str:
            return pattern.sub(lambda m: by_value[m.group(0)], text)

        return [_rewrite_message(m, replace) for m in redacted]

    def restore(self, text: str) -> str:
        """Every known placeholder in `text` back to its value; unknown ones are left alone."""
        if not self._value_of or "<" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._value_of.get(m.group(0), m.group(0)), text)

    def restore_tool_calls(self, tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """OpenAI-format tool calls with values restored inside the JSON arguments (new list)."""
        restored = copy.deepcopy(tool_calls)
        for call in restored:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                function["arguments"] = self._restore_json_text(arguments)
            elif arguments is not None:
                function["arguments"] = self._restore_tree(arguments)
        return restored

    def stream_restorer(self) -> StreamRestorer:
        return StreamRestorer(self)

    def _restore_json_text(self, arguments: str) -> str:
        """Restore in the JSON text first: values were taken from the request's raw text, escapes
        included, so they go back as they were. A placeholder the model wrote escaped
        (\\u003cPERSON_1\\u003e) is only visible once parsed: restore those in the parsed tree."""
        restored = self.restore(arguments)
        try:
            tree = json.loads(restored)
        except ValueError:
            return restored
        again = self._restore_tree(tree)
        return restored if again == tree else json.dumps(again, ensure_ascii=False)

    def _restore_tree(self, node: Any) -> Any:
        if isinstance(node, str):
            return self.restore(node)
        if isinstance(node, list):
            return [self._restore_tree(x) for x in node]
        if isinstance(node, dict):
            return {self.restore(k): self._restore_tree(v) for k, v in node.items()}
        return node


def _rewrite_message(message: dict[str, Any], replace: Any) -> dict[str, Any]:
    """Apply `replace` to every content string of one (already copied) message."""
    for key, value in list(message.items()):
        if key in _STRUCTURAL_KEYS:
            continue
        if key == "tool_calls" and isinstance(value, list):
            for call in value:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    function["arguments"] = _rewrite_arguments(function["arguments"], replace)
                elif isinstance(function, dict) and function.get("arguments") is not None:
                    function["arguments"] = _rewrite_tree(function["arguments"], replace)
            continue
        message[key] = _rewrite_tree(value, replace)
    return message


def _rewrite_arguments(arguments: str, replace: Any) -> str:
    """Tool-call arguments are JSON text: replace in the text, and if that broke the JSON (a
    value holding a quote or an escape), replace inside the parsed strings instead."""
    rewritten = replace(arguments)
    try:
        tree = json.loads(arguments)
    except ValueError:
        return rewritten
    try:
        json.loads(rewritten)
        return rewritten
    except ValueError:
        return json.dumps(_rewrite_tree(tree, replace), ensure_ascii=False)


def _rewrite_tree(node: Any, replace: Any) -> Any:
    if isinstance(node, str):
        return replace(node)
    if isinstance(node, list):
        return [_rewrite_tree(x, replace) for x in node]
    if isinstance(node, dict):
        return {
            k: (v if k in _STRUCTURAL_KEYS else _rewrite_tree(v, replace)) for k, v in node.items()
        }
    return node

"""The decision log: one JSON line per call, like OPA's decision log. No prompt, no entity values."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from locus_llm.messages import message_text

log = logging.getLogger("locus.record")


def prompt_digest(messages: list[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for message in messages:
        digest.update(str(message.get("role")).encode() + b"\0")
        digest.update(message_text(message).encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


class DecisionLog:
    """Appends records to a JSONL file (if configured) and keeps the most recent in memory."""

    def __init__(self, path: Path | None = None, keep: int = 200) -> None:
        self.path = Path(path) if path else None
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str)
        with self._lock:
            self.recent.append(record)
            if self.path is None:
                return
            try:
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(line + "\n")
            except OSError as exc:  # the answer matters more than its audit line; say so loudly
                log.error("cannot write decision log %s: %s", self.path, exc)

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.recent)[-n:]

"""What the router knows about one request: the RequestProfile and its parts.

The profile is the only thing the policy and the selection see about a request. It carries entity
types, spans and scores, never entity values: values stay in the caller's messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any


class DataClass(IntEnum):
    """Sensitivity of a request, ordered: a higher class may only be handled by fewer loci."""

    PUBLIC = 0
    INTERNAL = 1
    CONFIDENTIAL = 2
    RESTRICTED = 3

    @classmethod
    def parse(cls, value: str | int | DataClass) -> DataClass:
        if isinstance(value, DataClass):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            names = ", ".join(c.name for c in cls)
            raise ValueError(f"unknown data class {value!r}: expected one of {names}") from None


@dataclass(frozen=True)
class Entity:
    """One sensitive span found in a message. `start`/`end` index that message's text."""

    type: str
    start: int
    end: int
    score: float
    message: int = 0  # index of the message in the conversation

    def summary(self) -> dict[str, Any]:
        return {"type": self.type, "score": round(self.score, 3)}


@dataclass(frozen=True)
class TaskEstimate:
    """The classifier's view of a request: what kind of work it is and how hard."""

    task: str
    task_scores: dict[str, float]
    difficulty: float  # P(a small model answers inadequately where a strong one would not)


UNKNOWN_TASK = TaskEstimate(task="unknown", task_scores={}, difficulty=1.0)


@dataclass
class RoutingContext:
    """What the caller says about the call, beside its messages."""

    tenant: str = "default"
    user: str | None = None
    app: str | None = None
    interactive: bool = False
    latency_budget_ms: float | None = None
    max_cost_usd: float | None = None
    data_label: DataClass | None = None  # the caller's label: can raise the class, never lower it

    @classmethod
    def from_any(cls, value: RoutingContext | dict[str, Any] | None) -> RoutingContext:
        if value is None:
            return cls()
        if isinstance(value, RoutingContext):
            return value
        if not isinstance(value, dict):
            raise TypeError(
                f"routing context must be a dict or RoutingContext, not {type(value).__name__}"
            )
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"unknown routing context field(s) {unknown}: expected {sorted(known)}"
            )
        data = dict(value)
        if data.get("data_label") is not None:
            data["data_label"] = DataClass.parse(data["data_label"])
        return cls(**data)

    def to_policy(self) -> dict[str, Any]:
        data = asdict(self)
        data["data_label"] = self.data_label.name if self.data_label is not None else None
        return data


@dataclass
class RequestProfile:
    task: str
    task_scores: dict[str, float]
    difficulty: float
    tokens_in: int
    tokens_out_est: int
    data_class: DataClass
    entities: list[Entity] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def entity_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entity in self.entities:
            counts[entity.type] = counts.get(entity.type, 0) + 1
        return counts

    def to_policy(self) -> dict[str, Any]:
        """The request part of the policy input: no values, no spans."""
        return {
            "task": self.task,
            "task_scores": {k: round(v, 4) for k, v in self.task_scores.items()},
            "difficulty": round(self.difficulty, 4),
            "tokens_in": self.tokens_in,
            "tokens_out_est": self.tokens_out_est,
            "data_class": self.data_class.name,
            "entities": [e.summary() for e in self.entities],
            "flags": list(self.flags),
        }

    def to_dict(self) -> dict[str, Any]:
        """Full profile for `locus analyze`: spans included, values never."""
        return {
            "task": self.task,
            "task_scores": {k: round(v, 4) for k, v in self.task_scores.items()},
            "difficulty": round(self.difficulty, 4),
            "data_class": self.data_class.name,
            "entities": [
                {
                    "type": e.type,
                    "start": e.start,
                    "end": e.end,
                    "score": round(e.score, 3),
                    "message": e.message,
                }
                for e in self.entities
            ],
            "tokens_in": self.tokens_in,
            "tokens_out_est": self.tokens_out_est,
            "flags": list(self.flags),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "errors": list(self.errors),
        }

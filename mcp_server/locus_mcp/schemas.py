"""The tools' inputs and outputs as pydantic models: they become the tools' JSON schemas.

Outputs carry entity types and counts, never entity values or spans, and never the prompt.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DataClassName = Literal["PUBLIC", "INTERNAL", "CONFIDENTIAL", "RESTRICTED"]
Zone = Literal["device", "onprem", "cloud"]

MAX_TEXT_CHARS = 400_000  # per message: ~100k tokens, beyond any locus's context window
MAX_MESSAGES = 500


# --- inputs -------------------------------------------------------------------------------------


class Message(BaseModel):
    """One chat message, OpenAI style, text content only."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class RoutingContextInput(BaseModel):
    """What the caller says about the call besides its messages (all optional)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(default="default", max_length=200)
    user: str | None = Field(default=None, max_length=200)
    app: str | None = Field(default=None, max_length=200)
    interactive: bool = False
    latency_budget_ms: float | None = Field(default=None, gt=0)
    max_cost_usd: float | None = Field(default=None, ge=0)
    data_label: DataClassName | None = Field(
        default=None,
        description="The caller's own label: can raise the data class, never lower it.",
    )

    def to_router(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# --- shared output parts ------------------------------------------------------------------------


class LocusScore(BaseModel):
    locus: str
    zone: str
    capability: int
    meets_floor: bool
    predicted_latency_ms: float
    within_budget: bool
    predicted_cost_usd: float
    measured: bool


class Obligations(BaseModel):
    redact: list[str] = Field(description="Entity types to pseudonymise before leaving.")
    redact_zones: list[str] = Field(description="Zones the redaction applies to.")


class Attempt(BaseModel):
    locus: str
    outcome: str  # ok | error | skipped
    latency_ms: float | None = None
    reason: str | None = None
    error_class: str | None = None
    error: str | None = None
    status: int | None = None
    redacted: bool | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class EntitySummary(BaseModel):
    type: str
    score: float
    message: int = Field(description="Index of the message the entity was found in.")


class Profile(BaseModel):
    """What the router's analysis saw: kinds of things, never the things themselves."""

    task: str
    task_scores: dict[str, float]
    difficulty: float = Field(description="Need for a strong model, 0..1.")
    data_class: DataClassName
    entity_types: dict[str, int] = Field(description="Sensitive entity types found, with counts.")
    entities: list[EntitySummary]
    tokens_in: int
    tokens_out_est: int
    flags: list[str]
    errors: list[str] = Field(
        description="Analysis parts that failed (the router then fails closed)."
    )
    timings_ms: dict[str, float]


# --- tool results -------------------------------------------------------------------------------


class RouteResult(BaseModel):
    """Where a request would run and why; nothing was sent."""

    decision_id: str
    locus: str | None = Field(description="The chosen locus, or null when the policy allows none.")
    zone: str | None
    plan: list[str] = Field(description="Primary locus then fallbacks, all policy-allowed.")
    allowed: list[str]
    denied: dict[str, list[str]] = Field(description="Denied loci with the policy's reasons.")
    obligations: Obligations
    capability_floor: int
    below_floor: bool
    scores: dict[str, LocusScore]
    profile: Profile
    policy_revision: str
    timings_ms: dict[str, float]


class ChatResult(BaseModel):
    """The answer and where it ran."""

    answer: str
    finish_reason: str | None
    locus: str | None = Field(description="The locus that answered.")
    zone: str | None
    model: str | None
    planned: str | None = Field(description="The locus the plan put first (differs on failover).")
    plan: list[str]
    allowed: list[str]
    denied: dict[str, list[str]]
    capability_floor: int
    below_floor: bool
    scores: dict[str, LocusScore]
    attempts: list[Attempt]
    usage: Usage
    cost_usd: float
    redacted: dict[str, int] = Field(
        description="Entity types pseudonymised on the way out, counts."
    )
    data_class: DataClassName
    task: str
    policy_revision: str
    decision_id: str


class LocusStatus(BaseModel):
    name: str
    zone: str
    model: str
    capability: int
    context_window: int
    region: str | None
    healthy: bool = Field(description="False while the circuit breaker is open.")
    credentials: bool = Field(description="Whether the locus's key variable (if any) is set.")
    measured: bool = Field(description="True once latency comes from live calls, not priors.")
    p50_ttft_ms: float = Field(description="Time to first token: measured average, else prior.")
    tokens_per_s: float
    error_rate: float
    usd_per_mtok_in: float | None
    usd_per_mtok_out: float | None
    calls: int
    errors: int
    latency_ms: float | None = Field(description="Measured end-to-end latency average.")
    cost_usd: float = Field(description="Spent on this locus by this server so far.")


class LociResult(BaseModel):
    loci: list[LocusStatus]
    policy_revision: str


class PolicyCheckResult(BaseModel):
    """The policy's decision for a hypothetical request."""

    allowed: list[str]
    denied: dict[str, list[str]]
    allowed_zones: list[str]
    cloud_allowed: bool = Field(description="Whether any cloud locus is allowed.")
    obligations: Obligations
    capability_floor: int
    policy_revision: str

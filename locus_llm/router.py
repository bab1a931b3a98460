"""The facade: analyze → decide (Rego) → select → dispatch (LiteLLM) → record.

    router = Router.default()                      # the on-device model, nothing leaves the machine
    response = router.completion([{"role": "user", "content": "Summarise: ..."}])
    response.locus["locus"], response.locus["attempts"]

`route()` stops before dispatch and returns the Decision; `completion()`/`acompletion()` take the
usual LiteLLM parameters (stream, tools, max_tokens, temperature, ...).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from locus_llm import dispatch
from locus_llm.analysis import Analyzer
from locus_llm.analysis.tokens import estimate_prompt_tokens
from locus_llm.config import LocusConfig, config_from_dict, load_config
from locus_llm.errors import InvalidRequestError, NoAllowedLocusError
from locus_llm.messages import normalize_messages
from locus_llm.policy import PolicyDecision, PolicyEngine
from locus_llm.profile import DataClass, RequestProfile, RoutingContext
from locus_llm.record import DecisionLog, prompt_digest
from locus_llm.selection import Plan, select
from locus_llm.state import BudgetGuard, StateUnavailable, open_state
from locus_llm.stats import Stats

LOCAL_PROVIDER = "locus-onnx/"
ROUTING_FIELDS = tuple(RoutingContext.__dataclass_fields__)  # what a caller may say per call
# What `locus route --json` prints, and so what the gateway's /v1/route answers (plus id, budget).
ROUTE_FIELDS = (
    "locus",
    "zone",
    "allowed",
    "denied",
    "profile",
    "scores",
    "policy_revision",
    "plan",
    "capability_floor",
    "obligations",
)


@dataclass
class Decision:
    """Where a call goes and why: everything the policy and the selection saw and said."""

    id: str
    profile: RequestProfile
    context: RoutingContext
    policy: PolicyDecision
    plan: Plan
    loci: dict[str, dict[str, Any]]  # the policy input's view of every locus
    timings_ms: dict[str, float] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)  # spent_usd, budget_usd, budget_state

    @property
    def locus(self) -> str | None:
        return self.plan.primary

    def to_dict(self) -> dict[str, Any]:
        chosen = self.plan.primary
        return {
            "id": self.id,
            "locus": chosen,
            "zone": self.loci[chosen]["zone"] if chosen else None,
            "plan": self.plan.loci,
            "allowed": self.policy.allowed,
            "denied": self.policy.denied,
            "obligations": {"redact": self.policy.redact, "redact_zones": self.policy.redact_zones},
            "capability_floor": self.policy.capability_floor,
            "below_floor": self.plan.below_floor,
            "scores": {name: s.to_dict() for name, s in self.plan.scores.items()},
            "zones": {name: view["zone"] for name, view in self.loci.items()},
            "profile": self.profile.to_dict(),
            "policy_revision": self.policy.revision,
            "budget": self.budget,
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


class Router:
    def __init__(
        self,
        config: LocusConfig | None = None,
        *,
        analyzer: Analyzer | None = None,
        stats: Stats | None = None,
    ) -> None:
        self.config = config or load_config()
        self.analyzer = analyzer or Analyzer(
            classifier_path=self.config.analysis.classifier,
            sensitivity=self.config.sensitivity,
            tokens_out_default=self.config.analysis.tokens_out_default,
        )
        self.policy = PolicyEngine(
            self.config.policy.bundle, self.config.policy.data, reload=self.config.policy.reload
        )
        # breakers, profiles and tenant spend: in this process, or shared through Redis
        self.state = open_state(self.config, stats)
        self.stats = self.state.stats
        if stats is None and self.config.profiles is not None:
            self.stats.load_profiles(self.config.profiles)
        self.log = DecisionLog(self.config.decision_log)
        self._loci = {locus.name: locus for locus in self.config.loci}
        self._largest_window = max(locus.context_window for locus in self.config.loci)
        self._uses_local = any(lo.model.startswith(LOCAL_PROVIDER) for lo in self.config.loci)

    @classmethod
    def default(cls) -> Router:
        """The embedded default (or LOCUS_CONFIG if set): works with no file and no keys."""
        return cls(load_config())

    @classmethod
    def from_file(cls, path: str | Path) -> Router:
        return cls(load_config(path))

    def close(self) -> None:
        """Write pending state (Redis) and stop its background thread; routing still works."""
        self.state.close()

    def warm(self) -> None:
        """Load the analysis models and LiteLLM now rather than on the first call."""
        self.analyzer.warm()
        dispatch.litellm_module(self._uses_local, self.config.loci)

    # --- deciding ----------------------------------------------------------------------------

    def analyze(
        self,
        messages: Any,
        context: RoutingContext | dict[str, Any] | None = None,
        *,
        max_tokens: int | None = None,
        tools: list[Any] | None = None,
    ) -> RequestProfile:
        return self.analyzer.analyze(
            normalize_messages(messages),
            RoutingContext.from_any(context),
            max_tokens=max_tokens,
            tools=tools,
        )

    def policy_input(self, profile: RequestProfile, context: RoutingContext) -> dict[str, Any]:
        return {
            "request": profile.to_policy(),
            "context": {**context.to_policy(), **self.budget_view(context.tenant)},
            "loci": self.loci_view(),
        }

    def budget_view(self, tenant: str) -> dict[str, Any]:
        """The tenant's budget as the policy sees it: spent, limit, and "ok", "exceeded" or
        "unknown" (the state backend cannot say: paid loci must be denied)."""
        budget = self.config.budgets.for_tenant(tenant)
        if budget is None:
            return {"spent_usd": None, "budget_usd": None, "budget_state": "ok"}
        try:
            spent = self.state.spent(tenant)
        except StateUnavailable:
            return {"spent_usd": None, "budget_usd": budget, "budget_state": "unknown"}
        return {
            "spent_usd": round(spent, 9),
            "budget_usd": budget,
            "budget_state": "exceeded" if spent >= budget else "ok",
        }

    def loci_view(self) -> dict[str, dict[str, Any]]:
        """What the policy and the selection know of each locus: config, health, measurements."""
        view = {}
        for name, locus in self._loci.items():
            measured = self.stats.profile(
                name,
                locus.zone,
                expected_ttft_ms=locus.expected_ttft_ms,
                expected_tokens_per_s=locus.expected_tokens_per_s,
            )
            view[name] = {
                "zone": locus.zone,
                "model": locus.model,
                "capability": locus.capability,
                "context_window": locus.context_window,
                "region": locus.region,
                "credentials": locus.has_credentials(),
                "usd_per_mtok_in": locus.usd_per_mtok_in,
                "usd_per_mtok_out": locus.usd_per_mtok_out,
                **measured,
            }
        return view

    def route(
        self,
        messages: Any,
        context: RoutingContext | dict[str, Any] | None = None,
        *,
        max_tokens: int | None = None,
        tools: list[Any] | None = None,
        locus: str | None = None,
    ) -> Decision:
        """Analyze, evaluate the policy and rank the allowed loci; nothing is sent."""
        started = time.perf_counter()
        messages = normalize_messages(messages)
        context = RoutingContext.from_any(context)
        # Nothing can take a prompt larger than every context window: say so before analysing it.
        needed = estimate_prompt_tokens(messages, tools) + (max_tokens or 0)
        if needed > self._largest_window:
            raise NoAllowedLocusError(
                f"the request needs about {needed:,} tokens; the largest context window of any "
                f"configured locus is {self._largest_window:,}: nothing was sent"
            )
        profile = self.analyzer.analyze(messages, context, max_tokens=max_tokens, tools=tools)
        analyzed = time.perf_counter()
        policy_input = self.policy_input(profile, context)
        verdict = self.policy.evaluate(policy_input)
        decided = time.perf_counter()
        allowed = verdict.allowed
        if locus is not None:
            if locus not in self._loci:
                raise InvalidRequestError(
                    f"unknown locus {locus!r}: configured are {sorted(self._loci)}"
                )
            allowed = [locus] if locus in verdict.allowed else []
        plan = select(allowed, policy_input, verdict.capability_floor, self.config.objective)
        timings = {
            "analyze": (analyzed - started) * 1000,
            "policy": (decided - analyzed) * 1000,
            "select": (time.perf_counter() - decided) * 1000,
            **{f"analyze.{k}": v for k, v in profile.timings_ms.items()},
        }
        budget = {
            k: policy_input["context"][k] for k in ("spent_usd", "budget_usd", "budget_state")
        }
        return Decision(
            uuid.uuid4().hex, profile, context, verdict, plan, policy_input["loci"], timings, budget
        )

    def policy_check(
        self, request: dict[str, Any], context: RoutingContext | dict[str, Any] | None = None
    ) -> PolicyDecision:
        """The policy's decision for a hypothetical request profile (no messages needed)."""
        base = RequestProfile(
            task="unknown",
            task_scores={},
            difficulty=0.5,
            tokens_in=100,
            tokens_out_est=256,
            data_class=DataClass.PUBLIC,
        )
        merged = {**base.to_policy(), **request}
        merged["data_class"] = str(merged["data_class"]).upper()
        if merged["data_class"] not in {"PUBLIC", "INTERNAL", "CONFIDENTIAL", "RESTRICTED"}:
            raise InvalidRequestError(
                f"request.data_class {request.get('data_class')!r}: expected "
                "PUBLIC, INTERNAL, CONFIDENTIAL or RESTRICTED"
            )
        context = RoutingContext.from_any(context)
        policy_input = {
            "request": merged,
            "context": {**context.to_policy(), **self.budget_view(context.tenant)},
            "loci": self.loci_view(),
        }
        return self.policy.evaluate(policy_input)

    # --- running -------------------------------------------------------------------------------

    def completion(
        self,
        messages: Any,
        *,
        context: RoutingContext | dict[str, Any] | None = None,
        locus: str | None = None,
        stream: bool = False,
        **params: Any,
    ) -> Any:
        """Route and run. Returns a LiteLLM ModelResponse (with `.locus`), or a RoutedStream."""
        messages = normalize_messages(messages)
        decision, run = self._prepare(messages, context, locus, stream, params)
        litellm = dispatch.litellm_module(self._uses_local, self.config.loci)
        finish = self._finisher(decision, messages)
        if stream:
            return dispatch.RoutedStream(run, litellm, finish)
        return dispatch.complete(run, litellm, finish)

    async def acompletion(
        self,
        messages: Any,
        *,
        context: RoutingContext | dict[str, Any] | None = None,
        locus: str | None = None,
        stream: bool = False,
        **params: Any,
    ) -> Any:
        messages = normalize_messages(messages)
        # analysis is CPU work and the budget a Redis round trip: keep both off the event loop
        decision, run = await asyncio.to_thread(
            self._prepare, messages, context, locus, stream, params
        )
        litellm = dispatch.litellm_module(self._uses_local, self.config.loci)
        finish = self._finisher(decision, messages)
        if stream:
            return dispatch.AsyncRoutedStream(run, litellm, finish)
        return await dispatch.acomplete(run, litellm, finish)

    def _prepare(
        self,
        messages: list[dict[str, Any]],
        context: Any,
        locus: str | None,
        stream: bool,
        params: dict[str, Any],
    ) -> tuple[Decision, dispatch.Run]:
        params = {k: v for k, v in params.items() if v is not None}
        for reserved in ("model", "messages", "api_base", "api_key", "base_url"):
            if reserved in params:
                raise InvalidRequestError(
                    f"{reserved!r} is chosen by the router per locus; "
                    "configure it on the locus instead"
                )
        max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
        decision = self.route(
            messages, context, max_tokens=max_tokens, tools=params.get("tools"), locus=locus
        )
        if not decision.plan.loci:
            self._write(decision, messages, None, None, "refused")
            detail = "; ".join(f"{n}: {', '.join(r)}" for n, r in decision.policy.denied.items())
            raise NoAllowedLocusError(
                f"policy (revision {decision.policy.revision}) allows no locus for this "
                f"{decision.profile.data_class.name} request"
                + (f" on locus {locus!r}" if locus else "")
                + (f": {detail}" if detail else ""),
                denied=decision.policy.denied,
            )
        if stream:
            params["stream"] = True
            params.setdefault("stream_options", {"include_usage": True})
        budget = BudgetGuard(
            self.state,
            decision.context.tenant,
            decision.budget["budget_usd"],
            {n: s.predicted_cost_usd for n, s in decision.plan.scores.items()},
        )
        run = dispatch.Run(
            [self._loci[name] for name in decision.plan.loci],
            messages,
            params,
            stats=self.stats,
            entities=decision.profile.entities,
            redact=decision.policy.redact,
            redact_zones=decision.policy.redact_zones,
            allow_content_filter_failover=self.config.allow_failover_on_content_filter,
            budget=budget,
        )
        return decision, run

    def _finisher(self, decision: Decision, messages: list[dict[str, Any]]) -> dispatch.Finish:
        def finish(
            run: dispatch.Run, outcome: dict[str, Any] | None, error: BaseException | None
        ) -> dict[str, Any]:
            if run.budget is not None:  # charge the tenant what the call really cost
                run.budget.end(outcome["cost_usd"] if outcome else None)
            return self._write(
                decision, messages, run, outcome, "ok" if error is None else "error", error
            )

        return finish

    def _write(
        self,
        decision: Decision,
        messages: list[dict[str, Any]],
        run: dispatch.Run | None,
        outcome: dict[str, Any] | None,
        status: str,
        error: BaseException | None = None,
    ) -> dict[str, Any]:
        """Write the decision record and return the summary attached to the response."""
        profile = decision.profile
        info = {
            "decision_id": decision.id,
            "locus": outcome["locus"] if outcome else None,
            "zone": outcome["zone"] if outcome else None,
            "model": outcome["model"] if outcome else None,
            "planned": decision.plan.primary,
            "plan": decision.plan.loci,
            "allowed": decision.policy.allowed,
            "denied": decision.policy.denied,
            "capability_floor": decision.policy.capability_floor,
            "below_floor": decision.plan.below_floor,
            "scores": {n: s.to_dict() for n, s in decision.plan.scores.items()},
            "policy_revision": decision.policy.revision,
            "attempts": list(run.attempts) if run else [],
            "usage": outcome["usage"] if outcome else {},
            "cost_usd": outcome["cost_usd"] if outcome else 0.0,
            "redacted": dict(run.redacted) if run else {},
            "data_class": profile.data_class.name,
            "task": profile.task,
            "timings_ms": {k: round(v, 3) for k, v in decision.timings_ms.items()},
        }
        record = {
            "id": decision.id,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "outcome": status,
            "error": f"{type(error).__name__}: {error}"[:500] if error else None,
            "policy_revision": decision.policy.revision,
            "prompt_sha256": prompt_digest(messages),
            "profile": {
                "task": profile.task,
                "difficulty": round(profile.difficulty, 4),
                "data_class": profile.data_class.name,
                "entities": profile.entity_counts(),
                "tokens_in": profile.tokens_in,
                "flags": profile.flags,
                "errors": profile.errors,
            },
            "context": {
                "tenant": decision.context.tenant,
                "user": decision.context.user,
                "app": decision.context.app,
                "interactive": decision.context.interactive,
            },
            "budget": decision.budget,
            "allowed": decision.policy.allowed,
            "denied": decision.policy.denied,
            "obligations": {"redact": decision.policy.redact},
            "plan": decision.plan.loci,
            "chosen": info["locus"],
            "attempts": info["attempts"],
            "tokens": info["usage"],
            "cost_usd": info["cost_usd"],
            "redacted": info["redacted"],
            "timings_ms": {k: round(v, 3) for k, v in decision.timings_ms.items()},
        }
        self.log.write(record)
        return info

    # --- status ------------------------------------------------------------------------------

    def loci_status(self) -> list[dict[str, Any]]:
        view = self.loci_view()
        return [
            {"name": name, **view[name], "stats": self.stats.get(name).__dict__} for name in view
        ]


@cache
def _shared_router(path: str) -> Router:
    return Router.from_file(path) if path else Router.default()


def router_for(config: str | Path | LocusConfig | dict[str, Any] | None) -> Router:
    """The Router for a config path, LocusConfig or dict (None: LOCUS_CONFIG, else the default).

    Adapters built from the same file share one Router in a process: one analyzer, one set of
    circuit breakers and measurements, one policy engine.
    """
    if isinstance(config, LocusConfig):
        return Router(config)
    if isinstance(config, dict):
        return Router(config_from_dict(config))
    if config is None:
        config = os.environ.get("LOCUS_CONFIG", "")
    return _shared_router(str(Path(config).expanduser().resolve()) if config else "")

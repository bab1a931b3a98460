"""A LiteLLM Proxy hook: locus analysis, policy and selection in front of an existing proxy fleet.

The proxy keeps doing what it does (keys, teams, rate limits, logging, the HTTP calls); locus
decides, per request, which of its deployments may take the request and which should.

The mapping: each locus of the locus config is one `model_name` of the proxy's `model_list`,
with the same name. Clients ask for the routing alias `auto` (locus chooses among the loci the
policy allows, as with `locus serve --config`) or for a locus by name (pinned: served only if the policy allows that locus for
this request). Any other model name is refused: a proxy that routes through locus sends every
chat request through its policy. `locus deploy litellm-config` writes a `model_list` from the
locus config so the two cannot drift.

    # proxy config.yaml
    model_list:
      - model_name: onprem
        litellm_params: {model: hosted_vllm/llama-3-8b, api_base: "http://vllm:8000/v1"}
      - model_name: cloud
        litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_API_KEY}
    litellm_settings:
      callbacks: locus_llm.litellm_proxy.locus_hook
    # environment: LOCUS_CONFIG=/etc/locus/config.yaml (loci, policy bundle, state backend)

Per request (`async_pre_call_hook`, chat completions): analyze → policy → select, in a worker
thread (analysis is CPU work; the proxy's event loop keeps serving). The request's `model` becomes
the plan's first locus; its fallbacks are the rest of the plan, so a failover never leaves the
allowed set (the proxy's own configured fallbacks are replaced for routed requests). A redaction
obligation is applied here: values of the listed entity types are pseudonymised before the
request leaves, and restored in the answer (whole responses and streams). Fallbacks are limited to
loci with the same redaction need as the first, so an unredacted request never fails over to a
zone that needed redaction. When the policy allows no locus the proxy answers 403 with an OpenAI
error body naming the policy revision and the reasons; nothing is sent anywhere.

Tenant budgets (`budgets` in the locus config, spend in the state backend): the hook reserves the
predicted cost of the chosen locus before the call (a locus the budget cannot pay for is skipped,
none left is a 403) and charges the answer's cost at the locus's configured prices when the proxy
logs it. The proxy's outcomes also feed the router's circuit breakers and measured profiles, so
selection in the proxy sees what the gateway and embedded routers see (with `state: redis://…`).

Routing context: the tenant is the key's team (else the body's `tenant`, else "default"), the user
the key's user; the fields (tenant, user, app, interactive, latency_budget_ms, max_cost_usd,
data_label) come from a body `locus` object (`extra_body={"locus": {...}}`, as for the gateway;
removed before the request goes on) or from `metadata: {"locus": {...}}`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from locus_llm.config import LocusConfig
from locus_llm.dispatch import ChunkRestorer, cost_usd, usage_of
from locus_llm.errors import InvalidRequestError, LocusError, NoAllowedLocusError, PolicyError
from locus_llm.profile import RoutingContext
from locus_llm.redaction import Vault
from locus_llm.router import ROUTING_FIELDS, Decision, Router, router_for
from locus_llm.state import BudgetGuard

log = logging.getLogger("locus.litellm_proxy")

ROUTING_ALIAS = "auto"  # as `locus serve --config`: the same client code works against both
CHAT_CALLS = frozenset({"completion", "acompletion"})
MAX_IN_FLIGHT = 10_000  # redaction mappings and budget reservations kept per request


def locus_names(router: Router) -> list[str]:
    return [locus.name for locus in router.config.loci]


def refusal(
    status: int, message: str, *, code: str, denied: dict[str, list[str]] | None = None
) -> HTTPException:
    """An HTTPException the proxy renders as an OpenAI error body with this status."""
    detail: dict[str, Any] = {"error": message, "type": "locus", "code": code}
    if denied:
        detail["denied"] = denied
    return HTTPException(status_code=status, detail=detail)


def restore_response(response: Any, vault: Vault) -> Any:
    """Put the pseudonymised values back into a whole chat response (content and tool calls)."""
    for choice in getattr(response, "choices", None) or []:
        message = getattr(choice, "message", None)
        if message is None:
            continue
        if isinstance(message.content, str):
            message.content = vault.restore(message.content)
        if getattr(message, "tool_calls", None):
            restored = vault.restore_tool_calls(
                [
                    call.model_dump() if hasattr(call, "model_dump") else call
                    for call in message.tool_calls
                ]
            )
            for call, new in zip(message.tool_calls, restored, strict=True):
                call.function.arguments = new["function"]["arguments"]
    return response


class LocusProxyHook(CustomLogger):
    """The callback a LiteLLM Proxy names in `litellm_settings.callbacks`."""

    def __init__(
        self,
        config: str | Path | LocusConfig | dict[str, Any] | None = None,
        *,
        router: Router | None = None,
        alias: str = ROUTING_ALIAS,
        warm: bool = False,
    ) -> None:
        """`config` as for `router_for` (None: LOCUS_CONFIG, else the built-in default), or a
        ready `router`; `alias` is the model name that asks locus to choose."""
        super().__init__()
        self.config = config
        self.alias = alias
        self._router: Router | None = router
        self._router_lock = threading.Lock()
        self._vaults: OrderedDict[str, Vault] = OrderedDict()
        self._budgets: OrderedDict[str, BudgetGuard] = OrderedDict()
        if warm:
            threading.Thread(target=self._warm, name="locus-warm", daemon=True).start()

    def _warm(self) -> None:
        try:
            self.router  # noqa: B018 - builds and warms it
        except Exception as exc:  # the first request reports it again, as a 503
            log.error("locus: cannot build the router: %s", exc)

    @property
    def router(self) -> Router:
        """Built on first use (the proxy imports callbacks before it knows it will serve)."""
        if self._router is None:
            with self._router_lock:
                if self._router is None:
                    router = router_for(self.config)
                    router.warm()
                    self._router = router
        return self._router

    # --- before the call ---------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict, call_type: Any
    ) -> dict:
        try:
            router = self._router or await asyncio.to_thread(lambda: self.router)
        except LocusError as exc:
            raise refusal(
                503, f"locus is not configured, nothing was sent: {exc}", code="locus_config_error"
            ) from None
        requested = data.get("model")
        routed = requested == self.alias or requested in locus_names(router)
        if call_type not in CHAT_CALLS:
            if routed:
                raise refusal(
                    400,
                    f"locus routes chat completions only; {call_type} requests "
                    f"for {requested!r} are refused",
                    code="locus_unsupported_call",
                )
            return data
        if not routed:
            raise refusal(
                400,
                f"model {requested!r} is not routed by locus: ask for "
                f"{self.alias!r} or one of the loci {locus_names(router)}",
                code="locus_unknown_model",
            )
        pinned = None if requested == self.alias else requested
        context = self._context(data, user_api_key_dict)
        # analysis is CPU work and the budget reservation a Redis round trip: one worker thread
        # for both, and the proxy's event loop keeps serving meanwhile
        return await asyncio.to_thread(self._decide, router, data, context, pinned)

    def _decide(
        self, router: Router, data: dict, context: dict[str, Any], pinned: str | None
    ) -> dict:
        messages = data.get("messages") or []
        try:
            decision = router.route(
                messages,
                context,
                max_tokens=data.get("max_tokens") or data.get("max_completion_tokens"),
                tools=data.get("tools"),
                locus=pinned,
            )
        except (InvalidRequestError, NoAllowedLocusError) as exc:
            raise refusal(400, f"{exc}", code="locus_invalid_request") from None
        except PolicyError as exc:  # fail closed: nothing is sent without a policy decision
            raise refusal(
                503, f"policy unavailable, nothing was sent: {exc}", code="locus_policy_error"
            ) from None
        return self._apply(decision, data, messages, router)

    def _context(self, data: dict, key: Any) -> dict[str, Any]:
        """The routing context: the caller's `locus` object (body or metadata), with identity
        from the key."""
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        # a body `locus` object (as the gateway takes it) must not travel on to the deployment
        asked = data.pop("locus", None) or metadata.get("locus") or {}
        if not isinstance(asked, dict):
            raise refusal(
                400,
                f"locus must be an object of routing fields {list(ROUTING_FIELDS)}",
                code="locus_invalid_request",
            )
        unknown = sorted(set(asked) - set(ROUTING_FIELDS))
        if unknown:
            raise refusal(
                400,
                f"unknown routing field(s) {unknown} in locus: expected {list(ROUTING_FIELDS)}",
                code="locus_invalid_request",
            )
        context = dict(asked)
        team, user = getattr(key, "team_id", None), getattr(key, "user_id", None)
        if team:  # an authenticated team is the tenant; a body cannot claim another's budget
            context["tenant"] = team
        context.setdefault("tenant", "default")
        if user or data.get("user"):
            context["user"] = user or data.get("user")
        try:  # wrong types and unknown data labels are the caller's error, said before analysis
            RoutingContext.from_any(context)
        except (TypeError, ValueError) as exc:
            raise refusal(400, f"locus: {exc}", code="locus_invalid_request") from None
        return context

    def _apply(self, decision: Decision, data: dict, messages: list[Any], router: Router) -> dict:
        """Rewrite the request to the decision: target, fallbacks, redaction; or refuse it."""
        served = self._served_models()
        plan = [n for n in decision.plan.loci if served is None or n in served]
        policy = decision.policy
        if not plan:
            router._write(decision, messages, None, None, "refused")
            reasons = "; ".join(f"{n}: {', '.join(r)}" for n, r in policy.denied.items())
            unserved = sorted(set(decision.plan.loci) - set(plan))
            detail = reasons or (
                f"allowed loci {unserved} have no deployment in this proxy"
                if unserved
                else "no locus allowed"
            )
            raise refusal(
                403,
                f"policy (revision {policy.revision}) allows no locus for this "
                f"{decision.profile.data_class.name} request: {detail}",
                code="locus_policy_denied",
                denied=policy.denied,
            )

        def needs_redaction(name: str) -> bool:
            return bool(policy.redact) and router.config.locus(name).zone in policy.redact_zones

        # the first locus of the plan the tenant's budget can pay for (a reservation, shared
        # through the state backend: concurrent requests on every replica count)
        budget = BudgetGuard(
            router.state,
            decision.context.tenant,
            decision.budget.get("budget_usd"),
            {n: score.predicted_cost_usd for n, score in decision.plan.scores.items()},
        )
        refused: dict[str, list[str]] = {}
        for name in plan:
            reason = budget.admit(router.config.locus(name))
            if reason is None:
                break
            refused[name] = [reason]
        else:
            router._write(decision, messages, None, None, "refused")
            detail = "; ".join(f"{n}: {r[0]}" for n, r in refused.items())
            raise refusal(
                403,
                f"tenant {decision.context.tenant!r}: {detail}; nothing was sent",
                code="locus_budget_denied",
                denied=refused,
            )
        plan = plan[plan.index(name) :]
        primary = plan[0]
        redact = needs_redaction(primary)
        fallbacks = [n for n in plan[1:] if needs_redaction(n) == redact]
        redacted: dict[str, int] = {}
        if redact:
            vault = Vault()
            data["messages"] = vault.redact_messages(
                messages, decision.profile.entities, policy.redact
            )
            redacted = vault.redacted_types
            self._keep(self._vaults, decision.id, vault)
        if budget.reservation is not None:
            self._keep(self._budgets, decision.id, budget)
        data["model"] = primary
        if fallbacks:
            data["fallbacks"] = fallbacks
        else:
            data["disable_fallbacks"] = True
        locus = router.config.locus(primary)
        outcome = {
            "locus": primary,
            "zone": locus.zone,
            "model": locus.model,
            "usage": {},
            "cost_usd": 0.0,
        }
        router._write(decision, messages, None, outcome, "routed")
        metadata = data.setdefault("metadata", {})
        metadata["locus_decision"] = {
            "id": decision.id,
            "locus": primary,
            "zone": locus.zone,
            "plan": [primary, *fallbacks],
            "data_class": decision.profile.data_class.name,
            "redacted": redacted,
            "policy_revision": policy.revision,
            "tenant": decision.context.tenant,
        }
        return data

    def _served_models(self) -> set[str] | None:
        """The proxy's model names (None outside a proxy: then every locus counts as served)."""
        try:
            from litellm.proxy.proxy_server import llm_router
        except ImportError:
            return None
        if llm_router is None:
            return None
        try:
            return set(llm_router.get_model_names())
        except Exception:  # an older or newer router without the call: do not guess
            return None

    @staticmethod
    def _keep(table: OrderedDict[str, Any], decision_id: str, value: Any) -> None:
        table[decision_id] = value
        while len(table) > MAX_IN_FLIGHT:  # a request the proxy never reported back on
            table.popitem(last=False)

    def _vault_for(self, data: dict | None, *, pop: bool) -> Vault | None:
        metadata = (data or {}).get("metadata") or {}
        decision = metadata.get("locus_decision") if isinstance(metadata, dict) else None
        if not isinstance(decision, dict) or not decision.get("redacted"):
            return None
        get = self._vaults.pop if pop else self._vaults.get
        return get(decision["id"], None)

    # --- after the call ----------------------------------------------------------------------

    async def async_post_call_success_hook(
        self, data: dict, user_api_key_dict: Any, response: Any
    ) -> Any:
        vault = self._vault_for(data, pop=True)
        return restore_response(response, vault) if vault is not None else response

    async def async_post_call_streaming_iterator_hook(
        self, user_api_key_dict: Any, response: Any, request_data: dict
    ) -> AsyncGenerator[Any, None]:
        vault = self._vault_for(request_data, pop=True)
        restore = ChunkRestorer(vault)
        async for chunk in response:
            choices = getattr(chunk, "choices", None) or []
            last = bool(choices) and getattr(choices[0], "finish_reason", None) is not None
            yield restore(chunk, last) if vault is not None else chunk

    async def async_post_call_failure_hook(
        self,
        request_data: dict,
        original_exception: Exception,
        user_api_key_dict: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        self._vault_for(request_data, pop=True)
        return None

    async def async_post_call_response_headers_hook(
        self, data: dict, user_api_key_dict: Any, response: object, *args: Any, **kwargs: Any
    ) -> dict[str, str] | None:
        """Tell the caller where its call was routed (no content, only names)."""
        metadata = (data or {}).get("metadata") or {}
        decision = metadata.get("locus_decision") if isinstance(metadata, dict) else None
        if not isinstance(decision, dict):
            return None
        # the plan, not the outcome: the proxy names the deployment that answered in its own
        # x-litellm-model-group header, which is the locus name
        return {
            "x-locus-plan": ",".join(decision["plan"]),
            "x-locus-data-class": str(decision["data_class"]),
            "x-locus-decision-id": str(decision["id"]),
            "x-locus-policy-revision": str(decision["policy_revision"]),
        }

    # --- measurements: the proxy's outcomes feed the router's breakers and profiles ----------

    async def async_log_success_event(
        self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        name = self._locus_of(kwargs)
        if name is None or self._router is None:
            return
        router = self._router
        try:
            latency_ms = (end_time - start_time).total_seconds() * 1000
            first = kwargs.get("completion_start_time")
            ttft_ms = (first - start_time).total_seconds() * 1000 if first else None
            usage = usage_of(response_obj)
            cost = cost_usd(router.config.locus(name), usage)  # at the prices the policy saw
            router.stats.record_success(
                name,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                tokens_out=usage.get("completion_tokens", 0),
                cost_usd=cost,
            )
            await asyncio.to_thread(self._charge, kwargs, cost)
        except Exception as exc:  # a measurement must never fail a served request
            log.warning("locus: could not record success of %s: %s", name, exc)

    async def async_log_failure_event(
        self, kwargs: dict, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        name = self._locus_of(kwargs)
        if name is None or self._router is None:
            return
        try:
            self._router.stats.record_failure(name)
            await asyncio.to_thread(self._charge, kwargs, None)
        except Exception as exc:
            log.warning("locus: could not record failure of %s: %s", name, exc)

    def _charge(self, kwargs: dict, cost: float | None) -> None:
        """Settle the tenant's account: the real cost of an answer, or release on a failure.
        A fallback that answers after the first locus failed is charged without a reservation."""
        decision = _decision_of(kwargs)
        if decision is None:
            return
        guard = self._budgets.pop(decision["id"], None)
        if guard is not None:
            guard.end(cost)
        elif cost and self._router is not None:
            self._router.state.settle(decision["tenant"], cost, None)

    def _locus_of(self, kwargs: dict) -> str | None:
        """The locus a logged attempt went to: its model group, when the hook routed it."""
        if self._router is None or _decision_of(kwargs) is None:
            return None
        standard = kwargs.get("standard_logging_object") or {}
        metadata = (kwargs.get("litellm_params") or {}).get("metadata") or {}
        group = standard.get("model_group") or metadata.get("model_group") or kwargs.get("model")
        return group if group in locus_names(self._router) else None


def _decision_of(kwargs: dict) -> dict[str, Any] | None:
    """The hook's note on a logged call (the proxy moves request metadata into litellm_params)."""
    for metadata in ((kwargs.get("litellm_params") or {}).get("metadata"), kwargs.get("metadata")):
        if isinstance(metadata, dict) and isinstance(metadata.get("locus_decision"), dict):
            return metadata["locus_decision"]
    return None


# Loaded by a proxy (its server module is imported first): load the models now, not on the first
# request. Imported anywhere else, nothing is built until used.
locus_hook = LocusProxyHook(warm="litellm.proxy.proxy_server" in sys.modules)

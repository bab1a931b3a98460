"""`locus serve --config router.yaml`: the router as an OpenAI-compatible gateway.

Applications that cannot embed the router (another language, a central platform team) send their
calls here; each call is analysed, decided by the policy and dispatched with failover, exactly as
`Router.acompletion` does in process.

    POST /v1/chat/completions   routed and run (SSE streaming too); `model` is "auto" (route) or a
                                locus name (pin it: still only if the policy allows it)
    POST /v1/route              the decision only, nothing is sent: what `locus route --json` prints
    GET  /v1/models             "auto" and the configured loci
    GET  /health                state backend, loci health, policy revision (open, for probes)

The routing context (tenant, user, app, interactive, latency_budget_ms, max_cost_usd, data_label)
comes from `X-Locus-<Field>` headers (what a mesh or an API gateway sets) and from a `locus`
object in the body (`extra_body={"locus": {...}}` with the openai SDK), the body winning; the
OpenAI `user` field is the context's user unless given there.

Errors use OpenAI's format: 400 for a malformed request, 403 (`policy_denied`) when the policy
allows no locus — the message lists every locus's reasons —, 429 when the gateway is full, 502
when every allowed locus failed, 500 when the policy cannot be evaluated (nothing is sent).

Replicas: run as many as needed behind any load balancer. With `state: redis://...` in their
shared config they agree on circuit breakers, measured profiles and tenant spend (locus_llm.state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from locus_llm.errors import (
    ConfigError,
    DispatchError,
    InvalidRequestError,
    LocusError,
    NoAllowedLocusError,
    PolicyError,
)
from locus_llm.profile import RoutingContext
from locus_llm.router import ROUTE_FIELDS, Router
from locus_llm.server import (
    RequestError,
    _check_api_key,
    _http_error,
    _kind,
    _optional,
    _QuietServer,
    _read_body,
    _unexpected_error,
    busy,
    error_response,
)

logger = logging.getLogger("locus_llm.gateway")

AUTO_MODELS = ("auto", "locus")  # `model` values that ask the router to choose
# OpenAI chat parameters handed to the chosen locus. Anything else is refused: LiteLLM accepts
# many more keyword arguments (credentials, endpoints, headers) that no caller may set here.
PASSED = frozenset(
    {
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "user",
        "stream_options",
        "reasoning_effort",
    }
)
CONTEXT_FIELDS = tuple(RoutingContext.__dataclass_fields__)
CONTEXT_HEADERS = {f"x-locus-{name.replace('_', '-')}": name for name in CONTEXT_FIELDS}
NUMBER_FIELDS = frozenset({"latency_budget_ms", "max_cost_usd"})


# --- reading requests ---------------------------------------------------------------------------


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(400, f"The request body is not valid JSON: {error}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, f"The request body must be a JSON object, not {_kind(payload)}.")
    return payload


def routing_context(headers: Mapping[str, str], given: Any, user: Any = None) -> RoutingContext:
    """The caller's routing context: X-Locus-* headers, then the body's object over them."""
    context: dict[str, Any] = {}
    for header, name in CONTEXT_HEADERS.items():
        value = headers.get(header)
        if value is None:
            continue
        if name == "interactive":
            context[name] = value.strip().lower() in ("1", "true", "yes")
        elif name in NUMBER_FIELDS:
            try:
                context[name] = float(value)
            except ValueError:
                raise RequestError(
                    400, f"Header '{header}' must be a number, got {value!r}.", param=header
                ) from None
        else:
            context[name] = value
    if given is not None and not isinstance(given, dict):
        raise RequestError(
            400,
            f"'locus' must be an object of routing context fields, not {_kind(given)}.",
            param="locus",
        )
    context.update(given or {})
    if isinstance(user, str) and "user" not in context:
        context["user"] = user
    try:
        return RoutingContext.from_any(context)
    except (TypeError, ValueError) as error:
        raise RequestError(400, f"Routing context: {error}.", param="locus") from None


def pinned_locus(model: Any, router: Router) -> str | None:
    """None for "auto"; a configured locus name pins the call to that locus."""
    if not isinstance(model, str) or not model:
        raise RequestError(
            400,
            "'model' is required and must be a string: \"auto\" lets the "
            "router choose, a locus name pins the call.",
            param="model",
        )
    if model in AUTO_MODELS:
        return None
    names = [locus.name for locus in router.config.loci]
    if model not in names:
        choices = ", ".join([*AUTO_MODELS, *sorted(names)])
        raise RequestError(
            404,
            f"The model '{model}' does not exist on this gateway; it serves: {choices}.",
            param="model",
            code="model_not_found",
        )
    return model


def chat_parameters(payload: dict[str, Any]) -> dict[str, Any]:
    """The parameters passed on to the chosen locus, checked."""
    params = {}
    for name, value in payload.items():
        if name in ("model", "messages", "stream", "locus"):
            continue
        if name not in PASSED:
            raise RequestError(400, f"Unrecognized request argument supplied: '{name}'.", name)
        params[name] = value
    for name in ("max_tokens", "max_completion_tokens"):
        limit = _optional(payload, name, int, None)
        if limit is not None and limit < 1:
            raise RequestError(400, f"'{name}' must be at least 1, got {limit}.", param=name)
    return params


# --- answering -----------------------------------------------------------------------------------


def routing_error(error: BaseException) -> RequestError:
    """How a routing failure reaches the caller, in OpenAI's error format."""
    if isinstance(error, RequestError):
        return error
    if isinstance(error, NoAllowedLocusError):
        if error.denied:
            return RequestError(403, str(error), type="permission_error", code="policy_denied")
        return RequestError(400, str(error), "messages", code="context_length_exceeded")
    if isinstance(error, InvalidRequestError):
        return RequestError(400, str(error))
    if isinstance(error, PolicyError):
        return RequestError(
            500, f"{error}; nothing was sent", type="server_error", code="policy_error"
        )
    if isinstance(error, DispatchError):
        return RequestError(502, str(error), type="api_error", code="upstream_failed")
    status = getattr(error, "status_code", None)  # a locus's own refusal, e.g. a content filter
    if isinstance(status, int) and 400 <= status < 500:
        code = "content_filter" if type(error).__name__ == "ContentPolicyViolationError" else None
        return RequestError(status, str(error).splitlines()[0][:1000], code=code)
    if isinstance(error, LocusError | ValueError):
        return RequestError(400, str(error))
    logger.error("routed call failed", exc_info=error)
    return RequestError(500, f"Internal server error: {type(error).__name__}", type="server_error")


def decision_json(decision: Any) -> dict[str, Any]:
    data = decision.to_dict()
    extra = ("zones", "budget")  # zones: what `render_decision` needs for its table
    return {"id": data["id"], **{k: data[k] for k in (*ROUTE_FIELDS, *extra)}}


def call_summary(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the caller learns about where its call ran (the decision log has the rest)."""
    if info is None:
        return None
    keys = (
        "decision_id",
        "locus",
        "zone",
        "planned",
        "policy_revision",
        "cost_usd",
        "attempts",
        "data_class",
        "task",
    )
    return {k: info.get(k) for k in keys}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


class Admission:
    """A bound on calls in flight: past it, 429 with Retry-After (clients back off and retry).

    A streamed call counts until its first chunk, by when routing and failover are behind it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0

    @contextlib.contextmanager
    def admit(self) -> Any:
        if self.inflight >= self.limit:
            raise busy(f"{self.inflight} calls in flight")
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1


# --- endpoints -----------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    app = request.app.state
    router: Router = app.router
    try:
        _check_api_key(request, app.api_key)
        payload = parse_json_object(await _read_body(request, app.max_body_bytes))
        locus = pinned_locus(payload.get("model"), router)
        stream = _optional(payload, "stream", bool, False)
        context = routing_context(request.headers, payload.get("locus"), payload.get("user"))
        params = chat_parameters(payload)
        if "messages" not in payload:
            raise RequestError(400, "'messages' is required.", param="messages")
    except RequestError as error:
        return error_response(error)
    admission: Admission = app.admission
    try:
        with admission.admit():
            if stream:
                return await _stream(router, payload["messages"], context, locus, params)
            response = await router.acompletion(
                payload["messages"], context=context, locus=locus, **params
            )
    except Exception as error:
        return error_response(routing_error(error))
    body = response.model_dump(exclude_none=True)
    body["locus"] = call_summary(getattr(response, "locus", None))
    headers = {
        "X-Locus-Locus": str(body["locus"]["locus"]) if body["locus"] else "",
        "X-Locus-Decision-Id": str(body["locus"]["decision_id"]) if body["locus"] else "",
    }
    return JSONResponse(body, headers=headers)


async def _stream(
    router: Router,
    messages: Any,
    context: RoutingContext,
    locus: str | None,
    params: dict[str, Any],
) -> Response:
    stream = await router.acompletion(messages, context=context, locus=locus, stream=True, **params)
    # Wait for the first chunk before answering: a call that fails on every locus before any
    # output still gets a proper HTTP status instead of a broken stream.
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:
        first = None

    async def events() -> AsyncIterator[str]:
        last: dict[str, Any] = {}
        try:
            if first is not None:
                last = first.model_dump(exclude_none=True)
                yield _sse(last)
            async for chunk in stream:
                last = chunk.model_dump(exclude_none=True)
                yield _sse(last)
        except Exception as error:  # after output: say so in the stream, then end it
            failure = routing_error(error)
            yield _sse(
                {"error": {"message": failure.message, "type": failure.type, "code": failure.code}}
            )
        else:
            if stream.locus is not None:  # a choice-less chunk, like the usage one
                ids = {k: last[k] for k in ("id", "created", "model") if k in last}
                yield _sse(
                    {
                        **ids,
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "locus": call_summary(stream.locus),
                    }
                )
        finally:
            await stream.aclose()  # the client left early: the call is still accounted for
        yield "data: [DONE]\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def route(request: Request) -> Response:
    """The decision for a request, nothing sent: POST {"messages" or "prompt", "context", ...}."""
    app = request.app.state
    router: Router = app.router
    try:
        _check_api_key(request, app.api_key)
        payload = parse_json_object(await _read_body(request, app.max_body_bytes))
        unknown = sorted(
            set(payload) - {"messages", "prompt", "context", "max_tokens", "tools", "locus"}
        )
        if unknown:
            raise RequestError(
                400, f"Unrecognized request argument supplied: '{unknown[0]}'.", unknown[0]
            )
        messages = payload.get("messages")
        if messages is None and isinstance(payload.get("prompt"), str):
            messages = [{"role": "user", "content": payload["prompt"]}]
        if messages is None:
            raise RequestError(400, "'messages' (or 'prompt') is required.", param="messages")
        context = routing_context(request.headers, payload.get("context"))
        max_tokens = _optional(payload, "max_tokens", int, None)
        locus = payload.get("locus")
        if locus is not None:
            locus = pinned_locus(locus, router)
        with app.admission.admit():
            decision = await asyncio.to_thread(
                router.route,
                messages,
                context,
                max_tokens=max_tokens,
                tools=payload.get("tools"),
                locus=locus,
            )
    except Exception as error:
        return error_response(routing_error(error))
    return JSONResponse(decision_json(decision))


async def list_models(request: Request) -> Response:
    app = request.app.state
    try:
        _check_api_key(request, app.api_key)
    except RequestError as error:
        return error_response(error)
    router: Router = app.router
    data = [
        {"id": name, "object": "model", "created": app.started_at, "owned_by": "locus"}
        for name in AUTO_MODELS[:1]
    ]
    data += [
        {
            "id": locus.name,
            "object": "model",
            "created": app.started_at,
            "owned_by": "locus",
            "zone": locus.zone,
            "max_model_len": locus.context_window,
        }
        for locus in router.config.loci
    ]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    router: Router = request.app.state.router
    state = router.state.status()
    loci = {
        locus.name: {"zone": locus.zone, "healthy": router.stats.healthy(locus.name)}
        for locus in router.config.loci
    }
    return JSONResponse(
        {
            "status": "ok" if state["reachable"] else "degraded",  # degraded still serves
            "mode": "router",
            "state": state,
            "policy_revision": router.policy.revision,
            "loci": loci,
            "inflight": request.app.state.admission.inflight,
        }
    )


# --- application and running it ------------------------------------------------------------------


def create_gateway(
    router: Router,
    *,
    max_inflight: int = 64,
    max_body_bytes: int = 4_000_000,
    api_key: str | None = None,
    warm: bool = True,
) -> Starlette:
    """The ASGI app routing OpenAI chat calls through `router`.

    At most `max_inflight` calls are handled at once (the rest get 429). With `api_key` set,
    `/v1/*` requires `Authorization: Bearer <api_key>`; `/health` stays open for probes.
    With `warm`, the analysis models and LiteLLM load before the app answers anything.
    """
    if max_inflight < 1 or max_body_bytes < 1:
        raise ConfigError(
            f"create_gateway: max_inflight and max_body_bytes must be ≥ 1; got "
            f"{max_inflight}, {max_body_bytes}"
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm:
            await asyncio.to_thread(router.warm)
        try:
            yield
        finally:
            router.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/route", route, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.state.router = router
    app.state.admission = Admission(max_inflight)
    app.state.max_body_bytes = max_body_bytes
    app.state.api_key = api_key
    app.state.started_at = int(time.time())
    return app


def serve_gateway(
    router: Router,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    max_inflight: int = 64,
    api_key: str | None = None,
    graceful_timeout: float = 10.0,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight calls get `graceful_timeout` seconds to finish."""
    app = create_gateway(router, max_inflight=max_inflight, api_key=api_key)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=graceful_timeout,
    )
    _QuietServer(config).run()


# --- the client side: `locus route --server URL` ------------------------------------------------


def route_remotely(
    server: str,
    messages: Any,
    context: dict[str, Any] | None = None,
    *,
    max_tokens: int | None = None,
    api_key: str | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Ask a gateway for a decision (POST /v1/route); the same dict `locus route --json` prints."""
    import httpx

    body: dict[str, Any] = {
        "messages": messages,
        "context": {k: v for k, v in (context or {}).items() if v is not None},
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = server.rstrip("/") + "/v1/route"
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as error:
        raise LocusError(f"{url}: {type(error).__name__}: {error}") from None
    try:
        data = response.json()
    except ValueError:
        raise LocusError(f"{url}: HTTP {response.status_code}, not JSON") from None
    if response.status_code != 200:
        message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
        raise LocusError(f"{url}: HTTP {response.status_code}: {message or data}")
    return data

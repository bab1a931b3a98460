"""The locus MCP server: routed inference and routing decisions as MCP tools and resources.

    server = create_server(config_path)     # nothing heavy loads here
    server.run("stdio")

Tools: chat, route, analyze, list_loci, policy_check. Resources: the active policy bundle and its
revision, the most recent decisions. The Router is built on the first call that needs it, and the
router's blocking work (analysis, LiteLLM, the local model) runs in worker threads, so the server
answers `initialize` and `ping` at once and keeps answering while a generation runs.
"""

from __future__ import annotations

import json
import threading
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import EmptyResult, SetLevelRequestParams, ToolAnnotations
from pydantic import Field

from locus_mcp import __version__
from locus_mcp.schemas import (
    ChatResult,
    DataClassName,
    LociResult,
    LocusStatus,
    Message,
    PolicyCheckResult,
    Profile,
    RouteResult,
    RoutingContextInput,
)

if TYPE_CHECKING:
    from locus_llm.config import LocusConfig
    from locus_llm.router import Router

T = TypeVar("T")

LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
RECENT_DECISIONS = 50

INSTRUCTIONS = """\
locus routes each LLM call to the device, an on-prem server or a cloud provider under a data
policy. Use `chat` to get an answer routed under that policy (the result says where it ran and
why), `route` to see the decision without running anything, `analyze` for what the router sees in
a request (task, difficulty, data class, sensitive entity types - never values), `list_loci` for
the places a call can run, and `policy_check` to ask what the policy would allow for a
hypothetical request (e.g. "could CONFIDENTIAL data go to the cloud?")."""


def create_server(
    config: str | Path | LocusConfig | None = None, *, name: str = "locus"
) -> MCPServer:
    """The MCP server over one Router, built lazily from `config` (a file, a LocusConfig, or the
    default / LOCUS_CONFIG when None)."""
    service = LocusService(config)
    server = MCPServer(name, version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    _add_tools(server, service)
    _add_resources(server, service)
    _add_logging(server)
    return server


# --- tools --------------------------------------------------------------------------------------


def _add_tools(server: MCPServer, service: LocusService) -> None:
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(
        title="Chat through locus",
        description="Answer a chat request (messages, or a prompt with an optional system "
        "prompt) on the locus the policy allows and the router picks; returns the answer and "
        "the routing decision. Reports progress per streamed chunk; can be cancelled.",
        annotations=ToolAnnotations(read_only_hint=False, open_world_hint=True),
    )
    async def chat(
        ctx: Context,
        messages: Annotated[
            list[Message] | None,
            Field(max_length=500, description="The conversation; give this or `prompt`."),
        ] = None,
        prompt: Annotated[
            str | None,
            Field(
                max_length=400_000, description="A single user message; give this or `messages`."
            ),
        ] = None,
        system: Annotated[
            str | None, Field(max_length=400_000, description="A system prompt put first.")
        ] = None,
        context: RoutingContextInput | None = None,
        locus: Annotated[
            str | None,
            Field(max_length=200, description="Pin a locus; the policy must still allow it."),
        ] = None,
        max_tokens: Annotated[int | None, Field(ge=1, le=32_768)] = None,
        temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None,
    ) -> ChatResult:
        conversation = _conversation(messages, prompt, system)
        router = await service.router()
        params = {"max_tokens": max_tokens, "temperature": temperature}
        stream = await _call(
            lambda: router.completion(
                conversation, context=_context(context), locus=locus, stream=True, **params
            )
        )
        answer, finish_reason = await _drain(stream, ctx, max_tokens)
        info = stream.locus or {}
        await _log(
            ctx,
            "info",
            {
                "event": "routed",
                "locus": info.get("locus"),
                "zone": info.get("zone"),
                "policy_revision": info.get("policy_revision"),
            },
        )
        return ChatResult.model_validate({**info, "answer": answer, "finish_reason": finish_reason})

    @server.tool(
        title="Routing decision",
        description="Where the request would run and why (allowed and denied loci with reasons, "
        "scores, the plan) without sending it anywhere.",
        annotations=read_only,
    )
    async def route(
        messages: Annotated[list[Message] | None, Field(max_length=500)] = None,
        prompt: Annotated[str | None, Field(max_length=400_000)] = None,
        system: Annotated[str | None, Field(max_length=400_000)] = None,
        context: RoutingContextInput | None = None,
        max_tokens: Annotated[int | None, Field(ge=1, le=32_768)] = None,
    ) -> RouteResult:
        conversation = _conversation(messages, prompt, system)
        router = await service.router()
        decision = await _call(
            lambda: router.route(conversation, _context(context), max_tokens=max_tokens)
        )
        data = decision.to_dict()
        data["decision_id"] = data.pop("id")
        data["profile"] = _profile(decision.profile)
        return RouteResult.model_validate(data)

    @server.tool(
        title="Request analysis",
        description="What the router sees in a request: task, difficulty, data class and the "
        "types of sensitive entities found (never their values).",
        annotations=read_only,
    )
    async def analyze(
        messages: Annotated[list[Message] | None, Field(max_length=500)] = None,
        prompt: Annotated[str | None, Field(max_length=400_000)] = None,
        system: Annotated[str | None, Field(max_length=400_000)] = None,
        context: RoutingContextInput | None = None,
    ) -> Profile:
        conversation = _conversation(messages, prompt, system)
        router = await service.router()
        profile = await _call(lambda: router.analyze(conversation, _context(context)))
        return Profile.model_validate(_profile(profile))

    @server.tool(
        title="Loci",
        description="Every configured locus: zone, health, measured latency and throughput, "
        "price, calls and errors so far.",
        annotations=read_only,
    )
    async def list_loci() -> LociResult:
        router = await service.router()
        status = await _call(router.loci_status)
        loci = [
            LocusStatus.model_validate({**entry, **_stats_fields(entry["stats"])})
            for entry in status
        ]
        return LociResult(loci=loci, policy_revision=router.policy.revision)

    @server.tool(
        title="Policy check",
        description="The policy's decision for a hypothetical request profile, e.g. 'could a "
        "CONFIDENTIAL summarisation go to the cloud?'. No messages needed, nothing is sent.",
        annotations=read_only,
    )
    async def policy_check(
        data_class: DataClassName,
        task: Annotated[str, Field(max_length=100)] = "unknown",
        difficulty: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5,
        tokens_in: Annotated[int, Field(ge=0, le=10_000_000)] = 100,
        tokens_out_est: Annotated[int, Field(ge=0, le=10_000_000)] = 256,
        entity_types: Annotated[
            list[str] | None,
            Field(max_length=100, description="Sensitive entity types present, e.g. AU_TFN."),
        ] = None,
        context: RoutingContextInput | None = None,
    ) -> PolicyCheckResult:
        router = await service.router()
        request = {
            "data_class": data_class,
            "task": task,
            "difficulty": difficulty,
            "tokens_in": tokens_in,
            "tokens_out_est": tokens_out_est,
            "entities": [{"type": t, "score": 1.0} for t in entity_types or []],
        }
        verdict = await _call(lambda: router.policy_check(request, _context(context)))
        zones = {entry["name"]: entry["zone"] for entry in router.loci_status()}
        allowed_zones = sorted({zones[name] for name in verdict.allowed if name in zones})
        return PolicyCheckResult(
            allowed=verdict.allowed,
            denied=verdict.denied,
            allowed_zones=allowed_zones,
            cloud_allowed="cloud" in allowed_zones,
            obligations={"redact": verdict.redact, "redact_zones": verdict.redact_zones},
            capability_floor=verdict.capability_floor,
            policy_revision=verdict.revision,
        )


def _conversation(
    messages: list[Message] | None, prompt: str | None, system: str | None
) -> list[dict[str, str]]:
    if (messages is None) == (prompt is None):
        raise ToolError("give exactly one of `messages` (a list of {role, content}) or `prompt`")
    conversation = (
        [m.model_dump() for m in messages]
        if messages is not None
        else [{"role": "user", "content": prompt or ""}]
    )
    if not conversation:
        raise ToolError("`messages` is empty: give at least one message")
    if system is not None:
        conversation.insert(0, {"role": "system", "content": system})
    return conversation


def _context(context: RoutingContextInput | None) -> dict[str, Any] | None:
    return context.to_router() if context is not None else None


def _profile(profile: Any) -> dict[str, Any]:
    """The profile without entity offsets: types, scores and message indexes only."""
    data = profile.to_dict()
    data["entities"] = [
        {"type": e["type"], "score": e["score"], "message": e["message"]} for e in data["entities"]
    ]
    data["entity_types"] = profile.entity_counts()
    return data


def _stats_fields(stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "calls": stats["calls"],
        "errors": stats["errors"],
        "latency_ms": stats["latency_ms"],
        "cost_usd": stats["cost_usd"],
    }


async def _call(work: Callable[[], T]) -> T:
    """Run blocking router work in a worker thread; turn its errors into clear tool errors."""
    try:
        return await anyio.to_thread.run_sync(work)
    except ToolError:
        raise
    except Exception as exc:
        raise ToolError(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    from locus_llm.errors import LocusError

    if isinstance(exc, LocusError | ValueError | TypeError):
        return f"{type(exc).__name__}: {exc}"
    return f"internal error ({type(exc).__name__}): {exc}"


async def _drain(stream: Any, ctx: Context, max_tokens: int | None) -> tuple[str, str | None]:
    """Read the routed stream chunk by chunk in a worker thread, reporting progress per chunk.

    A cancelled call closes the stream: the locus stops generating and the decision log records
    the call as closed by the caller.
    """
    parts: list[str] = []
    finish_reason = None
    chunks = 0
    done = False
    try:
        while True:
            chunk = await _call(lambda: next(stream, None))
            if chunk is None:
                done = True
                break
            choices = getattr(chunk, "choices", None) or []
            if not choices:
                continue
            text = getattr(choices[0].delta, "content", None)
            finish_reason = choices[0].finish_reason or finish_reason
            if text:
                parts.append(text)
                chunks += 1
                await ctx.report_progress(chunks, max_tokens, f"{chunks} chunks generated")
    finally:
        if not done:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stream.close)
    return "".join(parts), finish_reason


# --- resources ----------------------------------------------------------------------------------


def _add_resources(server: MCPServer, service: LocusService) -> None:
    @server.resource(
        "locus://policy/bundle",
        name="policy-bundle",
        title="Active policy bundle",
        description="The Rego files and data.json of the active policy, with its revision.",
        mime_type="application/json",
    )
    async def policy_bundle() -> str:
        router = await service.router()
        files = await anyio.to_thread.run_sync(router.policy.bundle_text)
        return json.dumps({"revision": router.policy.revision, "files": files}, indent=2)

    @server.resource(
        "locus://policy/revision",
        name="policy-revision",
        title="Active policy revision",
        description="The hash of the active policy bundle.",
        mime_type="text/plain",
    )
    async def policy_revision() -> str:
        router = await service.router()
        return router.policy.revision

    @server.resource(
        "locus://decisions/recent",
        name="recent-decisions",
        title="Recent routing decisions",
        description=f"The last {RECENT_DECISIONS} decision records (no prompts, no "
        "entity values), oldest first.",
        mime_type="application/json",
    )
    async def recent_decisions() -> str:
        router = await service.router()
        return json.dumps(router.log.tail(RECENT_DECISIONS), indent=2, default=str)


# --- logging ------------------------------------------------------------------------------------

# Per client connection: the level set with logging/setLevel (handshake-era protocol versions).
_levels_by_connection: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _add_logging(server: MCPServer) -> None:
    """Serve `logging/setLevel`. MCPServer has no public hook for it, so it goes on the
    low-level server it wraps (the SDK's documented extension point for request handlers)."""

    async def set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        _levels_by_connection[_connection(ctx.session)] = params.level
        return EmptyResult()

    server._lowlevel_server.add_request_handler(
        "logging/setLevel", SetLevelRequestParams, set_level
    )


def _connection(session: Any) -> Any:
    """The client connection behind a request's session (sessions are per request in SDK 2.x;
    the connection has no public accessor yet)."""
    return getattr(session, "_connection", session)


async def _log(ctx: Context, level: str, data: Any) -> None:
    """A log notification to the client, if its level lets this one through."""
    try:
        threshold = _levels_by_connection.get(_connection(ctx.request_context.session), "info")
        if LOG_LEVELS.index(level) < LOG_LEVELS.index(threshold):
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # logging is 2025-era MCP
            await ctx.log(level, data, logger_name="locus")  # type: ignore[arg-type]
    except Exception:  # a log line is never worth failing the call that produced it
        return


# --- the router, built on first use -------------------------------------------------------------


class LocusService:
    """Holds the Router; builds it on first use, in a worker thread, once."""

    def __init__(self, config: str | Path | LocusConfig | None) -> None:
        self._config = config
        self._router: Router | None = None
        self._lock = threading.Lock()

    async def router(self) -> Router:
        if self._router is not None:
            return self._router
        return await _call(self._build)

    def _build(self) -> Router:
        with self._lock:
            if self._router is None:
                from locus_llm.config import LocusConfig, load_config
                from locus_llm.router import Router

                config = self._config
                if not isinstance(config, LocusConfig):
                    config = load_config(config)
                self._router = Router(config)
            return self._router

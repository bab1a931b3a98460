"""ChatLocus: a LangChain chat model whose every call is routed by locus.

A thin adapter: LangChain messages, tools and streams are translated to the router's OpenAI
format and back; where a call runs (device, on-prem or cloud) is decided by `Router`, never here.

    from langchain_locus import ChatLocus

    llm = ChatLocus(config="locus.yaml", tenant="acme")        # or router=..., or a LocusConfig
    reply = llm.invoke("Summarise our refund policy.")
    reply.response_metadata["locus"]["locus"]                   # where it ran, and why
    llm.invoke(messages, config={"metadata": {"data_label": "CONFIDENTIAL"}})  # per-call context
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import (
    InvalidToolCall,
    ToolCall,
    ToolCallChunk,
    invalid_tool_call,
    tool_call,
    tool_call_chunk,
)
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.base import OutputParserLike
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils import from_env
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, SecretStr, model_validator

from locus_llm.config import LocusConfig
from locus_llm.router import ROUTING_FIELDS, Router, router_for

# Fields of the routing context (locus_llm.profile.RoutingContext) a caller may set per call.


def routing_context(
    defaults: dict[str, Any], metadata: dict[str, Any] | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Model defaults < run metadata (`config={"metadata": ...}`) < `context=` < keywords.

    Only the routing fields are read from metadata: LangChain and LangGraph put other keys there.
    Keyword arguments are consumed from `kwargs`.
    """
    context = {k: v for k, v in defaults.items() if v is not None}
    context.update({k: v for k, v in (metadata or {}).items() if k in ROUTING_FIELDS})
    context.update(kwargs.pop("context", None) or {})
    context.update({k: kwargs.pop(k) for k in ROUTING_FIELDS if k in kwargs})
    return context


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    return convert_to_openai_messages(list(messages), text_format="string")


def format_tool_choice(choice: Any) -> Any:
    """LangChain's tool_choice vocabulary ("any", a tool name, True) in OpenAI's."""
    if choice in ("any", "required", True):
        return "required"
    if choice in ("auto", "none"):
        return choice
    if choice is False or choice is None:
        return None
    if isinstance(choice, str):
        return {"type": "function", "function": {"name": choice}}
    if isinstance(choice, dict):
        return choice
    raise ValueError(
        f"tool_choice {choice!r}: expected 'auto', 'any', 'none', a tool name or a "
        "dict in OpenAI format"
    )


def usage_metadata(usage: Any) -> UsageMetadata | None:
    if not usage:
        return None
    get = usage.get if isinstance(usage, dict) else lambda k, d=None: getattr(usage, k, d)
    prompt = int(get("prompt_tokens", 0) or 0)
    completion = int(get("completion_tokens", 0) or 0)
    return UsageMetadata(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=int(get("total_tokens", 0) or prompt + completion),
    )


def parse_tool_calls(raw_calls: Any) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls or []:
        function = raw.function
        try:
            args = json.loads(function.arguments or "{}")
            if not isinstance(args, dict):
                raise ValueError("arguments are not a JSON object")
        except ValueError as exc:
            invalid.append(
                invalid_tool_call(
                    name=function.name,
                    args=function.arguments,
                    id=raw.id,
                    error=f"{type(exc).__name__}: {exc}",
                )
            )
            continue
        calls.append(tool_call(name=function.name, args=args, id=raw.id))
    return calls, invalid


def decision_metadata(info: dict[str, Any] | None) -> dict[str, Any]:
    """response_metadata entries for a routed call: the chosen model and the decision."""
    if not info:
        return {}
    return {"model_name": info.get("model") or "", "locus": info}


def to_chat_result(response: Any) -> ChatResult:
    """A LiteLLM ModelResponse (with `.locus`) as a LangChain ChatResult."""
    choice = response.choices[0]
    message = choice.message
    calls, invalid = parse_tool_calls(getattr(message, "tool_calls", None))
    ai_message = AIMessage(
        content=message.content or "",
        tool_calls=calls,
        invalid_tool_calls=invalid,
        usage_metadata=usage_metadata(getattr(response, "usage", None)),
        response_metadata={
            "finish_reason": choice.finish_reason,
            **decision_metadata(getattr(response, "locus", None)),
        },
        id=response.id,
    )
    return ChatResult(
        generations=[
            ChatGeneration(
                message=ai_message, generation_info={"finish_reason": choice.finish_reason}
            )
        ]
    )


def to_message_chunk(chunk: Any) -> tuple[AIMessageChunk | None, str | None]:
    """One LiteLLM stream chunk as an AIMessageChunk (None if it carries no content) and its
    finish reason."""
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return None, None
    choice = choices[0]
    delta = choice.delta
    content = getattr(delta, "content", None) or ""
    chunks: list[ToolCallChunk] = []
    for raw in getattr(delta, "tool_calls", None) or []:
        function = raw.function
        chunks.append(
            tool_call_chunk(
                name=getattr(function, "name", None),
                args=getattr(function, "arguments", None),
                id=raw.id,
                index=raw.index,
            )
        )
    if not content and not chunks:
        return None, choice.finish_reason
    return AIMessageChunk(content=content, tool_call_chunks=chunks), choice.finish_reason


def last_chunk(
    usage: Any, finish_reason: str | None, info: dict[str, Any] | None
) -> ChatGenerationChunk:
    """The closing chunk: usage, finish reason and the decision, known only once a stream ends."""
    message = AIMessageChunk(
        content="",
        usage_metadata=usage_metadata(usage),
        chunk_position="last",
        response_metadata={"finish_reason": finish_reason, **decision_metadata(info)},
    )
    return ChatGenerationChunk(message=message, generation_info={"finish_reason": finish_reason})


class ChatLocus(BaseChatModel):
    """A LangChain chat model routed per call by locus (device, on-prem or cloud).

    Construct it from a config file path, a `LocusConfig` (or its dict form) or a `Router`; with
    none, `LOCUS_CONFIG` or the embedded on-device default is used. Each call is analysed, checked
    against the policy and sent to the best allowed locus; `response_metadata["locus"]` says where
    it ran and why.

    Routing context (tenant, user, app, interactive, latency_budget_ms, max_cost_usd, data_label)
    comes from the fields below, from `config={"metadata": {...}}` on a call, or from keyword
    arguments (`llm.invoke(x, data_label="CONFIDENTIAL")`), later ones winning. `model=` (or
    `locus=`) pins a call to one locus, by name or LiteLLM model string; the policy still applies.
    """

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)

    config: str | Path | LocusConfig | dict[str, Any] | None = Field(
        default_factory=from_env("LOCUS_CONFIG", default=None)
    )
    """Config file path, LocusConfig or dict; default: `LOCUS_CONFIG`, else on-device only."""
    router: Router | None = Field(default=None, exclude=True)
    """A ready Router; takes precedence over `config`."""
    model: str | None = None
    """Pin every call to this locus (name or model string); None lets the router choose."""

    tenant: str | None = None
    user: str | None = None
    app: str | None = None
    interactive: bool | None = None
    latency_budget_ms: float | None = None
    max_cost_usd: float | None = None
    data_label: str | None = None
    """PUBLIC, INTERNAL, CONFIDENTIAL or RESTRICTED: can raise the detected class, never lower."""

    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further LiteLLM parameters sent with every call."""
    streaming: bool = False
    stream_usage: bool = True

    timeout: float | None = None
    """Accepted for drop-in compatibility; each locus's `timeout_s` in the config governs."""
    max_retries: int | None = None
    """Accepted for drop-in compatibility; each locus's `max_retries` in the config governs."""
    api_key: SecretStr | None = None
    """Accepted for drop-in compatibility and unused: keys are per locus (`api_key_env`)."""

    @model_validator(mode="after")
    def _build_router(self) -> ChatLocus:
        if self.router is None:
            self.router = router_for(self.config)
        return self

    @property
    def _llm_type(self) -> str:
        return "locus"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        config = self.config if isinstance(self.config, str | Path) else None
        return {
            "config": str(config) if config else None,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self._routing_defaults(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "locus"
        params["ls_model_name"] = (
            kwargs.get("model") or kwargs.get("locus") or self.model or "router"
        )
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stop := stop or self.stop:
            params["ls_stop"] = stop
        return params

    # --- the calls -----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, run_manager, kwargs)
        return to_chat_result(self._routed().completion(**request))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        request = self._request(messages, stop, run_manager, kwargs)
        return to_chat_result(await self._routed().acompletion(**request))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, run_manager, kwargs, stream=True)
        stream = self._routed().completion(**request)
        usage, finish_reason = None, None
        for chunk in stream:
            usage = getattr(chunk, "usage", None) or usage
            message, reason = to_message_chunk(chunk)
            finish_reason = reason or finish_reason
            if message is None:
                continue
            generation = ChatGenerationChunk(message=message)
            if run_manager:
                run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation
        yield last_chunk(usage, finish_reason, stream.locus)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, run_manager, kwargs, stream=True)
        stream = await self._routed().acompletion(**request)
        usage, finish_reason = None, None
        async for chunk in stream:
            usage = getattr(chunk, "usage", None) or usage
            message, reason = to_message_chunk(chunk)
            finish_reason = reason or finish_reason
            if message is None:
                continue
            generation = ChatGenerationChunk(message=message)
            if run_manager:
                await run_manager.on_llm_new_token(generation.text, chunk=generation)
            yield generation
        yield last_chunk(usage, finish_reason, stream.locus)

    # --- tools and structured output --------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: dict | str | bool | None = None,
        strict: bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Offer tools in OpenAI format. tool_choice: "auto", "any"/"required", "none", a tool
        name, or an OpenAI dict."""
        formatted = [convert_to_openai_tool(t, strict=strict) for t in tools]
        if (choice := format_tool_choice(tool_choice)) is not None:
            kwargs["tool_choice"] = choice
        if parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Answers shaped by `schema` (pydantic class, TypedDict or JSON schema), by forcing a
        tool call ("function_calling"), by `response_format` json_schema, or by JSON mode."""
        if kwargs:
            raise ValueError(f"unexpected arguments {sorted(kwargs)}")
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        trace = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        parser: OutputParserLike
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools(
                [schema], tool_choice=name, strict=strict, ls_structured_output_format=trace
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                json_schema = convert_to_json_schema(schema)
                response_format: dict[str, Any] = {
                    "type": "json_schema",
                    "json_schema": {
                        "name": json_schema.get("title", "output"),
                        "schema": json_schema,
                        **({"strict": strict} if strict is not None else {}),
                    },
                }
            else:
                response_format = {"type": "json_object"}
            llm = self.bind(response_format=response_format, ls_structured_output_format=trace)
            parser = (
                PydanticOutputParser(pydantic_object=schema)
                if pydantic  # type: ignore[arg-type]
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method {method!r}: expected 'function_calling', 'json_schema' or 'json_mode'"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        unparsed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [unparsed], exception_key="parsing_error"
        )

    # --- translation to the router ----------------------------------------------------------

    def _routed(self) -> Router:
        assert self.router is not None  # set by the validator
        return self.router

    def _routing_defaults(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ROUTING_FIELDS}

    def _request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
        *,
        stream: bool = False,
    ) -> dict[str, Any]:
        """The router call for these messages: context, locus pin and LiteLLM parameters."""
        kwargs = dict(kwargs)
        metadata = run_manager.metadata if run_manager is not None else None
        context = routing_context(self._routing_defaults(), metadata, kwargs)
        pin = kwargs.pop("locus", None) or kwargs.pop("model", None) or self.model
        kwargs.pop("model", None)
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            **self.model_kwargs,
            **kwargs,
        }
        if stop := stop or self.stop:
            params["stop"] = stop
        if stream:
            params["stream"] = True
            params["stream_options"] = {"include_usage": self.stream_usage}
        return {
            "messages": to_openai_messages(messages),
            "context": context,
            "locus": self._locus_name(pin),
            **{k: v for k, v in params.items() if v is not None},
        }

    def _locus_name(self, pin: str | None) -> str | None:
        """A pin may name a locus or its LiteLLM model string; unknown pins reach the router,
        which refuses them with the configured names."""
        if pin is None:
            return None
        for locus in self._routed().config.loci:
            if pin in (locus.name, locus.model):
                return locus.name
        return pin

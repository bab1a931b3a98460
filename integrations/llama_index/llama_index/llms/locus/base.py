"""Locus: a LlamaIndex LLM whose every call is routed by locus.

A thin adapter: LlamaIndex chat messages, tools and streams are translated to the router's OpenAI
format and back; where a call runs (device, on-prem or cloud) is decided by `Router`, never here.

    from llama_index.core import Settings
    from llama_index.llms.locus import Locus

    Settings.llm = Locus(config="locus.yaml", tenant="acme")
    response = Settings.llm.complete("Summarise our refund policy.")
    response.additional_kwargs["locus"]["locus"]          # where it ran, and why
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    ImageBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.constants import DEFAULT_NUM_OUTPUTS
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from locus_llm.config import LocusConfig
from locus_llm.errors import InvalidRequestError, LocusError
from locus_llm.router import ROUTING_FIELDS, Router, router_for

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

# Fields of the routing context (locus_llm.profile.RoutingContext) a caller may set per call.
ROLES = {MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}


def to_openai_message(message: ChatMessage) -> dict[str, Any]:
    """One LlamaIndex ChatMessage in OpenAI format (text, images, tool calls and results)."""
    role = ROLES.get(message.role, message.role.value)
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": image_url(block)}})
        elif isinstance(block, ToolCallBlock):
            calls.append(openai_tool_call(block.tool_call_id, block.tool_name, block.tool_kwargs))
        elif isinstance(block, ThinkingBlock):
            continue  # a model's own reasoning is not sent back
        else:
            raise InvalidRequestError(
                f"{type(block).__name__} in a {role} message: Locus sends "
                "text, images, tool calls and tool results"
            )
    if not calls:
        calls = [plain_tool_call(c) for c in message.additional_kwargs.get("tool_calls") or []]
    content: Any = parts
    if all(part["type"] == "text" for part in parts):
        content = "\n".join(part["text"] for part in parts)
    result: dict[str, Any] = {"role": role, "content": content}
    if calls:
        result["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if key in message.additional_kwargs and role in ("tool", "function"):
            result[key] = message.additional_kwargs[key]
    return result


def image_url(block: ImageBlock) -> str:
    if block.url is not None:
        return str(block.url)
    data = block.resolve_image(as_base64=True).read().decode()
    return f"data:{block.image_mimetype or 'image/png'};base64,{data}"


def openai_tool_call(call_id: str | None, name: str, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": call_id or f"call_{uuid.uuid4().hex[:12]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def plain_tool_call(call: Any) -> dict[str, Any]:
    """A tool call as a plain dict, whether it came back from LiteLLM as an object or not."""
    return call.model_dump() if hasattr(call, "model_dump") else dict(call)


def tool_arguments(name: str | None, raw: str | None, *, partial: bool) -> dict[str, Any]:
    """A tool call's arguments. Agents read streams as they arrive (`partial`): the JSON may be
    cut short there, and is completed as far as it goes (LlamaIndex's own partial parser)."""
    try:
        return json.loads(raw or "{}")
    except ValueError as exc:
        if not partial:
            raise ValueError(f"tool call {name!r} has arguments that are not JSON: {exc}") from exc
    try:
        return parse_partial_json(raw or "{}")
    except ValueError:
        return {}


def routing_context(defaults: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Model defaults < `context=` < keywords; routing keywords are consumed from `kwargs`."""
    context = {k: v for k, v in defaults.items() if v is not None}
    context.update(kwargs.pop("context", None) or {})
    context.update({k: kwargs.pop(k) for k in ROUTING_FIELDS if k in kwargs})
    return context


def usage_of(response: Any) -> dict[str, int]:
    usage = getattr(response, "usage", None)
    if not usage:
        return {}
    get = usage.get if isinstance(usage, dict) else lambda k, d=None: getattr(usage, k, d)
    return {k: int(get(k, 0) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def to_chat_response(response: Any) -> ChatResponse:
    """A LiteLLM ModelResponse (with `.locus`) as a LlamaIndex ChatResponse."""
    message = response.choices[0].message
    calls = [plain_tool_call(c) for c in getattr(message, "tool_calls", None) or []]
    return ChatResponse(
        message=ChatMessage(
            role=MessageRole.ASSISTANT,
            content=message.content or "",
            additional_kwargs={"tool_calls": calls} if calls else {},
        ),
        raw=response,
        additional_kwargs={**usage_of(response), "locus": getattr(response, "locus", None)},
    )


def merge_tool_call_deltas(calls: list[dict[str, Any]], deltas: Sequence[Any]) -> None:
    """Accumulate streamed tool-call pieces (by index) into whole OpenAI tool calls."""
    for delta in deltas:
        index = getattr(delta, "index", None) or 0
        while len(calls) <= index:
            calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        call = calls[index]
        call["id"] = getattr(delta, "id", None) or call["id"]
        function = getattr(delta, "function", None)
        if function is not None:
            call["function"]["name"] += getattr(function, "name", None) or ""
            call["function"]["arguments"] += getattr(function, "arguments", None) or ""


class StreamState:
    """What a stream has said so far, turned into the cumulative ChatResponses LlamaIndex wants."""

    def __init__(self) -> None:
        self.content = ""
        self.calls: list[dict[str, Any]] = []
        self.usage: dict[str, int] = {}

    def feed(self, chunk: Any) -> ChatResponse | None:
        self.usage = usage_of(chunk) or self.usage
        choices = getattr(chunk, "choices", None) or []
        if not choices:
            return None
        delta = choices[0].delta
        text = getattr(delta, "content", None) or ""
        if tool_deltas := getattr(delta, "tool_calls", None):
            merge_tool_call_deltas(self.calls, tool_deltas)
        if not text and not tool_deltas:
            return None
        self.content += text
        return self.response(text, chunk, None)

    def response(self, delta: str, raw: Any, info: dict[str, Any] | None) -> ChatResponse:
        extra = {"tool_calls": [dict(c) for c in self.calls]} if self.calls else {}
        kwargs: dict[str, Any] = {**self.usage, "locus": info} if info else {}
        return ChatResponse(
            message=ChatMessage(
                role=MessageRole.ASSISTANT, content=self.content, additional_kwargs=extra
            ),
            delta=delta,
            raw=raw,
            additional_kwargs=kwargs,
        )


def as_completion(response: ChatResponse) -> CompletionResponse:
    return CompletionResponse(
        text=response.message.content or "",
        delta=response.delta,
        raw=response.raw,
        additional_kwargs=response.additional_kwargs,
    )


class Locus(FunctionCallingLLM):
    """A LlamaIndex LLM routed per call by locus (device, on-prem or cloud).

    Construct it from a config file path, a `LocusConfig` (or its dict form) or a `Router`; with
    none, `LOCUS_CONFIG` or the embedded on-device default is used. Each call is analysed, checked
    against the policy and sent to the best allowed locus; responses carry the decision in
    `additional_kwargs["locus"]` (and `raw.locus`).

    Routing context (tenant, user, app, interactive, latency_budget_ms, max_cost_usd, data_label)
    comes from the fields below, or per call from keyword arguments or `context={...}`. `model`
    (or `locus=` per call) pins calls to one locus by name or model string; the policy still
    applies.
    """

    config: str | None = Field(default=None, description="Path of the locus config file.")
    model: str | None = Field(
        default=None,
        description="Pin calls to this locus (name or model string); None lets the router choose.",
    )
    tenant: str | None = None
    user: str | None = None
    app: str | None = None
    interactive: bool | None = None
    latency_budget_ms: float | None = None
    max_cost_usd: float | None = None
    data_label: str | None = Field(
        default=None,
        description="PUBLIC, INTERNAL, CONFIDENTIAL or "
        "RESTRICTED: can raise the detected class, never lower it.",
    )
    temperature: float | None = None
    max_tokens: int | None = None
    additional_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further LiteLLM parameters."
    )

    _router: Router = PrivateAttr()

    def __init__(
        self,
        config: str | Path | LocusConfig | dict[str, Any] | None = None,
        *,
        router: Router | None = None,
        **kwargs: Any,
    ) -> None:
        path = str(config) if isinstance(config, str | Path) else None
        super().__init__(config=path, **kwargs)
        self._router = router or router_for(config)

    @classmethod
    def class_name(cls) -> str:
        return "locus_llm"

    @property
    def router(self) -> Router:
        return self._router

    @property
    def metadata(self) -> LLMMetadata:
        """The context window of the locus this LLM's calls would go to (an empty prompt under
        its routing context); if the policy allows none, the smallest configured window."""
        return LLMMetadata(
            context_window=self._expected_context_window(),
            num_output=self.max_tokens or DEFAULT_NUM_OUTPUTS,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model or "locus-router",
        )

    # --- chat and completion --------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return to_chat_response(self._router.completion(**self._request(messages, kwargs)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return to_chat_response(await self._router.acompletion(**self._request(messages, kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        request = self._request(messages, kwargs, stream=True)

        def gen() -> Iterator[ChatResponse]:
            stream = self._router.completion(**request)
            state = StreamState()
            for chunk in stream:
                if (response := state.feed(chunk)) is not None:
                    yield response
            yield state.response("", None, stream.locus)

        return gen()

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        request = self._request(messages, kwargs, stream=True)

        async def gen() -> AsyncIterator[ChatResponse]:
            stream = await self._router.acompletion(**request)
            state = StreamState()
            async for chunk in stream:
                if (response := state.feed(chunk)) is not None:
                    yield response
            yield state.response("", None, stream.locus)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return as_completion(self.chat(self._prompt_messages(prompt), **kwargs))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return as_completion(await self.achat(self._prompt_messages(prompt), **kwargs))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        responses = self.stream_chat(self._prompt_messages(prompt), **kwargs)
        return (as_completion(r) for r in responses)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        responses = await self.astream_chat(self._prompt_messages(prompt), **kwargs)

        async def gen() -> AsyncIterator[CompletionResponse]:
            async for response in responses:
                yield as_completion(response)

        return gen()

    # --- function calling ----------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [tool.metadata.to_openai_tool(skip_length_check=True) for tool in tools]
        request: dict[str, Any] = {"messages": messages, **kwargs}
        if specs:
            request.update(
                tools=specs,
                tool_choice="required" if tool_required else "auto",
                parallel_tool_calls=allow_parallel_tool_calls,
            )
        return request

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not allow_parallel_tool_calls and len(calls) > 1:
            response.message.additional_kwargs["tool_calls"] = calls[:1]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"expected a tool call; the model answered: "
                f"{(response.message.content or '')[:200]!r}"
            )
        selections = []
        for call in calls:
            function = call.get("function") or {}
            arguments = tool_arguments(
                function.get("name"), function.get("arguments"), partial=not error_on_no_tool_call
            )
            selections.append(
                ToolSelection(
                    tool_id=call.get("id") or uuid.uuid4().hex,
                    tool_name=function.get("name", ""),
                    tool_kwargs=arguments,
                )
            )
        return selections

    # --- translation to the router -------------------------------------------------------

    def _routing_defaults(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in ROUTING_FIELDS}

    def _prompt_messages(self, prompt: str) -> list[ChatMessage]:
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    def _request(
        self, messages: Sequence[ChatMessage], kwargs: dict[str, Any], *, stream: bool = False
    ) -> dict[str, Any]:
        kwargs = dict(kwargs)
        context = routing_context(self._routing_defaults(), kwargs)
        pin = kwargs.pop("locus", None) or self.model
        params = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            **self.additional_kwargs,
            **kwargs,
        }
        if stream:
            params["stream"] = True
        return {
            "messages": [to_openai_message(m) for m in messages],
            "context": context,
            "locus": self._locus_name(pin),
            **{k: v for k, v in params.items() if v is not None},
        }

    def _locus_name(self, pin: str | None) -> str | None:
        if pin is None:
            return None
        for locus in self._router.config.loci:
            if pin in (locus.name, locus.model):
                return locus.name
        return pin

    def _expected_context_window(self) -> int:
        probe = [{"role": "user", "content": ""}]
        try:
            decision = self._router.route(
                probe,
                routing_context(self._routing_defaults(), {}),
                locus=self._locus_name(self.model),
            )
        except LocusError:
            decision = None
        if decision is not None and decision.locus is not None:
            return self._router.config.locus(decision.locus).context_window
        return min(locus.context_window for locus in self._router.config.loci)

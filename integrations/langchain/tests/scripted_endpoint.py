"""A scripted OpenAI-compatible endpoint on loopback: it stands in for a vLLM server in tests.

The on-device SmolLM2-135M cannot call tools or follow a JSON schema, and `locus serve` refuses
`tools`; the standard suites need a model that does both. This server answers deterministically
from the request itself, so every assertion is about what crossed the wire:

- tools offered (and `tool_choice` not "none") and the last message is not a tool result, or the
  choice forces a call: it calls the named tool (else the first tool whose name the prompt
  mentions, else the first tool), with arguments filled from the tool's JSON schema — integers
  and numbers from the numbers in the prompt, strings from its quoted phrases (else the prompt);
- `response_format` json_schema: content is a JSON object filled from the schema the same way;
  json_object: a JSON object whose keys are the prompt's quoted words;
- otherwise a text answer naming the last message (a tool result is quoted back);
- `stop` sequences cut the answer as a real server would; usage counts are returned (and streamed
  in a final chunk when `stream_options.include_usage` is set).

    with scripted_endpoint() as base_url:   # "http://127.0.0.1:PORT"; the OpenAI API is under /v1
        ...
    ENDPOINT.requests                        # every request body received, in order
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from locus_llm.server import ServerThread

CLOUD_KEY_ENV = "LOCUS_SCRIPTED_TEST_CLOUD_KEY"  # cloud loci name it; tests set it
QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message (what a model would act on)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return content_text(messages[-1].get("content")) if messages else ""


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class Filler:
    """Fills a JSON schema with values drawn, in order, from the prompt."""

    def __init__(self, prompt: str, definitions: dict[str, Any] | None = None) -> None:
        self.prompt = prompt.strip() or "scripted"
        self.numbers = [float(n) for n in NUMBER.findall(prompt)]
        self.phrases = [a or b for a, b in QUOTED.findall(prompt)]
        self.definitions = definitions or {}

    def fill(self, schema: dict[str, Any]) -> Any:
        if "$ref" in schema:
            return self.fill(self.definitions[schema["$ref"].rsplit("/", 1)[-1]])
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
                return self.fill(options[0])
        if "enum" in schema:
            return schema["enum"][0]
        kind = schema.get("type", "object" if "properties" in schema else "string")
        if kind == "object":
            return {name: self.fill(sub) for name, sub in schema.get("properties", {}).items()}
        if kind == "array":
            return [self.fill(schema.get("items", {"type": "string"}))]
        if kind == "integer":
            return int(self.numbers.pop(0)) if self.numbers else 1
        if kind == "number":
            return self.numbers.pop(0) if self.numbers else 1.0
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.phrases.pop(0) if self.phrases else self.prompt


@dataclass
class Answer:
    content: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


def answer(payload: dict[str, Any]) -> Answer:
    """What the scripted model says to one chat-completions request."""
    messages = payload.get("messages") or []
    prompt = prompt_text(messages)
    tools = payload.get("tools") or []
    choice = payload.get("tool_choice") or "auto"
    forced = choice == "required" or isinstance(choice, dict)
    last_role = messages[-1].get("role") if messages else "user"
    if tools and choice != "none" and (forced or last_role != "tool"):
        tool = pick_tool(tools, choice, prompt)
        arguments = Filler(prompt, tool.get("parameters", {}).get("$defs")).fill(
            {"type": "object", **tool.get("parameters", {})}
        )
        call = {
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {
                "name": tool["name"],
                "arguments": json.dumps(arguments, ensure_ascii=False),
            },
        }
        return Answer(tool_calls=[call])
    response_format = payload.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        schema = response_format["json_schema"]["schema"]
        return Answer(json.dumps(Filler(prompt, schema.get("$defs")).fill(schema)))
    if response_format.get("type") == "json_object":
        keys = [a or b for a, b in QUOTED.findall(prompt)] or ["answer"]
        return Answer(json.dumps({key: f"scripted {key}" for key in keys}))
    if last_role == "tool":
        text = f"The tool returned: {content_text(messages[-1].get('content'))}"
    else:
        text = f"Hello! This is the scripted endpoint answering: {prompt}"
    return Answer(cut_at_stop(text, payload.get("stop")))


def pick_tool(tools: list[dict[str, Any]], choice: Any, prompt: str) -> dict[str, Any]:
    functions = [t["function"] for t in tools]
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return next(f for f in functions if f["name"] == name)
    mentioned = [f for f in functions if f["name"] in prompt]
    return (mentioned or functions)[0]


def cut_at_stop(text: str, stop: Any) -> str:
    for sequence in [stop] if isinstance(stop, str) else stop or []:
        if sequence and sequence in text:
            text = text[: text.index(sequence)]
    return text or "."


def usage(payload: dict[str, Any], reply: Answer) -> dict[str, int]:
    prompt_tokens = len(json.dumps(payload.get("messages", []))) // 4 + 1
    completion_tokens = len(reply.content.split()) + sum(
        len(c["function"]["arguments"]) // 4 + 1 for c in reply.tool_calls
    )
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ScriptedEndpoint:
    """The app and what it has seen."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/health", self.health),
                Route("/v1/models", self.models),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
            ]
        )

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": []})

    async def chat(self, request: Request) -> Response:
        payload = json.loads(await request.body())
        self.requests.append(payload)
        reply = answer(payload)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "created": int(time.time()),
            "model": payload.get("model", "scripted"),
        }
        if payload.get("stream"):
            return StreamingResponse(
                self._events(base, payload, reply), media_type="text/event-stream"
            )
        message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return JSONResponse(
            {
                **base,
                "object": "chat.completion",
                "usage": usage(payload, reply),
                "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
            }
        )

    async def _events(
        self, base: dict[str, Any], payload: dict[str, Any], reply: Answer
    ) -> AsyncIterator[bytes]:
        base = {**base, "object": "chat.completion.chunk"}
        for delta in deltas(reply):
            yield sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        yield sse(
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}]}
        )
        if (payload.get("stream_options") or {}).get("include_usage"):
            yield sse({**base, "choices": [], "usage": usage(payload, reply)})
        yield b"data: [DONE]\n\n"


def deltas(reply: Answer) -> Iterator[dict[str, Any]]:
    """The answer as a server streams it: word by word, tool arguments in two pieces."""
    yield {"role": "assistant", "content": ""}
    words = reply.content.split(" ") if reply.content else []
    for i, word in enumerate(words):
        yield {"content": word if i == 0 else " " + word}
    for index, call in enumerate(reply.tool_calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        yield {
            "tool_calls": [
                {
                    "index": index,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": arguments[:half]},
                }
            ]
        }
        yield {"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]}


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


@contextmanager
def scripted_endpoint() -> Iterator[tuple[str, ScriptedEndpoint]]:
    """Serve a fresh ScriptedEndpoint on loopback: yields (base_url, endpoint)."""
    endpoint = ScriptedEndpoint()
    with ServerThread(endpoint.app) as base_url:
        yield base_url, endpoint


# --- locus configs pointing at the endpoint -----------------------------------------------


def locus(name: str, zone: str, base_url: str, **overrides: Any) -> dict[str, Any]:
    """A locus on the scripted endpoint; the model string names the locus, as vLLM's would."""
    spec: dict[str, Any] = {
        "name": name,
        "zone": zone,
        "model": f"hosted_vllm/scripted-{name}",
        "api_base": base_url + "/v1",
        "capability": {"device": 1, "onprem": 3, "cloud": 6}[zone],
        "context_window": 32768,
        "usd_per_mtok_in": {"device": 0.0, "onprem": 0.2, "cloud": 2.5}[zone],
        "usd_per_mtok_out": {"device": 0.0, "onprem": 0.2, "cloud": 10.0}[zone],
        "timeout_s": 60.0,  # generous: a loaded test machine must not look like a dead locus
        "max_retries": 0,
    }
    if zone == "cloud":
        spec["model"] = f"openai/scripted-{name}"
        spec["api_key_env"] = CLOUD_KEY_ENV
    spec.update(overrides)
    return spec


def write_config(path: Path, loci: list[dict[str, Any]]) -> Path:
    """A locus config file; the sensitivity detector runs on patterns only (no NER model needed:
    the entities these tests use, e-mail addresses and tax file numbers, are pattern-found)."""
    data = {
        "loci": loci,
        "decision_log": str(path.with_suffix(".jsonl")),
        "sensitivity": {"ner": "none"},
    }
    path.write_text(yaml.safe_dump(data))
    return path

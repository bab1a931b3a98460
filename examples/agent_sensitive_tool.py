"""A LangGraph ReAct agent whose tool returns personal data: the next model call stays on-prem.

    python examples/agent_sensitive_tool.py                  # offline: a scripted stand-in model
    python examples/agent_sensitive_tool.py --config my.yaml # your loci (a cloud and an on-prem)

The agent is an ordinary LangGraph ReAct loop (model → tools → model) with `ChatLocus` as its
model. Turn one (the user's
question) carries nothing sensitive, so the router picks the strong cloud locus. The tool then
returns a customer record with an e-mail address; turn two carries that record, analysis finds
CONFIDENTIAL data, the policy denies the cloud zone, and the call runs on the on-prem locus. No
line of the agent knows about any of this.

Offline, both loci are served by a small scripted OpenAI-compatible server on loopback standing in
for a cloud API and an on-prem vLLM (it calls the tool on turn one and reports its result on turn
two), so the example runs without keys or network. With --config, the config must define the loci
and their models must support tool calling.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langchain_locus import ChatLocus
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from locus_llm.server import ServerThread

QUESTION = "Has customer 4512 been told about the late delivery? Look up their record."
CLOUD_KEY_ENV = "LOCUS_EXAMPLE_CLOUD_KEY"


@tool
def lookup_customer(customer_id: int) -> str:
    """Look up a customer's record in the CRM by customer number."""
    return json.dumps(
        {
            "customer_id": customer_id,
            "name": "Jane Citizen",
            "email": "jane.citizen@example.com",
            "notes": "Order delayed 5 days; apology e-mail sent on 3 March.",
        }
    )


def react_agent(model: ChatLocus, tools: list[Any]) -> CompiledStateGraph:
    """The ReAct loop: the model answers or asks for tools; tool results go back to the model."""
    bound = model.bind_tools(tools)

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [bound.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def run_agent(config: str | Path, question: str = QUESTION) -> list[BaseMessage]:
    """Run the agent once; returns the conversation (AI messages carry their decision).

    The run's metadata is the routing context of every model call in it."""
    agent = react_agent(ChatLocus(config=str(config)), [lookup_customer])
    state = agent.invoke(
        {"messages": [("user", question)]},
        config={"metadata": {"tenant": "support-desk", "interactive": True}},
    )
    return state["messages"]


def report(messages: list[BaseMessage]) -> str:
    """One line per model call: where it ran, the data class seen, and why the cloud was denied."""
    lines = []
    turns = [m for m in messages if isinstance(m, AIMessage)]
    for turn, message in enumerate(turns, 1):
        info = message.response_metadata["locus"]
        action = (
            f"calls {message.tool_calls[0]['name']}"
            if message.tool_calls
            else f"answers: {message.text[:80]}"
        )
        denied = "; ".join(
            f"{name}: {', '.join(reasons)}" for name, reasons in info["denied"].items()
        )
        lines.append(
            f"turn {turn}: {info['data_class']:<12} -> {info['locus']} "
            f"({info['zone']}) {action}" + (f"\n        denied {denied}" if denied else "")
        )
    return "\n".join(lines)


# --- the offline stand-in for a cloud API and an on-prem vLLM -------------------------------


def scripted_reply(payload: dict[str, Any]) -> dict[str, Any]:
    """Turn one: call the tool with the customer number asked about; turn two: report the result."""
    messages = payload["messages"]
    if messages[-1]["role"] == "tool":
        return {"role": "assistant", "content": f"From the CRM record: {messages[-1]['content']}"}
    number = re.search(r"\d+", messages[-1]["content"])
    arguments = json.dumps({"customer_id": int(number.group()) if number else 0})
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{uuid.uuid4().hex[:8]}",
                "type": "function",
                "function": {
                    "name": payload["tools"][0]["function"]["name"],
                    "arguments": arguments,
                },
            }
        ],
    }


def stand_in_app(seen: list[dict[str, Any]]) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        payload = await request.json()
        seen.append(payload)
        message = scripted_reply(payload)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:8]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": payload["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(json.dumps(payload["messages"])) // 4,
                    "completion_tokens": 20,
                    "total_tokens": 20,
                },
            }
        )

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", health)]
    )


@contextmanager
def offline_config(seen: list[dict[str, Any]]) -> Iterator[Path]:
    """A cloud locus (strong, needs a key) and an on-prem locus, both on the loopback stand-in."""
    os.environ.setdefault(CLOUD_KEY_ENV, "sk-offline-example")
    with ServerThread(stand_in_app(seen)) as base_url, tempfile.TemporaryDirectory() as folder:
        common = {"api_base": base_url + "/v1", "timeout_s": 30.0}
        loci = [
            {
                "name": "cloud",
                "zone": "cloud",
                "model": "openai/frontier-model",
                "capability": 6,
                "api_key_env": CLOUD_KEY_ENV,
                "usd_per_mtok_in": 2.5,
                "usd_per_mtok_out": 10.0,
                **common,
            },
            {
                "name": "onprem",
                "zone": "onprem",
                "model": "hosted_vllm/llama-3-8b",
                "capability": 0,
                "usd_per_mtok_in": 0.2,
                "usd_per_mtok_out": 0.2,
                **common,
            },
        ]
        path = Path(folder) / "locus.yaml"
        # Pattern-based detection is all this needs: an e-mail address is found by its shape.
        path.write_text(yaml.safe_dump({"loci": loci, "sensitivity": {"ner": "none"}}))
        yield path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        help="a locus config with tool-calling loci (default: an "
        "offline stand-in for a cloud and an on-prem model)",
    )
    parser.add_argument("--question", default=QUESTION)
    args = parser.parse_args(argv)
    if args.config:
        print(report(run_agent(args.config, args.question)))
        return 0
    seen: list[dict[str, Any]] = []
    with offline_config(seen) as config:
        print(report(run_agent(config, args.question)))
    leaked = [
        p["model"]
        for p in seen
        if "example.com" in json.dumps(p) and p["model"] == "frontier-model"
    ]
    print(f"requests to the cloud model that carried the e-mail address: {len(leaked)}")
    return 0 if not leaked else 1


if __name__ == "__main__":
    sys.exit(main())

"""Locus as a LlamaIndex LLM: completion, chat, streams, async, function calling, metadata, and
as `Settings.llm` in query and chat engines.

Every call goes through the real Router (analysis, Rego policy, selection, LiteLLM) to the
scripted endpoint on loopback (a stand-in for vLLM). Embeddings are LlamaIndex's MockEmbedding:
the LLM is what is under test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from llama_index.core import Document, Settings, SummaryIndex, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from llama_index.llms.locus import Locus
from pydantic import BaseModel, Field
from scripted_endpoint import ScriptedEndpoint

from locus_llm.errors import NoAllowedLocusError
from locus_llm.router import Router

QUESTION = "What is the boiling point of water at sea level?"
WITH_EMAIL = "Draft a reply to jane.citizen@example.com about her refund."
POLICY_DOC = "Refunds are accepted within 30 days of delivery."
CUSTOMER_DOC = "Customer Jane Citizen, jane.citizen@example.com, asked about order 4512."


def called(endpoint: tuple[str, ScriptedEndpoint], since: int) -> list[str]:
    return [body["model"] for body in endpoint[1].requests[since:]]


def test_complete_and_chat_carry_the_decision(zoned_config: Path, endpoint) -> None:
    llm = Locus(config=zoned_config)
    before = len(endpoint[1].requests)
    completion = llm.complete(QUESTION)
    assert QUESTION in completion.text
    info = completion.additional_kwargs["locus"]
    assert info["locus"] == "cloud" and info["zone"] == "cloud"
    assert completion.raw.locus == info
    assert completion.additional_kwargs["completion_tokens"] == info["usage"]["completion_tokens"]

    reply = llm.chat(
        [
            ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
            ChatMessage(role=MessageRole.USER, content=WITH_EMAIL),
        ]
    )
    assert reply.message.role == MessageRole.ASSISTANT and WITH_EMAIL in reply.message.content
    assert reply.additional_kwargs["locus"]["locus"] == "onprem"
    assert reply.additional_kwargs["locus"]["data_class"] == "CONFIDENTIAL"
    assert called(endpoint, before) == ["scripted-cloud", "scripted-onprem"]
    assert endpoint[1].requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": WITH_EMAIL},
    ]


def test_streams_accumulate_and_end_with_the_decision(zoned_config: Path) -> None:
    llm = Locus(config=zoned_config)
    responses = list(llm.stream_complete(QUESTION))
    assert "".join(r.delta or "" for r in responses) == responses[-1].text
    assert QUESTION in responses[-1].text and len(responses) > 5
    assert responses[-1].additional_kwargs["locus"]["locus"] == "cloud"
    chats = list(llm.stream_chat([ChatMessage(role=MessageRole.USER, content=WITH_EMAIL)]))
    assert chats[-1].message.content == "".join(r.delta or "" for r in chats)
    assert chats[-1].additional_kwargs["locus"]["locus"] == "onprem"
    assert chats[-1].additional_kwargs["completion_tokens"] > 0


async def test_async_forms(zoned_config: Path) -> None:
    llm = Locus(config=zoned_config)
    assert (await llm.acomplete(QUESTION)).additional_kwargs["locus"]["locus"] == "cloud"
    reply = await llm.achat([ChatMessage(role=MessageRole.USER, content=WITH_EMAIL)])
    assert reply.additional_kwargs["locus"]["locus"] == "onprem"
    responses = [r async for r in await llm.astream_complete(QUESTION)]
    last = responses[-1]
    assert last is not None and QUESTION in last.text
    assert last.additional_kwargs["locus"]["locus"] == "cloud"
    deltas = []
    async for response in await llm.astream_chat([ChatMessage(content=QUESTION)]):
        deltas.append(response.delta or "")
    assert "".join(deltas) == response.message.content


def test_routing_context_from_fields_and_keywords(zoned_config: Path, endpoint) -> None:
    labelled = Locus(config=zoned_config, data_label="CONFIDENTIAL", tenant="acme")
    assert labelled.complete(QUESTION).additional_kwargs["locus"]["locus"] == "onprem"
    llm = Locus(config=zoned_config)
    assert (
        llm.complete(QUESTION, data_label="CONFIDENTIAL").additional_kwargs["locus"]["locus"]
        == "onprem"
    )
    assert (
        llm.complete(QUESTION, context={"data_label": "CONFIDENTIAL"}).additional_kwargs["locus"][
            "locus"
        ]
        == "onprem"
    )
    assert llm.complete(QUESTION, locus="onprem").additional_kwargs["locus"]["locus"] == "onprem"
    with pytest.raises(NoAllowedLocusError, match="allows no locus"):
        llm.complete(QUESTION, data_label="RESTRICTED")


def test_metadata_reports_the_window_of_the_locus_it_would_use(zoned_config: Path) -> None:
    metadata = Locus(config=zoned_config).metadata
    assert metadata.context_window == 128000  # the cloud locus, for public work
    assert metadata.is_chat_model and metadata.is_function_calling_model
    assert Locus(config=zoned_config, data_label="CONFIDENTIAL").metadata.context_window == 32768
    assert Locus(config=zoned_config, model="onprem").metadata.context_window == 32768
    # Nothing allowed: the smallest configured window, so prompts are never built too large.
    assert Locus(config=zoned_config, data_label="RESTRICTED").metadata.context_window == 32768
    assert Locus(config=zoned_config, max_tokens=64).metadata.num_output == 64


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


def test_predict_and_call_runs_the_tool_the_model_chose(zoned_config: Path, endpoint) -> None:
    tool = FunctionTool.from_defaults(fn=multiply)
    response = Locus(config=zoned_config).predict_and_call([tool], "Multiply 6 by 7.")
    assert response.response == "42"
    assert response.sources[0].tool_name == "multiply"
    assert response.sources[0].raw_input == {"args": (), "kwargs": {"a": 6, "b": 7}}
    body = endpoint[1].requests[-1]
    assert body["tools"][0]["function"]["name"] == "multiply" and body["tool_choice"] == "auto"


async def test_apredict_and_call(zoned_config: Path) -> None:
    tool = FunctionTool.from_defaults(fn=multiply)
    response = await Locus(config=zoned_config).apredict_and_call([tool], "Multiply 3 by 5.")
    assert response.response == "15"


def test_tool_results_go_back_to_the_model(zoned_config: Path, endpoint) -> None:
    """The assistant's tool call and the tool's result, in history, reach the locus intact."""
    llm = Locus(config=zoned_config)
    tool = FunctionTool.from_defaults(fn=multiply)
    first = llm.chat_with_tools([tool], user_msg="Multiply 6 by 7.")
    (selection,) = llm.get_tool_calls_from_response(first)
    result = ChatMessage(
        role=MessageRole.TOOL,
        content="42",
        additional_kwargs={"tool_call_id": selection.tool_id, "name": "multiply"},
    )
    history = [ChatMessage(content="Multiply 6 by 7."), first.message, result]
    final = llm.chat(history)
    assert final.message.content == "The tool returned: 42"
    sent = endpoint[1].requests[-1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == selection.tool_id
    assert sent[2] == {
        "role": "tool",
        "content": "42",
        "tool_call_id": selection.tool_id,
        "name": "multiply",
    }


class Refund(BaseModel):
    """A refund to issue."""

    order_id: int = Field(description="the order number")
    reason: str = Field(description="why")


def test_structured_predict_through_function_calling(zoned_config: Path) -> None:
    llm = Locus(config=zoned_config)
    refund = llm.structured_predict(
        Refund, PromptTemplate("Refund order {order}, reason 'arrived broken'."), order="4512"
    )
    assert refund == Refund(order_id=4512, reason="arrived broken")


@pytest.fixture
def settings(zoned_config: Path) -> Iterator[Locus]:
    """Locus as Settings.llm (embeddings mocked: the LLM is under test); restored afterwards."""
    saved_llm, saved_embed = Settings._llm, Settings._embed_model
    Settings.llm = Locus(config=zoned_config)
    Settings.embed_model = MockEmbedding(embed_dim=8)
    yield Settings.llm
    Settings._llm, Settings._embed_model = saved_llm, saved_embed


@pytest.mark.parametrize("index_class", [VectorStoreIndex, SummaryIndex])
def test_query_engines_route_by_what_the_retrieved_context_holds(
    settings: Locus, index_class: type, endpoint
) -> None:
    public = index_class.from_documents([Document(text=POLICY_DOC)])
    before = len(endpoint[1].requests)
    answer = public.as_query_engine().query("How long is the refund window?")
    assert POLICY_DOC in str(answer)  # the scripted model quotes its prompt: the context arrived
    assert called(endpoint, before) == ["scripted-cloud"]

    private = index_class.from_documents([Document(text=CUSTOMER_DOC)])
    before = len(endpoint[1].requests)
    answer = private.as_query_engine().query("Which order did the customer ask about?")
    assert CUSTOMER_DOC in str(answer)
    assert called(endpoint, before) == ["scripted-onprem"]


def test_chat_engine_chat_and_stream(settings: Locus, endpoint) -> None:
    index = VectorStoreIndex.from_documents([Document(text=POLICY_DOC)])
    engine = index.as_chat_engine(chat_mode="context")
    before = len(endpoint[1].requests)
    reply = engine.chat("How long do I have to return something?")
    assert "How long do I have to return something?" in str(reply)
    assert POLICY_DOC in endpoint[1].requests[-1]["messages"][0]["content"]  # context in system
    streamed = engine.stream_chat("And after that?")
    text = "".join(streamed.response_gen)
    assert "And after that?" in text
    sent = endpoint[1].requests[-1]["messages"]
    assert [m["role"] for m in sent[-3:]] == ["user", "assistant", "user"]  # history kept
    assert called(endpoint, before) == ["scripted-cloud", "scripted-cloud"]


def test_router_instead_of_a_path(zoned_config: Path) -> None:
    router = Router.from_file(zoned_config)
    assert Locus(router=router).router is router


def lookup_customer(customer_id: int) -> str:
    """Look up a customer's record by customer number."""
    return f"Customer {customer_id}: Jane Citizen, jane.citizen@example.com"


async def test_function_agent_keeps_the_turn_after_a_sensitive_tool_result_on_prem(
    zoned_config: Path, endpoint
) -> None:
    """LlamaIndex's FunctionAgent streams each turn and reads tool calls from partial responses."""
    from llama_index.core.agent.workflow import FunctionAgent

    agent = FunctionAgent(tools=[lookup_customer], llm=Locus(config=zoned_config))
    before = len(endpoint[1].requests)
    result = await agent.run("Find customer 4512.")
    assert "jane.citizen@example.com" in str(result)
    turns = endpoint[1].requests[before:]
    assert [t["model"] for t in turns] == ["scripted-cloud", "scripted-onprem"]
    assert all(t["stream"] for t in turns)
    assert "example.com" not in json.dumps(turns[0])
    assert turns[1]["messages"][-1]["role"] == "tool"

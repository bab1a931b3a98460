"""ChatLocus as a drop-in: where calls go, what the decision says, and what crossed the wire.

Every call goes through the real Router (analysis, Rego policy, selection, LiteLLM) to the
scripted endpoint on loopback (the stand-in for vLLM, see scripted_endpoint.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_core.outputs import LLMResult
from langchain_locus import ChatLocus
from pydantic import BaseModel, Field
from scripted_endpoint import ScriptedEndpoint

from locus_llm.config import config_from_dict
from locus_llm.errors import InvalidRequestError, NoAllowedLocusError
from locus_llm.router import Router

QUESTION = "What is the boiling point of water at sea level?"
WITH_EMAIL = "Draft a reply to jane.citizen@example.com about her refund."


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ends: list[LLMResult] = []
        self.errors: list[BaseException] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.ends.append(response)

    def on_llm_error(self, error: BaseException, **kwargs: Any) -> None:
        self.errors.append(error)


class AsyncRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def models_called(endpoint: ScriptedEndpoint, since: int) -> list[str]:
    return [body["model"] for body in endpoint.requests[since:]]


def decisions(config: Path) -> list[dict[str, Any]]:
    log = config.with_suffix(".jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_invoke_reports_the_decision_and_runs_where_it_says(
    zoned_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    _, server = endpoint
    before = len(server.requests)
    reply = ChatLocus(config=str(zoned_config)).invoke(QUESTION)
    info = reply.response_metadata["locus"]
    assert info["locus"] == "cloud" and info["zone"] == "cloud"
    assert reply.response_metadata["model_name"] == "openai/scripted-cloud"
    assert info["attempts"][0]["locus"] == "cloud" and info["attempts"][0]["outcome"] == "ok"
    assert info["policy_revision"] and info["data_class"] == "PUBLIC"
    assert info["cost_usd"] == pytest.approx(
        (info["usage"]["prompt_tokens"] * 2.5 + info["usage"]["completion_tokens"] * 10) / 1e6
    )
    assert reply.usage_metadata == {
        "input_tokens": info["usage"]["prompt_tokens"],
        "output_tokens": info["usage"]["completion_tokens"],
        "total_tokens": info["usage"]["total_tokens"],
    }
    assert models_called(server, before) == ["scripted-cloud"]
    assert QUESTION in reply.text


def test_sensitive_content_is_kept_off_the_cloud(
    zoned_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    _, server = endpoint
    before = len(server.requests)
    reply = ChatLocus(config=str(zoned_config)).invoke(WITH_EMAIL)
    info = reply.response_metadata["locus"]
    assert info["data_class"] == "CONFIDENTIAL"
    assert info["locus"] == "onprem"
    assert any("zone cloud" in reason for reason in info["denied"]["cloud"])
    assert models_called(server, before) == ["scripted-onprem"]


@pytest.mark.parametrize("how", ["metadata", "keyword", "context", "field"])
def test_data_label_per_call_from_metadata_keyword_context_or_field(
    zoned_config: Path, endpoint: tuple[str, ScriptedEndpoint], how: str
) -> None:
    _, server = endpoint
    llm = ChatLocus(config=str(zoned_config))
    before = len(server.requests)
    if how == "metadata":
        reply = llm.invoke(QUESTION, config={"metadata": {"data_label": "CONFIDENTIAL"}})
    elif how == "keyword":
        reply = llm.invoke(QUESTION, data_label="CONFIDENTIAL")
    elif how == "context":
        reply = llm.invoke(QUESTION, context={"data_label": "CONFIDENTIAL"})
    else:
        reply = ChatLocus(config=str(zoned_config), data_label="CONFIDENTIAL").invoke(QUESTION)
    assert reply.response_metadata["locus"]["locus"] == "onprem"
    assert reply.response_metadata["locus"]["data_class"] == "CONFIDENTIAL"
    assert models_called(server, before) == ["scripted-onprem"]


def test_keywords_override_metadata_which_overrides_fields(zoned_config: Path) -> None:
    llm = ChatLocus(config=str(zoned_config), tenant="from-field", user="ann")
    llm.invoke(QUESTION, config={"metadata": {"tenant": "from-metadata", "langgraph_step": 3}})
    llm.invoke(QUESTION, tenant="from-keyword", config={"metadata": {"tenant": "from-metadata"}})
    llm.with_config(metadata={"app": "helpdesk", "interactive": True}).invoke(QUESTION)
    contexts = [record["context"] for record in decisions(zoned_config)[-3:]]
    assert contexts[0] == {
        "tenant": "from-metadata",
        "user": "ann",
        "app": None,
        "interactive": False,
    }
    assert contexts[1]["tenant"] == "from-keyword"
    assert contexts[2] == {
        "tenant": "from-field",
        "user": "ann",
        "app": "helpdesk",
        "interactive": True,
    }


def test_a_label_no_locus_may_take_fails_closed_with_the_reasons(
    zoned_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    _, server = endpoint
    before = len(server.requests)
    recorder = Recorder()
    llm = ChatLocus(config=str(zoned_config), data_label="RESTRICTED")
    with pytest.raises(NoAllowedLocusError, match="allows no locus") as caught:
        llm.invoke(QUESTION, config={"callbacks": [recorder]})
    assert set(caught.value.denied) == {"cloud", "onprem"}
    assert recorder.errors == [caught.value]
    assert len(server.requests) == before


def test_pin_by_locus_name_or_model_string(
    scripted_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    _, server = endpoint
    llm = ChatLocus(config=str(scripted_config))
    assert llm.invoke(QUESTION).response_metadata["locus"]["locus"] == "onprem"
    assert llm.invoke(QUESTION, locus="edge").response_metadata["locus"]["locus"] == "edge"
    pinned = ChatLocus(config=str(scripted_config), model="hosted_vllm/scripted-edge")
    assert pinned.invoke(QUESTION).response_metadata["model_name"] == "hosted_vllm/scripted-edge"
    with pytest.raises(InvalidRequestError, match="unknown locus 'nowhere'.*edge.*onprem"):
        llm.invoke(QUESTION, model="nowhere")


def test_generation_parameters_reach_the_locus(
    scripted_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    _, server = endpoint
    llm = ChatLocus(
        config=str(scripted_config),
        temperature=0.2,
        max_tokens=32,
        top_p=0.9,
        seed=7,
        model_kwargs={"presence_penalty": 0.5},
    )
    reply = llm.invoke([SystemMessage("Be brief."), HumanMessage(QUESTION)], stop=["boiling"])
    body = server.requests[-1]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 32 and body["top_p"] == 0.9
    assert body["seed"] == 7 and body["presence_penalty"] == 0.5 and body["stop"] == ["boiling"]
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": QUESTION},
    ]
    assert reply.text.endswith("answering: What is the ")  # cut at the stop sequence


def test_stream_calls_back_every_token_and_ends_with_the_decision(
    scripted_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    _, server = endpoint
    recorder = Recorder()
    chunks = list(
        ChatLocus(config=str(scripted_config)).stream(QUESTION, config={"callbacks": [recorder]})
    )
    full = chunks[0]
    for chunk in chunks[1:]:
        full += chunk
    assert isinstance(full, AIMessageChunk)
    assert "".join(recorder.tokens) == full.text and len(recorder.tokens) > 5
    assert chunks[-1].chunk_position == "last"
    info = full.response_metadata["locus"]
    assert info["locus"] == "onprem" and info["usage"]["completion_tokens"] > 0
    assert full.usage_metadata is not None
    assert full.usage_metadata["output_tokens"] == info["usage"]["completion_tokens"]
    assert server.requests[-1]["stream"] is True
    assert recorder.ends[0].generations[0][0].message.response_metadata["locus"] == info


def test_stream_usage_can_be_turned_off(
    scripted_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    _, server = endpoint
    chunks = list(ChatLocus(config=str(scripted_config), stream_usage=False).stream(QUESTION))
    assert server.requests[-1]["stream_options"] == {"include_usage": False}
    assert all(not chunk.usage_metadata for chunk in chunks)


async def test_async_invoke_stream_and_batch(
    zoned_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    llm = ChatLocus(config=str(zoned_config))
    reply = await llm.ainvoke(WITH_EMAIL)
    assert reply.response_metadata["locus"]["locus"] == "onprem"
    recorder = AsyncRecorder()
    full = None
    async for chunk in llm.astream(QUESTION, config={"callbacks": [recorder]}):
        full = chunk if full is None else full + chunk
    assert full is not None and full.response_metadata["locus"]["locus"] == "cloud"
    assert "".join(recorder.tokens) == full.text
    replies = await llm.abatch([QUESTION, WITH_EMAIL])
    assert [r.response_metadata["locus"]["locus"] for r in replies] == ["cloud", "onprem"]


class Refund(BaseModel):
    """A refund to issue."""

    order_id: int = Field(description="the order number")
    reason: str = Field(description="why")


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_structured_output_sends_the_schema_and_parses_the_answer(
    scripted_config: Path, endpoint: tuple[str, ScriptedEndpoint], method: str
) -> None:
    _, server = endpoint
    llm = ChatLocus(config=str(scripted_config))
    chain = llm.with_structured_output(Refund, method=method, include_raw=True)
    result = chain.invoke("Refund order 4512, reason 'arrived broken'.")
    assert result["parsed"] == Refund(order_id=4512, reason="arrived broken")
    assert result["raw"].response_metadata["locus"]["locus"] == "onprem"
    body = server.requests[-1]
    if method == "function_calling":
        assert body["tool_choice"] == {"type": "function", "function": {"name": "Refund"}}
        assert body["tools"][0]["function"]["parameters"]["required"] == ["order_id", "reason"]
    else:
        assert body["response_format"]["json_schema"]["schema"]["title"] == "Refund"


def test_router_or_locus_config_instead_of_a_path(
    scripted_config: Path, endpoint: tuple[str, ScriptedEndpoint]
) -> None:
    router = Router.from_file(scripted_config)
    assert ChatLocus(router=router).router is router
    config = config_from_dict(
        {
            "loci": [
                {
                    "name": "solo",
                    "zone": "onprem",
                    "model": "hosted_vllm/scripted-solo",
                    "api_base": endpoint[0] + "/v1",
                }
            ],
            "sensitivity": {"ner": "none"},
        }
    )
    reply = ChatLocus(config=config).invoke(QUESTION)
    assert reply.response_metadata["locus"]["locus"] == "solo"


@pytest.mark.parametrize("streamed", [False, True])
def test_internal_data_reaches_the_cloud_pseudonymised_and_comes_back_restored(
    zoned_config: Path, endpoint: tuple[str, ScriptedEndpoint], streamed: bool
) -> None:
    _, server = endpoint
    before = len(server.requests)
    llm = ChatLocus(config=str(zoned_config))
    prompt = "Why does the server at 10.20.30.40 refuse connections?"
    if streamed:
        reply: Any = None
        for chunk in llm.stream(prompt):
            reply = chunk if reply is None else reply + chunk
    else:
        reply = llm.invoke(prompt)
    info = reply.response_metadata["locus"]
    assert (info["locus"], info["data_class"]) == ("cloud", "INTERNAL")
    assert info["redacted"] == {"IP_ADDRESS": 1}
    sent = json.dumps(server.requests[before:])
    assert models_called(server, before) == ["scripted-cloud"] and "10.20.30.40" not in sent
    assert "10.20.30.40" in reply.text  # the echoed placeholder was restored on the way back

"""Thinking models on the Responses API: reasoning items (whole and streamed), `reasoning.effort`
as the switch, `encrypted_content` a stateless client sends back, and reasoning items in the input
becoming the assistant turn's reasoning; on the fake engine and on real MLX (the tiny Qwen3-VL
Thinking checkpoint with its real template)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

import falcon.testing
import httpx
import openai
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.adapters.store.hf_store import HuggingFaceStore
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.ports import PreparedPrompt, PromptInput
from tests.support.fakes import CountingIds
from tests.support.http import ConnectedTestClient

REPLY = "<think>\nplan it\n</think>\n\nIt is sunny."


class RecordingEngine(FakeEngine):
    """Keeps every prompt it is asked to prepare."""

    def __init__(self, *replies: str, thinking: Literal["none", "hybrid", "forced"]) -> None:
        super().__init__(list(replies), thinking=thinking)
        self.prompts: list[PromptInput] = []

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        self.prompts.append(prompt)
        return super().prepare(prompt)


def fake(*replies: str, thinking: Literal["none", "hybrid", "forced"] = "forced"
         ) -> tuple[falcon.testing.TestClient, RecordingEngine]:
    engine = RecordingEngine(*replies, thinking=thinking)
    app = build(Settings(engine="fake"), engine=engine, ids=CountingIds())
    return ConnectedTestClient(app), engine


def respond(client: falcon.testing.TestClient, **body: Any) -> Any:
    return client.simulate_post("/v1/responses", json={"model": "qwen", "input": "Weather?", **body})


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_reasoning_is_an_item_before_the_answer() -> None:
    client, _ = fake(REPLY)
    body = respond(client, reasoning={"effort": "high", "summary": "auto"}).json
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "plan it"}]
    assert reasoning["summary"] == [] and "encrypted_content" not in reasoning
    assert message["content"][0]["text"] == "It is sunny."
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}


def test_streamed_reasoning_items_and_their_events() -> None:
    client, _ = fake(REPLY)
    stream = events(respond(client, stream=True, include=["reasoning.encrypted_content"]).text)
    kinds = [event["type"] for event in stream]
    assert kinds[2:4] == ["response.output_item.added", "response.reasoning_text.delta"]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.content_part.added")
    assert [e["sequence_number"] for e in stream] == list(range(len(stream)))
    thought = "".join(e["delta"] for e in stream if e["type"] == "response.reasoning_text.delta")
    done = next(e for e in stream if e["type"] == "response.output_item.done")
    assert thought == "plan it" and done["item"]["type"] == "reasoning"
    assert done["item"]["content"][0]["text"] == "plan it" and done["item"]["encrypted_content"]
    final = stream[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]


def test_the_openai_sdk_reads_the_reasoning_stream() -> None:
    client, _ = fake(REPLY)

    async def run() -> Any:
        transport = httpx.ASGITransport(app=client.app)
        sdk = openai.AsyncOpenAI(base_url="http://127.0.0.1/v1", api_key="x",
                                 http_client=httpx.AsyncClient(transport=transport))
        async with sdk, sdk.responses.stream(model="qwen", input="Weather?") as stream:
            deltas = [event.delta async for event in stream
                      if event.type == "response.reasoning_text.delta"]
            return deltas, await stream.get_final_response()

    deltas, final = asyncio.run(run())
    assert "".join(deltas) == "plan it"
    assert final.output[0].type == "reasoning" and final.output[0].content[0].text == "plan it"
    assert final.output_text == "It is sunny."


def test_effort_none_switches_a_hybrid_model_off_and_a_forced_one_refuses() -> None:
    client, engine = fake("It is sunny.", thinking="hybrid")
    off = respond(client, reasoning={"effort": "none"})
    assert off.status_code == 200 and [i["type"] for i in off.json["output"]] == ["message"]
    assert engine.prompts[-1].thinking is False
    client, _ = fake(REPLY)
    refused = respond(client, reasoning={"effort": "none"})
    assert (refused.status_code, refused.json["error"]["param"]) == (400, "reasoning.effort")


def test_a_model_without_reasoning_is_not_asked_to_think() -> None:
    client, _ = fake("It is sunny.", thinking="none")
    assert respond(client).status_code == 200
    refused = respond(client, reasoning={"effort": "low"})
    assert (refused.status_code, refused.json["error"]["param"]) == (400, "reasoning.effort")


def test_a_summary_other_than_auto_is_refused_by_name() -> None:
    client, _ = fake(REPLY)
    for summary in ("concise", "detailed"):
        result = respond(client, reasoning={"summary": summary})
        assert result.status_code == 400, result.text
        assert result.json["error"]["param"] == "reasoning.summary"


def test_encrypted_reasoning_sent_back_becomes_the_turns_reasoning() -> None:
    """Codex's way: store false, the items of the last answer sent back with the next input."""
    client, engine = fake(REPLY, REPLY)
    first = respond(client, store=False, include=["reasoning.encrypted_content"]).json
    reasoning = first["output"][0]
    sent_back = {"type": "reasoning", "id": reasoning["id"], "summary": [],
                 "encrypted_content": reasoning["encrypted_content"]}
    second = respond(client, store=False, input=[
        {"role": "user", "content": "Weather?"}, sent_back, first["output"][1],
        {"role": "user", "content": "And tomorrow?"}])
    assert second.status_code == 200, second.text
    assistant = engine.prompts[-1].messages[1]
    assert (assistant.role, assistant.reasoning, assistant.text) == \
        ("assistant", "plan it", "It is sunny.")


def test_a_continued_response_carries_its_reasoning() -> None:
    client, engine = fake(REPLY, REPLY)
    first = respond(client).json
    respond(client, previous_response_id=first["id"], input="And tomorrow?")
    assistant = engine.prompts[-1].messages[1]
    assert (assistant.reasoning, assistant.text) == ("plan it", "It is sunny.")


def test_reasoning_before_a_call_rides_with_the_call() -> None:
    client, engine = fake(REPLY)
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
            "arguments": '{"city": "Paris"}'}
    result = respond(client, input=[
        {"role": "user", "content": "Weather?"},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "look"}]},
        call, {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
        tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}])
    assert result.status_code == 200, result.text
    assistant = engine.prompts[-1].messages[1]
    assert (assistant.reasoning, [c.name for c in assistant.tool_calls]) == ("look", ["get_weather"])


# -- real MLX: the tiny Qwen3-VL Thinking checkpoint ---------------------------------------------

@pytest.fixture(scope="module")
def thinking_vl(tiny_qwen3_vl_thinking: Path,
                tmp_path_factory: pytest.TempPathFactory) -> falcon.testing.TestClient:
    store = HuggingFaceStore(tmp_path_factory.mktemp("converted"), offline=True,
                             local_models=[tiny_qwen3_vl_thinking])
    catalog = StaticCatalog({"vl-thinking": store.resolve(str(tiny_qwen3_vl_thinking))})
    return ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=catalog))


@pytest.mark.slow
def test_real_thinking_model_answers_with_a_reasoning_item(
        thinking_vl: falcon.testing.TestClient) -> None:
    """The Thinking template opens the reasoning in the prompt: random weights seldom close it, so
    a short answer is all reasoning (or, if `</think>` came, reasoning then the answer)."""
    body = {"model": "vl-thinking", "input": "Weather?", "max_output_tokens": 6,
            "temperature": 0}
    whole = thinking_vl.simulate_post("/v1/responses", json=body).json
    assert whole["output"][0]["type"] == "reasoning", whole
    assert whole["output"][0]["content"][0]["text"]
    usage = whole["usage"]
    assert 0 < usage["output_tokens_details"]["reasoning_tokens"] <= usage["output_tokens"]
    if usage["output_tokens_details"]["reasoning_tokens"] == usage["output_tokens"]:
        assert len(whole["output"]) == 1 and whole["status"] == "incomplete"
    streamed = events(thinking_vl.simulate_post("/v1/responses",
                                                json={**body, "stream": True}).text)
    thought = "".join(e["delta"] for e in streamed if e["type"] == "response.reasoning_text.delta")
    assert thought == whole["output"][0]["content"][0]["text"]

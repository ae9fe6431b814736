"""Thinking models: reasoning split from the answer on the chat and Messages APIs, the on/off
switches and their refusals; on the fake engine (scripted replies) and on real MLX with the tiny
Qwen3-VL Thinking checkpoint (the real Thinking template) and the tiny hybrid Qwen3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.adapters.store.hf_store import HuggingFaceStore
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.fakes import CountingIds
from tests.support.http import ConnectedTestClient

ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def fake(*replies: str, thinking: Literal["none", "hybrid", "forced"] = "forced"
         ) -> falcon.testing.TestClient:
    engine = FakeEngine(list(replies), thinking=thinking)
    return ConnectedTestClient(build(Settings(engine="fake"), engine=engine, ids=CountingIds()))


def chat(client: falcon.testing.TestClient, **body: Any) -> Any:
    return client.simulate_post("/v1/chat/completions",
                                json={"model": "qwen", "messages": ASK, **body})


def sse(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: {")]


# -- chat on the fake engine ---------------------------------------------------------------------

def test_forced_open_reasoning_is_split_from_the_answer() -> None:
    result = chat(fake("<think>\nplan it\n</think>\n\nIt is sunny."))
    message = result.json["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("plan it", "It is sunny.")
    assert result.json["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_streamed_reasoning_comes_as_reasoning_content_deltas() -> None:
    result = chat(fake("<think>plan it</think>It is sunny."), stream=True)
    deltas = [c["choices"][0]["delta"] for c in sse(result.text) if c["choices"]]
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert (reasoning, content) == ("plan it", "It is sunny.")


def test_an_unclosed_block_at_max_tokens_is_all_reasoning() -> None:
    result = chat(fake("<think>one two three four five six</think> answer"), max_tokens=3)
    choice = result.json["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] in ("", None)
    assert choice["message"]["reasoning_content"]


def test_tool_calls_and_stops_see_the_answer_only() -> None:
    reply = f"<think>maybe {CALL} STOP</think>{CALL}"
    result = chat(fake(reply), tools=[WEATHER], stop=["STOP"])
    choice = result.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert len(choice["message"]["tool_calls"]) == 1
    assert "STOP" in choice["message"]["reasoning_content"]


def test_a_thinking_only_template_cannot_stop_thinking() -> None:
    for body, param in (({"reasoning_effort": "none"}, "reasoning_effort"),
                        ({"chat_template_kwargs": {"enable_thinking": False}},
                         "chat_template_kwargs.enable_thinking")):
        result = chat(fake("<think>x</think>y"), **body)
        assert result.status_code == 400
        assert (result.json["error"]["param"], result.json["error"]["code"]) == (
            param, "unsupported_value")


def test_a_model_without_reasoning_cannot_be_asked_to_think() -> None:
    result = fake("hi").simulate_post("/v1/chat/completions", json={
        "model": "gemma", "messages": ASK, "reasoning_effort": "high"})
    assert result.status_code == 400
    assert result.json["error"]["param"] == "reasoning_effort"


def test_hybrid_thinking_switches_off_and_on() -> None:
    client = fake("<think>plan</think>answer", thinking="hybrid")
    off = chat(client, chat_template_kwargs={"enable_thinking": False}).json["choices"][0]["message"]
    assert (off.get("reasoning_content"), off["content"]) == (None, "answer")
    on = chat(client, reasoning_effort="high").json["choices"][0]["message"]
    assert (on["reasoning_content"], on["content"]) == ("plan", "answer")


def test_other_template_kwargs_and_contradictions_are_refused() -> None:
    client = fake("x")
    result = chat(client, chat_template_kwargs={"add_vision_id": True})
    assert (result.status_code, result.json["error"]["param"]) == (
        400, "chat_template_kwargs.add_vision_id")
    result = chat(client, reasoning_effort="none", chat_template_kwargs={"enable_thinking": True})
    assert (result.status_code, result.json["error"]["param"]) == (
        400, "chat_template_kwargs.enable_thinking")


def test_assistant_reasoning_content_is_accepted_back() -> None:
    messages = [*ASK, {"role": "assistant", "content": "Sunny.", "reasoning_content": "plan"},
                {"role": "user", "content": "Thanks"}]
    result = fake("<think>ok</think>You are welcome.").simulate_post(
        "/v1/chat/completions", json={"model": "qwen", "messages": messages})
    assert result.json["choices"][0]["message"]["content"] == "You are welcome."


# -- Messages on the fake engine ------------------------------------------------------------------

def messages(client: falcon.testing.TestClient, **body: Any) -> Any:
    return client.simulate_post("/v1/messages", json={
        "model": "qwen", "max_tokens": 64, "messages": ASK, **body})


def test_messages_returns_a_thinking_block_before_the_text() -> None:
    result = messages(fake("<think>plan</think>Sunny."))
    assert result.json["content"] == [{"type": "thinking", "thinking": "plan", "signature": ""},
                                      {"type": "text", "text": "Sunny."}]


def test_messages_streams_thinking_then_its_signature() -> None:
    result = messages(fake("<think>plan</think>Sunny."), stream=True)
    events = [json.loads(line[6:]) for line in result.text.splitlines()
              if line.startswith("data: ")]
    kinds = [(e["type"], e.get("delta", e.get("content_block", {})).get("type")) for e in events]
    assert kinds[2:7] == [("content_block_start", "thinking"),
                          ("content_block_delta", "thinking_delta"),
                          ("content_block_delta", "signature_delta"),
                          ("content_block_stop", None), ("content_block_start", "text")]


def test_messages_thinking_switch_and_budget() -> None:
    client = fake("<think>plan</think>Sunny.")
    result = messages(client, thinking={"type": "disabled"})
    assert (result.status_code, result.json["error"]["message"].count("'thinking'")) == (400, 1)
    result = messages(client, thinking={"type": "enabled", "budget_tokens": 1024},
                      max_tokens=2048)
    assert result.status_code == 400
    assert "'thinking.budget_tokens'" in result.json["error"]["message"]
    result = messages(client, thinking={"type": "enabled", "budget_tokens": 2048},
                      max_tokens=2048)
    assert result.status_code == 200
    assert messages(client, thinking={"type": "adaptive"}).status_code == 200


def test_messages_accepts_thinking_blocks_sent_back() -> None:
    history = [*ASK, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "plan", "signature": ""},
        {"type": "redacted_thinking", "data": "xyz"}, {"type": "text", "text": "Sunny."}]},
        {"role": "user", "content": "Thanks"}]
    result = messages(fake("<think>ok</think>Welcome."), messages=history)
    assert result.json["content"][-1] == {"type": "text", "text": "Welcome."}


def test_the_anthropic_sdk_accumulates_the_thinking_stream() -> None:
    from anthropic.lib.streaming._messages import accumulate_event  # what stream() runs
    from anthropic.types import RawMessageStreamEvent
    from pydantic import TypeAdapter

    result = messages(fake("<think>plan</think>Sunny."), stream=True)
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    snapshot = None
    buffers: dict[int, bytes] = {}
    for line in result.text.splitlines():
        if line.startswith("data: ") and '"type":"ping"' not in line:
            event = adapter.validate_python(json.loads(line[6:]))
            snapshot = accumulate_event(event=event, current_snapshot=snapshot,
                                            json_bufs=buffers)
    assert snapshot is not None
    assert [block.type for block in snapshot.content] == ["thinking", "text"]
    assert snapshot.content[0].thinking == "plan"
    assert snapshot.content[0].signature == ""


@pytest.mark.parametrize(("model", "thinking"), [("qwen", "none"), ("gemma", "forced")])
def test_messages_adaptive_on_a_model_without_thinking_just_answers(
        model: str, thinking: Literal["none", "hybrid", "forced"]) -> None:
    """An Instruct template (no thinking mode), and a family with no reasoning markers at all:
    adaptive leaves it to the model, which does not think; `enabled` asks and is refused."""
    client = fake("Sunny.", thinking=thinking)
    result = messages(client, model=model, thinking={"type": "adaptive"})
    assert result.status_code == 200, result.text
    assert result.json["content"] == [{"type": "text", "text": "Sunny."}]
    streamed = messages(client, model=model, thinking={"type": "adaptive"}, stream=True)
    assert '"thinking"' not in streamed.text and "Sunny." in streamed.text
    refused = messages(client, model=model, thinking={"type": "enabled", "budget_tokens": 1024},
                       max_tokens=1024)
    assert (refused.status_code, refused.json["error"]["type"]) == (400, "invalid_request_error")
    assert "'thinking'" in refused.json["error"]["message"]


@pytest.mark.parametrize("thinking", ["forced", "hybrid"])
def test_messages_adaptive_on_a_thinking_template_thinks(
        thinking: Literal["none", "hybrid", "forced"]) -> None:
    result = messages(fake("<think>plan</think>Sunny.", thinking=thinking),
                      thinking={"type": "adaptive"})
    assert result.json["content"] == [{"type": "thinking", "thinking": "plan", "signature": ""},
                                      {"type": "text", "text": "Sunny."}]


@pytest.mark.parametrize("kind", ["adaptive", "enabled"])
def test_messages_display_omitted_returns_an_empty_thinking_block(kind: str) -> None:
    config: dict[str, Any] = {"type": kind, "display": "omitted"}
    if kind == "enabled":
        config["budget_tokens"] = 1024  # at least max_tokens (64): it cannot bind
    client = fake("<think>plan it well</think>Sunny.")
    shown = messages(client, thinking={**config, "display": "summarized"})
    result = messages(client, thinking=config)
    assert result.status_code == 200, result.text
    assert result.json["content"] == [{"type": "thinking", "thinking": "", "signature": ""},
                                      {"type": "text", "text": "Sunny."}]
    assert shown.json["content"][0]["thinking"] == "plan it well"
    # the model reasoned all the same
    assert result.json["usage"]["output_tokens"] == shown.json["usage"]["output_tokens"]


def test_messages_display_omitted_streams_no_thinking_text() -> None:
    from anthropic.lib.streaming._messages import accumulate_event
    from anthropic.types import RawMessageStreamEvent
    from pydantic import TypeAdapter

    client = fake("<think>plan it well</think>Sunny.")
    result = messages(client, thinking={"type": "adaptive", "display": "omitted"}, stream=True)
    events = [json.loads(line[6:]) for line in result.text.splitlines()
              if line.startswith("data: ")]
    kinds = [(e["type"], e.get("delta", e.get("content_block", {})).get("type")) for e in events]
    assert kinds[2:6] == [("content_block_start", "thinking"),
                          ("content_block_delta", "signature_delta"),
                          ("content_block_stop", None), ("content_block_start", "text")]
    assert "plan" not in result.text
    shown = messages(client, stream=True)
    shown_events = [json.loads(line[6:]) for line in shown.text.splitlines()
                    if line.startswith("data: ")]
    assert events[-2]["usage"]["output_tokens"] == shown_events[-2]["usage"]["output_tokens"]
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    snapshot = None
    buffers: dict[int, bytes] = {}
    for event in events:
        if event["type"] != "ping":
            snapshot = accumulate_event(event=adapter.validate_python(event),
                                        current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    assert [block.type for block in snapshot.content] == ["thinking", "text"]
    assert (snapshot.content[0].thinking, snapshot.content[0].signature) == ("", "")
    assert snapshot.content[1].text == "Sunny."


def test_messages_an_omitted_thinking_block_sent_back_is_dropped() -> None:
    engine = FakeEngine(["<think>ok</think>Welcome."], thinking="forced")
    prompts: list[Any] = []
    prepare = engine.prepare
    engine.prepare = lambda prompt: (prompts.append(prompt), prepare(prompt))[1]  # type: ignore[method-assign]
    client = ConnectedTestClient(build(Settings(engine="fake"), engine=engine, ids=CountingIds()))
    history = [*ASK, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": "Sunny."}]},
        {"role": "user", "content": "Thanks"}]
    result = messages(client, messages=history, thinking={"type": "adaptive", "display": "omitted"})
    assert result.status_code == 200, result.text
    assistant = prompts[-1].messages[-2]
    assert (assistant.text, assistant.reasoning) == ("Sunny.", None)


# -- real MLX: the tiny Qwen3-VL Thinking and the tiny hybrid Qwen3 -------------------------------

def mlx_client(path: Path, tmp_path_factory: pytest.TempPathFactory, name: str
               ) -> falcon.testing.TestClient:
    store = HuggingFaceStore(tmp_path_factory.mktemp("converted"), offline=True,
                             local_models=[path])
    catalog = StaticCatalog({name: store.resolve(str(path))})
    return ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=catalog))


@pytest.fixture(scope="module")
def thinking_vl(tiny_qwen3_vl_thinking: Path,
                tmp_path_factory: pytest.TempPathFactory) -> falcon.testing.TestClient:
    return mlx_client(tiny_qwen3_vl_thinking, tmp_path_factory, "vl-thinking")


@pytest.fixture(scope="module")
def hybrid(tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> falcon.testing.TestClient:
    return mlx_client(tiny_qwen3, tmp_path_factory, "qwen3")


@pytest.mark.slow
def test_real_thinking_template_starts_inside_the_reasoning(
        thinking_vl: falcon.testing.TestClient) -> None:
    result = thinking_vl.simulate_post("/v1/chat/completions", json={
        "model": "vl-thinking", "messages": ASK, "max_tokens": 8, "temperature": 0, "seed": 1})
    choice = result.json["choices"][0]
    usage = result.json["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    if choice["finish_reason"] == "length" and reasoning == usage["completion_tokens"]:
        # random weights rarely write </think>: everything so far is reasoning
        assert choice["message"]["content"] in ("", None)
        assert choice["message"]["reasoning_content"]
    else:  # the close came: what precedes it is reasoning, the rest the answer
        assert reasoning <= usage["completion_tokens"]


@pytest.mark.slow
def test_real_thinking_template_refuses_to_stop_thinking(
        thinking_vl: falcon.testing.TestClient) -> None:
    result = thinking_vl.simulate_post("/v1/chat/completions", json={
        "model": "vl-thinking", "messages": ASK, "max_tokens": 2, "reasoning_effort": "none"})
    assert (result.status_code, result.json["error"]["param"]) == (400, "reasoning_effort")


@pytest.mark.slow
def test_real_thinking_stream_and_messages_agree(thinking_vl: falcon.testing.TestClient) -> None:
    body = {"model": "vl-thinking", "messages": ASK, "max_tokens": 6, "temperature": 0}
    streamed = thinking_vl.simulate_post("/v1/chat/completions", json={**body, "stream": True})
    deltas = [c["choices"][0]["delta"] for c in sse(streamed.text) if c["choices"]]
    plain = thinking_vl.simulate_post("/v1/chat/completions", json=body).json
    assert "".join(d.get("reasoning_content", "") for d in deltas) == \
        (plain["choices"][0]["message"].get("reasoning_content") or "")
    anthropic = thinking_vl.simulate_post("/v1/messages", json=body).json
    if plain["choices"][0]["message"].get("reasoning_content"):
        assert anthropic["content"][0]["type"] == "thinking"


@pytest.mark.slow
def test_real_hybrid_thinking_off_renders_the_closed_block(
        hybrid: falcon.testing.TestClient) -> None:
    result = hybrid.simulate_post("/v1/chat/completions", json={
        "model": "qwen3", "messages": ASK, "max_tokens": 4,
        "chat_template_kwargs": {"enable_thinking": False}})
    message = result.json["choices"][0]["message"]
    assert "reasoning_content" not in message
    assert result.json["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    on = hybrid.simulate_post("/v1/chat/completions", json={
        "model": "qwen3", "messages": ASK, "max_tokens": 4, "reasoning_effort": "high"})
    assert on.status_code == 200


@pytest.mark.slow
def test_real_prompts_end_where_the_templates_say(tiny_qwen3_vl_thinking: Path,
                                                  tiny_qwen3: Path,
                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    from mlx_server.domain.conversation import Message, Role, TextPart
    from mlx_server.domain.ports import PromptInput

    question = (Message(Role.USER, (TextPart("hi"),)),)
    for path, thinking, tail, switch in (
            (tiny_qwen3_vl_thinking, True, "<|im_start|>assistant\n<think>\n", False),
            (tiny_qwen3, False, "<|im_start|>assistant\n<think>\n\n</think>\n\n", True),
            (tiny_qwen3, True, "<|im_start|>assistant\n", True)):
        store = HuggingFaceStore(tmp_path_factory.mktemp("c"), offline=True, local_models=[path])
        engine = MlxEngine(prefix_cache=False)
        engine.load(store.resolve(str(path)))
        prompt = engine.prepare(PromptInput(question, thinking=thinking))
        assert prompt.tail.endswith(tail)
        assert prompt.thinking_switch is switch
        engine.unload()

"""The Qwen3 text family end to end: the tiny random-weight qwen3 checkpoint with the real
hybrid-thinking chat template, loaded by mlx_vlm through the server's MlxEngine and HTTP app, and
the family chosen from its config (model_type qwen3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.adapters.store.hf_store import HuggingFaceStore
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import (
    ChatRequest,
    Message,
    Role,
    TextPart,
    ToolCall,
    ToolSpec,
)
from mlx_server.domain.families import QWEN3
from mlx_server.domain.models import ModelRef
from mlx_server.domain.ports import PromptInput
from mlx_server.domain.tool_plan import plan_tools
from tests.support.fakes import CountingIds
from tests.support.http import ConnectedTestClient

pytestmark = pytest.mark.slow
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def ref(tiny_qwen3: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    """The tiny model as the store resolves it: the family comes from its config."""
    store = HuggingFaceStore(tmp_path_factory.mktemp("converted"), offline=True,
                             local_models=[tiny_qwen3])
    return store.resolve(str(tiny_qwen3))


@pytest.fixture(scope="module")
def client(ref: ModelRef) -> falcon.testing.TestClient:
    catalog = StaticCatalog({"qwen3": ref})
    return ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=catalog))


def prompt_text(ref: ModelRef, messages: tuple[Message, ...]) -> str:
    """The prompt the engine prepares for a request with the weather tool, decoded."""
    engine = MlxEngine()
    engine.load(ref)
    spec = ToolSpec("get_weather", "Weather for a city", WEATHER["function"]["parameters"])
    plan = plan_tools(ChatRequest("qwen3", messages, tools=(spec,)), ref)
    prompt = engine.prepare(PromptInput(plan.messages, plan.template_tools, (), plan.prefix))
    tokenizer = getattr(engine._processor, "tokenizer", engine._processor)
    return str(tokenizer.decode(prompt.payload["input_ids"][0].tolist()))  # type: ignore[index]


def test_the_store_picks_the_qwen3_profile_from_the_config(ref: ModelRef) -> None:
    assert (ref.family, ref.context_length, ref.vision, ref.settled) == (QWEN3.name, 40960, False, True)


def test_the_template_renders_the_offered_tools(ref: ModelRef) -> None:
    prompt = prompt_text(ref, (Message(Role.USER, (TextPart("Weather in Paris?"),)),))
    assert prompt.startswith("<|im_start|>system\n# Tools\n")
    assert '<tools>\n{"function": {"description": "Weather for a city", "name": "get_weather"' in prompt


def test_chat_with_tools_through_http(client: falcon.testing.TestClient) -> None:
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        result = client.simulate_post("/v1/chat/completions", json={
            "model": "qwen3", "messages": ASK, "tools": [WEATHER], "tool_choice": choice,
            "max_tokens": 4, "temperature": 0})
        assert result.status_code == 200, result.text
        assert result.json["choices"][0]["finish_reason"] in ("length", "stop", "tool_calls")


def test_a_tool_message_round_trips_as_a_tool_response(client: falcon.testing.TestClient) -> None:
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_0", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'}]
    result = client.simulate_post("/v1/chat/completions", json={
        "model": "qwen3", "messages": history, "tools": [WEATHER], "max_tokens": 2})
    assert result.status_code == 200, result.text


def test_the_prompt_gives_the_result_back_as_a_tool_response(ref: ModelRef) -> None:
    call = ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    loop = (Message(Role.USER, (TextPart("Weather in Paris?"),)),
            Message(Role.ASSISTANT, tool_calls=(call,)),
            Message(Role.TOOL, (TextPart('{"temp": 21}'),), tool_call_id="call_0"))
    prompt = prompt_text(ref, loop)
    assert f"<|im_start|>assistant\n{CALL}<|im_end|>\n" in prompt
    assert '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n' in prompt


def fake_client(*replies: str) -> falcon.testing.TestClient:
    app = build(Settings(engine="fake"), engine=FakeEngine(list(replies)), ids=CountingIds())
    return ConnectedTestClient(app)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_forced_choice_yields_a_parsed_call(choice: Any) -> None:
    # the engine emits only the continuation of the forced <tool_call> opener the server adds
    # (for a named choice too: Qwen3 has a call grammar, which writes the name)
    rest = CALL.removeprefix("<tool_call>\n")
    result = fake_client(rest).simulate_post("/v1/chat/completions", json={
        "model": "qwen3", "messages": ASK, "tools": [WEATHER], "tool_choice": choice})
    message = result.json["choices"][0]["message"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert result.json["choices"][0]["finish_reason"] == "tool_calls"

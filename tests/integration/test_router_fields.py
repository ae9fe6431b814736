"""What a router sends besides the OpenAI request (README "Fleet"), on the fake engine: the probes
sglang-router sends before it routes, and the 400s for what this server cannot do. Their honoured
behaviour on real MLX: test_router_fields_smollm.py."""

from __future__ import annotations

from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.http.app import ROUTER_PROBES
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient

HI = [{"role": "user", "content": "hi there"}]


@pytest.fixture
def client() -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(engine="fake"), engine=FakeEngine()))


def post(client: falcon.testing.TestClient, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={"model": "gemma", "messages": HI,
                                                               **body})


@pytest.mark.parametrize("path", ROUTER_PROBES)
def test_router_probes_name_the_model_in_memory(client: falcon.testing.TestClient, path: str) -> None:
    before = client.simulate_get(path)
    assert before.status_code == 200
    assert "served_model_name" not in before.json and before.json["dp_size"] == 1
    assert "model_path" not in before.json  # the router would fetch a tokenizer from it
    assert post(client).status_code == 200
    after = client.simulate_get(path).json
    assert after["served_model_name"] == "mlx-community/gemma-3-4b-it-4bit"
    assert after["max_batch"] == client.simulate_get("/health").json["max_batch"]


def test_router_probes_need_the_api_key_when_there_is_one() -> None:
    keyed = ConnectedTestClient(build(Settings(engine="fake", api_key="sk-x"), engine=FakeEngine()))
    assert keyed.simulate_get("/get_model_info").status_code == 401
    assert keyed.simulate_get("/get_model_info",
                              headers={"Authorization": "Bearer sk-x"}).status_code == 200


@pytest.mark.parametrize(("name", "value"), [("skip_special_tokens", False),
                                             ("separate_reasoning", False),
                                             ("stream_reasoning", False),
                                             ("return_hidden_states", True)])
def test_what_the_server_cannot_do_is_400_naming_the_field(
        client: falcon.testing.TestClient, name: str, value: bool) -> None:
    result = post(client, **{name: value})
    assert result.status_code == 400
    error = result.json["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", name)
    assert f"accepted only as {str(not value).lower()}" in error["message"]


def test_ignore_eos_runs_to_max_tokens(client: falcon.testing.TestClient) -> None:
    ended = post(client, max_tokens=20).json
    assert ended["choices"][0]["finish_reason"] == "stop"
    more = post(client, max_tokens=20, ignore_eos=True).json
    assert more["choices"][0]["finish_reason"] == "length"
    assert more["usage"]["completion_tokens"] == 20


def test_continue_final_message_needs_a_final_assistant_message_of_text(
        client: falcon.testing.TestClient) -> None:
    result = post(client, continue_final_message=True)
    assert result.status_code == 400
    assert (result.json["error"]["param"], result.json["error"]["code"]) == (
        "continue_final_message", "invalid_value")
    assert "it is a user message" in result.json["error"]["message"]
    called = [*HI, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]
    result = post(client, messages=called, continue_final_message=True)
    assert result.status_code == 400 and "tool calls" in result.json["error"]["message"]


@pytest.mark.parametrize("extra", [
    {"response_format": {"type": "json_object"}},
    {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}])
def test_continue_final_message_with_a_forced_start_is_400(
        client: falcon.testing.TestClient, extra: dict[str, Any]) -> None:
    started = [*HI, {"role": "assistant", "content": "Sure,"}]
    result = post(client, messages=started, continue_final_message=True, **extra)
    assert result.status_code == 400
    assert result.json["error"]["param"] == "continue_final_message"


def test_continued_text_is_in_the_prompt_not_the_reply(client: falcon.testing.TestClient) -> None:
    started = [*HI, {"role": "assistant", "content": "Sure, here"}]
    continued = post(client, messages=started, continue_final_message=True).json
    anew = post(client, messages=started).json
    assert "Sure, here" not in continued["choices"][0]["message"]["content"]
    assert continued["usage"]["prompt_tokens"] < anew["usage"]["prompt_tokens"]


def test_anthropic_final_assistant_with_tool_use_stays_an_earlier_turn(
        client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/messages", json={
        "model": "gemma", "max_tokens": 16, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "messages": [*HI, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}]})
    assert result.status_code == 200, result.text


def test_top_k_minus_one_is_no_limit_everywhere(client: falcon.testing.TestClient) -> None:
    assert post(client, top_k=-1).status_code == 200
    assert client.simulate_post("/v1/completions", json={
        "model": "gemma", "prompt": "Once", "top_k": -1}).status_code == 200
    assert client.simulate_post("/v1/responses", json={
        "model": "gemma", "input": "hi", "top_k": -1}).status_code == 200
    assert post(client, top_k=-2).json["error"]["param"] == "top_k"


def test_responses_priority_other_than_zero_is_400(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/responses", json={"model": "gemma", "input": "hi",
                                                         "priority": 5})
    assert result.status_code == 400
    assert (result.json["error"]["code"], result.json["error"]["param"]) == (
        "unsupported_parameter", "priority")


def test_anthropic_final_tool_use_with_a_required_tool_stays_an_earlier_turn(
        client: falcon.testing.TestClient) -> None:
    """Nothing is continued there, so nothing conflicts with the forced call."""
    result = client.simulate_post("/v1/messages", json={
        "model": "gemma", "max_tokens": 16, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "messages": [*HI, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]}]})
    assert result.status_code == 200, result.text

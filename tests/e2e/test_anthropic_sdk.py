"""Anthropic's Messages API through the official `anthropic` SDK, against a real server process on
the fake engine: create(), the stream() helper, a tool-use round trip, count_tokens, and errors
surfacing as the SDK's own exception classes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.e2e.conftest import start_server, stop_server

HELLO = "Hello from the fake engine."
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
SUNNY = "It is sunny in Paris."
WEATHER: Any = {"name": "get_weather", "description": "Weather for a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]}}
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    replies = tmp_path_factory.mktemp("anthropic") / "replies.json"
    # the tests below ask in this order: create, stream, tool call, its answer
    replies.write_text(json.dumps([HELLO, HELLO, CALL, SUNNY]))
    process, base = start_server(["--engine", "fake", "--model", "qwen", "--fake-replies",
                                  str(replies), "--api-key", "sekrit"])
    try:
        yield base
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def client(server: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server, api_key="sekrit", max_retries=0)


def test_create(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="qwen", max_tokens=64, messages=ASK,
                                     extra_body={"temperature": 0})
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == HELLO  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 5


def test_stream_helper(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="qwen", max_tokens=64, messages=ASK) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == HELLO
    assert final.content[0].text == HELLO  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 5


def test_tool_use_round_trip(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="qwen", max_tokens=64, messages=ASK,
                                tools=[WEATHER]) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    [call] = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    answer = client.messages.create(model="qwen", max_tokens=64, tools=[WEATHER], messages=[
        *ASK, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "18 C and sunny"}]}])
    assert answer.content[0].text == SUNNY  # type: ignore[union-attr]


def test_count_tokens(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model="qwen", messages=ASK, system="Be brief.")
    assert counted.input_tokens > 0


def test_errors_are_the_sdks_exceptions(server: str, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=8, messages=ASK)
    assert missing.value.status_code == 404
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="qwen", max_tokens=8, messages=ASK,
                               extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    wrong = anthropic.Anthropic(base_url=server, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="qwen", max_tokens=8, messages=ASK)


GEMMA_CALL = '```tool_code\nget_weather(city="Paris")\n```'


def test_tool_use_round_trip_on_the_gemma_family(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The same round trip, streamed, where the model writes Gemma 3's ```tool_code calls."""
    replies = tmp_path_factory.mktemp("anthropic-gemma") / "replies.json"
    replies.write_text(json.dumps([f"Let me look. {GEMMA_CALL}", SUNNY]))
    process, base = start_server(["--engine", "fake", "--model", "gemma", "--fake-replies",
                                  str(replies)])
    try:
        client = anthropic.Anthropic(base_url=base, api_key="any", max_retries=0)
        with client.messages.stream(model="gemma", max_tokens=64, messages=ASK,
                                    tools=[WEATHER]) as stream:
            first = stream.get_final_message()
        assert first.stop_reason == "tool_use"
        text, call = first.content
        assert text.type == "text" and text.text == "Let me look."
        assert call.type == "tool_use" and call.id.startswith("toolu_")
        assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
        with client.messages.stream(model="gemma", max_tokens=64, tools=[WEATHER], messages=[
                *ASK, {"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                              "content": "18 C and sunny"}]}]) as stream:
            answer = stream.get_final_message()
        assert answer.content[0].text == SUNNY  # type: ignore[union-attr]
        assert answer.stop_reason == "end_turn"
    finally:
        stop_server(process)


@pytest.mark.slow
def test_smollm_through_the_sdk(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Real MLX inference (the built-in SmolLM2) behind the SDK: create, the stream helper and
    count_tokens agree with each other."""
    cache = tmp_path_factory.mktemp("mlx-server-cache")
    process, base = start_server(["--model", "smollm", "--cache-dir", str(cache)])
    try:
        client = anthropic.Anthropic(base_url=base, api_key="any", max_retries=0)
        question: Any = [{"role": "user", "content": "What is the capital of France?"}]
        greedy: Any = {"temperature": 0}  # the SDK's current API version has no sampling fields
        done = client.messages.create(model="smollm", max_tokens=12, messages=question,
                                      extra_body=greedy)
        text = done.content[0].text  # type: ignore[union-attr]
        assert "Paris" in text and done.stop_reason in ("end_turn", "max_tokens")
        with client.messages.stream(model="smollm", max_tokens=12, messages=question,
                                    extra_body=greedy) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert streamed == text and final.usage.output_tokens == done.usage.output_tokens
        counted = client.messages.count_tokens(model="smollm", messages=question)
        assert counted.input_tokens == done.usage.input_tokens + (
            done.usage.cache_read_input_tokens or 0)
    finally:
        stop_server(process)

"""OpenAI's Responses API through the unmodified `openai` SDK against real server processes:
create(), the stream() helper, retrieve, delete, a function-call round trip (streamed, for both
tool families on the fake engine), previous_response_id, errors as the SDK's exceptions; and
real MLX inference on the built-in SmolLM2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import sdk_client, start_server, stop_server

HELLO = "Hello from the fake engine."
CALL = {"gemma": '```tool_code\nget_weather(city="Paris")\n```',
        "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'}
SUNNY = "It is sunny in Paris."
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather for a city",
                "strict": True,
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module", params=["gemma", "qwen"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[tuple[str, openai.OpenAI]]:
    replies = tmp_path_factory.mktemp(f"responses-{request.param}") / "replies.json"
    # the tests below ask in this order: create, stream, tool call, its answer, chain (2)
    replies.write_text(json.dumps([HELLO, HELLO, CALL[request.param], SUNNY, HELLO, SUNNY]))
    process, base = start_server(["--engine", "fake", "--model", request.param, "--fake-replies",
                                  str(replies), "--api-key", "sekrit"])
    try:
        yield request.param, openai.OpenAI(base_url=f"{base}/v1", api_key="sekrit", max_retries=0)
    finally:
        stop_server(process)


def test_create_retrieve_delete(family: tuple[str, openai.OpenAI]) -> None:
    model, client = family
    response = client.responses.create(model=model, input="Hi!", instructions="Be brief.",
                                       metadata={"k": "v"}, temperature=0)
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == HELLO
    assert response.metadata == {"k": "v"} and response.instructions == "Be brief."
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.usage.total_tokens == response.usage.input_tokens + 5
    kept = client.responses.retrieve(response.id)
    assert kept.output_text == HELLO and kept.id == response.id
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_stream_helper(family: tuple[str, openai.OpenAI]) -> None:
    model, client = family
    with client.responses.stream(model=model, input="Hi!") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == HELLO == final.output_text
    assert final.status == "completed"
    assert client.responses.retrieve(final.id).output_text == HELLO


def test_function_call_round_trip(family: tuple[str, openai.OpenAI]) -> None:
    model, client = family
    ask: Any = [{"role": "user", "content": "Weather in Paris?"}]
    with client.responses.stream(model=model, input=ask, tools=[WEATHER], store=False) as stream:
        first = stream.get_final_response()
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.parsed_arguments == {"city": "Paris"}  # type: ignore[attr-defined]
    answer = client.responses.create(model=model, tools=[WEATHER], input=[
        *ask, *first.output,
        {"type": "function_call_output", "call_id": call.call_id, "output": "18 C and sunny"}])
    assert answer.output_text == SUNNY


def test_previous_response_id(family: tuple[str, openai.OpenAI]) -> None:
    model, client = family
    first = client.responses.create(model=model, input="Hi!")
    second = client.responses.create(model=model, input="And Rome?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == SUNNY
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


def test_errors_are_the_sdks_exceptions(family: tuple[str, openai.OpenAI]) -> None:
    model, client = family
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=model, input="x", previous_response_id="resp_gone")
    assert isinstance(missing.value.body, dict) and \
        missing.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as hosted:
        client.responses.create(model=model, input="x", tools=[{"type": "web_search"}])
    assert isinstance(hosted.value.body, dict) and hosted.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=model, input="x", reasoning={"effort": "high"})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong",
                      max_retries=0).responses.create(model=model, input="x")


@pytest.mark.slow
def test_smollm_through_the_sdk(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("mlx-server-cache")
    with sdk_client(["--model", "smollm", "--cache-dir", str(cache)]) as client:
        done = client.responses.create(model="smollm", input="What is the capital of France?",
                                       max_output_tokens=12, temperature=0)
        assert "Paris" in done.output_text
        with client.responses.stream(model="smollm", input="What is the capital of France?",
                                     max_output_tokens=12, temperature=0) as stream:
            text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
            final = stream.get_final_response() if done.status == "completed" else None
        assert text == done.output_text
        if final is not None:
            assert final.output_text == text
        assert client.responses.retrieve(done.id).output_text == done.output_text

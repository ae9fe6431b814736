"""Tool calls through the official openai SDK, against a real server on the fake engine told to
emit raw Gemma and Qwen outputs: create() and the stream() helper assemble the same calls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import sdk_client

WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]}}}
RAW = {"gemma": 'Checking.\n```tool_code\nget_weather(city="Paris")\n```',
       "qwen": 'Checking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
               '</tool_call>'}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    replies = tmp_path_factory.mktemp("tools") / "replies.json"
    # each test asks three times per family, in this order
    replies.write_text(json.dumps([RAW["gemma"]] * 3 + [RAW["qwen"]] * 3))
    with sdk_client(["--engine", "fake", "--fake-replies", str(replies)]) as client:
        yield client


def test_each_family_streamed_and_not(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    for family in ("gemma", "qwen"):
        done = client.chat.completions.create(model=family, messages=messages, tools=[WEATHER])
        choice = done.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking."
        [call] = choice.message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]

        chunks = list(client.chat.completions.create(model=family, messages=messages,
                                                     tools=[WEATHER], stream=True))
        deltas = [d for c in chunks for d in c.choices[0].delta.tool_calls or []]
        assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == "get_weather"  # type: ignore[union-attr]

        with client.chat.completions.stream(model=family, messages=messages,
                                            tools=[WEATHER]) as helper:
            final = helper.get_final_completion().choices[0]
        assert final.finish_reason == "tool_calls" and final.message.content == "Checking."
        [assembled] = final.message.tool_calls or []
        assert (assembled.function.name, assembled.function.arguments) == (  # type: ignore[union-attr]
            call.function.name, call.function.arguments)  # type: ignore[union-attr]
        print(f"\n{family}: {call.function.name}({call.function.arguments})")  # type: ignore[union-attr]

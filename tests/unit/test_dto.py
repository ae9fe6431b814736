"""Properties of the wire layer: DTO round trips and responses that always match the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml
from hypothesis import given
from hypothesis import strategies as st

from mlx_server.adapters.http.codec import ChatCodec
from mlx_server.adapters.http.dto import (
    ChatCompletionRequestDTO,
    FunctionCallDTO,
    ImagePartDTO,
    ImageUrlDTO,
    MessageDTO,
    NamedFunctionDTO,
    NamedToolChoiceDTO,
    StreamOptionsDTO,
    TextPartDTO,
    ToolCallDTO,
    make_converter,
)
from mlx_server.domain.completion import Completion, FinishReason, Usage
from mlx_server.domain.conversation import ToolCall

SPEC = yaml.safe_load((Path(__file__).parents[2] / "openapi.yaml").read_text())
converter = make_converter()
words = st.text(max_size=12)
parts = st.one_of(st.builds(TextPartDTO, text=words),
                  st.builds(ImagePartDTO, image_url=st.builds(
                      ImageUrlDTO, url=words, detail=st.sampled_from(["auto", "low", "high"]))))
messages = st.builds(
    MessageDTO,
    role=st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
    content=st.one_of(st.none(), words, st.lists(parts, min_size=1, max_size=3)),
    name=st.none() | words,
    tool_calls=st.none() | st.lists(st.builds(ToolCallDTO, id=words, function=st.builds(
        FunctionCallDTO, name=words, arguments=words)), max_size=2),
    tool_call_id=st.none() | words,
)
requests = st.builds(
    ChatCompletionRequestDTO,
    model=words, messages=st.lists(messages, min_size=1, max_size=3),
    stream=st.none() | st.booleans(),
    stream_options=st.none() | st.builds(StreamOptionsDTO, include_usage=st.none() | st.booleans()),
    max_tokens=st.none() | st.integers(1, 10_000),
    temperature=st.none() | st.floats(0, 2),
    stop=st.none() | words | st.lists(words, min_size=1, max_size=4),
    tool_choice=st.none() | st.sampled_from(["none", "auto", "required"])
    | st.builds(NamedToolChoiceDTO, function=st.builds(NamedFunctionDTO, name=words)),
)


@given(requests)
def test_request_dto_round_trips_through_the_converter(dto: ChatCompletionRequestDTO) -> None:
    assert converter.structure(converter.unstructure(dto), ChatCompletionRequestDTO) == dto


def response_schema(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": SPEC["components"]})


completions = st.builds(
    Completion, id=words, created=st.integers(0, 2**31), model=words,
    text=st.none() | st.text(max_size=20), finish_reason=st.sampled_from(list(FinishReason)),
    usage=st.builds(Usage, prompt_tokens=st.integers(0, 10**6),
                    completion_tokens=st.integers(0, 10**6), cached_tokens=st.integers(0, 10)),
    tool_calls=st.lists(st.builds(ToolCall, id=words, name=words, arguments=words),
                        max_size=2).map(tuple),
)


@given(completions)
def test_every_completion_renders_to_the_contract_schema(completion: Completion) -> None:
    body: dict[str, Any] = ChatCodec(SPEC).completion(completion)
    response_schema("CreateChatCompletionResponse").validate(body)
    assert body["usage"]["total_tokens"] == completion.usage.total_tokens

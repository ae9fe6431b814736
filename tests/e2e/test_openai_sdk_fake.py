"""The official openai SDK against a real uvicorn process serving the fake engine."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture
def client(fake_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fake_server}/v1", api_key="unused", max_retries=0)


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "mlx-community/gemma-3-4b-it-4bit" in ids
    # the SDK percent-encodes the "/" in the id
    assert client.models.retrieve("mlx-community/gemma-3-4b-it-4bit").id == ids[0]


def test_chat_non_streaming_stream_and_helper(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hi"}]
    done = client.chat.completions.create(model="gemma", messages=messages)  # type: ignore[arg-type]
    assert done.choices[0].message.content in {"Hello from the fake engine.", "Second reply."}
    assert done.usage is not None and done.usage.completion_tokens > 0

    stream = client.chat.completions.create(model="gemma", messages=messages,  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text in {"Hello from the fake engine.", "Second reply."}
    assert text != done.choices[0].message.content  # the replies file cycles
    assert chunks[-1].usage is not None and chunks[-1].choices == []

    with client.chat.completions.stream(model="gemma", messages=messages) as helper:  # type: ignore[arg-type]
        final = helper.get_final_completion()
    assert final.choices[0].message.content == done.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"


def test_errors_surface_as_sdk_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gemma", messages=[])
    assert bad.value.param == "messages"

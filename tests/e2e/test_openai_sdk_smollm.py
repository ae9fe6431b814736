"""A real server process started the README's way (`python -m mlx_server --model smollm`), real
MLX inference on the built-in SmolLM2, and the official openai SDK as the client."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.conftest import sdk_client

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    cache = tmp_path_factory.mktemp("mlx-server-cache")
    with sdk_client(["--model", "smollm", "--cache-dir", str(cache)]) as client:
        yield client


def test_models_lists_the_builtin_as_loaded(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    smollm = models["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert smollm.model_extra is not None and smollm.model_extra["loaded"] is True
    assert {"mlx-community/gemma-3-4b-it-4bit", "mlx-community/Qwen3-VL-4B-Instruct-4bit"} <= set(models)


def test_chat_stream_non_stream_and_helper_agree(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="smollm", messages=QUESTION,  # type: ignore[arg-type]
                                          temperature=0, max_tokens=12)
    text = done.choices[0].message.content
    assert text is not None and "Paris" in text
    print(f"\nSmolLM2 via the SDK: {text!r}")

    stream = client.chat.completions.create(model="smollm", messages=QUESTION,  # type: ignore[arg-type]
                                            temperature=0, max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text

    with client.chat.completions.stream(model="smollm", messages=QUESTION,  # type: ignore[arg-type]
                                        temperature=0, max_tokens=12,
                                        stream_options={"include_usage": True}) as helper:
        final = helper.get_final_completion()
    assert final.choices[0].message.content == text
    assert final.usage is not None and final.usage.prompt_tokens == done.usage.prompt_tokens  # type: ignore[union-attr]

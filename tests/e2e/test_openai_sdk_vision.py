"""The openai SDK sends an image to a real server process; each tiny VLM answers it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import sdk_client
from tests.support.images import data_uri, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tiny_gemma3: Path, tiny_qwen3_vl: Path) -> Iterator[openai.OpenAI]:
    # local paths are servable only when the operator names them: --model, --models-dir
    with sdk_client(["--model", str(tiny_gemma3), "--fallback-model", "",
                     "--models-dir", str(tiny_qwen3_vl.parent)]) as client:
        yield client


@pytest.mark.parametrize("family", ["gemma3", "qwen3_vl"])
def test_sdk_image_request_is_answered(client: openai.OpenAI, family: str,
                                       request: pytest.FixtureRequest) -> None:
    model = str(request.getfixturevalue(f"tiny_{family}"))
    content = [{"type": "text", "text": "What is in this image?"},
               {"type": "image_url", "image_url": {"url": data_uri(png_bytes()), "detail": "low"}}]
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}],  # type: ignore[list-item]
        max_tokens=4, temperature=0)
    assert reply.model == model and reply.usage is not None
    assert reply.usage.prompt_tokens > 16 and reply.choices[0].finish_reason in {"stop", "length"}
    print(f"\n{family}: {reply.usage.prompt_tokens} prompt tokens, "
          f"{reply.choices[0].message.content!r}")

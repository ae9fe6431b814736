"""The legacy completions API on real MLX (SmolLM2): the raw prompt is not templated, and greedy
output is what mlx_vlm's own stream_generate gives for the same token ids."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.families import GENERIC
from mlx_server.domain.models import ModelRef
from tests.support.http import ConnectedTestClient

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
TOKENS = 4


@pytest.fixture(scope="module")
def client(smollm_dir: Path) -> falcon.testing.TestClient:
    catalog = StaticCatalog({"smollm": ModelRef("smollm", str(smollm_dir), GENERIC.name, 8192)})
    # the weights as mlx_vlm loads them (no CPU dequantization), so outputs compare exactly
    return ConnectedTestClient(build(Settings(), engine=MlxEngine(cpu_weights="keep"),
                                     catalog=catalog))


@pytest.fixture(scope="module")
def raw_mlx(smollm_dir: Path) -> Iterator[tuple[Any, Any]]:
    from mlx_vlm.utils import load

    model, processor = load(str(smollm_dir))
    yield model, processor


def post(client: falcon.testing.TestClient, path: str, **body: Any) -> dict[str, Any]:
    result = client.simulate_post(path, json={"model": "smollm", **body})
    assert result.status_code == 200, result.text
    return dict(result.json)


def test_the_raw_prompt_is_not_templated_and_greedy_output_is_mlx_vlms(
        client: falcon.testing.TestClient, raw_mlx: tuple[Any, Any]) -> None:
    import mlx.core as mx
    from mlx_vlm.generate import stream_generate

    model, processor = raw_mlx
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = tokenizer.encode(PROMPT)  # the tokenizer's own special tokens, no chat template
    done = post(client, "/v1/completions", prompt=PROMPT, max_tokens=TOKENS, temperature=0)
    assert done["usage"]["prompt_tokens"] == len(ids)
    chat = post(client, "/v1/chat/completions", messages=[{"role": "user", "content": PROMPT}],
                max_tokens=1, temperature=0)
    assert chat["usage"]["prompt_tokens"] > len(ids) + 5  # the template's turn markers

    expected = "".join(step.text for step in stream_generate(
        model, processor, "", input_ids=mx.array([ids]), max_tokens=TOKENS, temperature=0.0))
    choice = done["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (expected, "length")
    assert done["usage"]["completion_tokens"] == TOKENS


def test_streamed_logprobs_and_echo_on_the_real_model(client: falcon.testing.TestClient) -> None:
    done = post(client, "/v1/completions", prompt=PROMPT, max_tokens=2, temperature=0, logprobs=2)
    logprobs = done["choices"][0]["logprobs"]
    assert "".join(logprobs["tokens"]) == done["choices"][0]["text"]
    for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                                   logprobs["top_logprobs"], strict=True):
        assert len(top) <= 2 and logprob <= 0
        assert top[token] == pytest.approx(max(top.values()))  # greedy: the most likely
    echoed = post(client, "/v1/completions", prompt=PROMPT, max_tokens=2, temperature=0, echo=True)
    assert echoed["choices"][0]["text"] == PROMPT + done["choices"][0]["text"]


def test_a_raw_prompt_gets_the_bos_a_gemma_template_would_have_written(tiny_gemma3: Path) -> None:
    # Gemma's chat template writes <bos> itself (so the chat path adds no special tokens); a
    # raw prompt has no template, so the tokenizer's BOS goes in, once
    from mlx_server.domain.ports import PromptInput

    engine = MlxEngine(prefix_cache=False)
    engine.load(ModelRef("tiny-gemma3", str(tiny_gemma3), "gemma3", 4096, vision=True))
    try:
        tokenizer = engine._processor.tokenizer  # type: ignore[attr-defined]
        bos = tokenizer.bos_token_id
        for text in (PROMPT, tokenizer.bos_token + PROMPT):
            ids = engine.prepare(PromptInput((), raw=text)).payload["input_ids"][0].tolist()  # type: ignore[index]
            assert ids[0] == bos and ids[1] != bos
            assert ids == tokenizer.encode(PROMPT)
    finally:
        engine.unload()

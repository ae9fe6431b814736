"""The MLX engine through the real use case and HTTP layer: SmolLM2 (real weights) and the tiny
gemma3 / qwen3_vl checkpoints. Short prompts, few tokens: MLX's Linux CPU backend is slow."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build, build_service
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import ChatRequest, Message, Role, SamplingParams, TextPart
from mlx_server.domain.families import GEMMA3
from mlx_server.domain.models import ModelRef
from tests.support.http import ConnectedTestClient

pytestmark = pytest.mark.slow
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def catalog(real_catalog: StaticCatalog) -> StaticCatalog:
    return real_catalog


@pytest.fixture(scope="module")
def engine() -> MlxEngine:
    return MlxEngine()


@pytest.fixture(scope="module")
def client(engine: MlxEngine, catalog: StaticCatalog) -> falcon.testing.TestClient:
    settings = Settings(allow_private_image_urls=True)  # the tests' image server is on loopback
    return ConnectedTestClient(build(settings, engine=engine, catalog=catalog))


def chat(client: falcon.testing.TestClient, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={"temperature": 0, **body})


def streamed_text(result: falcon.testing.Result) -> tuple[str, list[dict[str, Any]]]:
    import json

    chunks = [json.loads(b[6:]) for b in result.text.split("\n\n") if b.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    return text, chunks


def test_smollm_answers_paris_and_streams_the_same_text(client: falcon.testing.TestClient,
                                                       smollm_dir: Path) -> None:
    done = chat(client, model="smollm", messages=PARIS, max_tokens=12).json
    text = done["choices"][0]["message"]["content"]
    assert "Paris" in text
    streamed, chunks = streamed_text(chat(client, model="smollm", messages=PARIS, max_tokens=12,
                                          stream=True, stream_options={"include_usage": True}))
    assert streamed == text
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert chunks[-1]["usage"][key] == done["usage"][key]
    # the same prompt again: the prefix cache reuses all of it but the last token
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] in (
        0, done["usage"]["prompt_tokens"] - 1)

    # usage is exact: the same prompt through mlx_vlm directly reports the same counts
    from mlx_vlm.generate import stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load

    model, processor = load(str(smollm_dir))
    prompt = apply_chat_template(processor, model.config, PARIS)
    raw = list(stream_generate(model, processor, prompt, max_tokens=12, temperature=0.0))
    assert "".join(r.text for r in raw) == text
    assert done["usage"]["prompt_tokens"] == raw[-1].prompt_tokens
    assert done["usage"]["completion_tokens"] == raw[-1].generation_tokens


def test_max_tokens_cuts_with_length(client: falcon.testing.TestClient) -> None:
    done = chat(client, model="smollm", messages=PARIS, max_tokens=2).json
    assert done["choices"][0]["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("model", ["gemma3", "qwen3"])
def test_tiny_vision_families_generate_through_the_adapter(client: falcon.testing.TestClient,
                                                           model: str) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": "Tell me more"}]
    done = chat(client, model=model, messages=messages, max_tokens=5).json
    assert done["usage"]["completion_tokens"] >= 1 and done["usage"]["prompt_tokens"] > 10
    assert done["choices"][0]["finish_reason"] in {"stop", "length"}


def test_template_rejection_is_a_400_not_a_500(client: falcon.testing.TestClient) -> None:
    # Gemma 3's own template insists on alternating user/assistant roles
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    result = chat(client, model="gemma3", messages=messages, max_tokens=2)
    assert result.status_code == 400 and result.json["error"]["param"] == "messages"


def ask(model: str) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message(Role.USER, (TextPart("Hi"),)),),
                       sampling=SamplingParams(temperature=0.0, max_tokens=2))


def test_swapping_releases_the_old_model(catalog: StaticCatalog) -> None:
    import mlx.core as mx

    engine = MlxEngine()
    service = build_service(Settings(), engine=engine, catalog=catalog)
    baseline = mx.get_active_memory()

    async def run(model: str) -> None:
        await service.complete(ask(model))

    asyncio.run(run("smollm"))
    smollm = weakref.ref(engine._model)
    loaded_bytes = mx.get_active_memory() - baseline
    assert loaded_bytes > 50_000_000  # SmolLM2's weights are really in memory
    for model in ("gemma3", "qwen3", "smollm"):
        asyncio.run(run(model))
        if model == "gemma3":
            gc.collect()
            assert smollm() is None  # nothing holds the first SmolLM2 any more
    # the engine is driven from the generation thread alone: a reply is out before that thread
    # has closed its generator (and saved the prefix-cache entry), so look from a job queued after
    assert asyncio.run(service.worker.call(lambda: engine.loaded)).id == "smollm"
    assert mx.get_active_memory() - baseline < 1.2 * loaded_bytes
    asyncio.run(service.worker.call(engine.unload))
    assert mx.get_active_memory() - baseline < 0.1 * loaded_bytes


def test_a_corrupt_checkpoint_is_503_and_the_server_keeps_serving(
        tmp_path: Path, smollm_dir: Path, tiny_gemma3: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_gemma3.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    catalog = StaticCatalog({"broken": ModelRef("broken", str(broken), GEMMA3.name),
                             "gemma3": ModelRef("tiny-gemma3", str(tiny_gemma3), GEMMA3.name)})
    client = ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=catalog))
    result = chat(client, model="broken", messages=PARIS, max_tokens=2)
    assert result.status_code == 503 and result.json["error"]["code"] == "model_unavailable"
    assert chat(client, model="gemma3", messages=PARIS, max_tokens=2).status_code == 200


def test_a_model_bigger_than_memory_is_refused_with_the_numbers(tiny_gemma3: Path) -> None:
    from mlx_server.adapters.mlx.engine import _check_fits
    from mlx_server.domain.errors import ModelUnavailable

    model = ModelRef("tiny-gemma3", str(tiny_gemma3), GEMMA3.name)
    _check_fits(model, available=10**9)  # 0.2 MB of weights fit in 1 GB
    with pytest.raises(ModelUnavailable, match=r"needs about 0\.0 GiB .* only 0\.0 GiB"):
        _check_fits(model, available=1000)

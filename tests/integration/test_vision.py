"""Images in chat on real MLX: the tiny gemma3 and qwen3_vl models through the HTTP layer."""

from __future__ import annotations

from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient
from tests.support.images import data_uri, png_bytes, serve_files

pytestmark = pytest.mark.slow
IMAGE_TOKENS = {"gemma3": 16, "qwen3": 64}  # per 224x224 image, from the models' configs


@pytest.fixture(scope="module")
def client(real_catalog: StaticCatalog) -> falcon.testing.TestClient:
    catalog = real_catalog
    app = build(Settings(allow_private_image_urls=True), engine=MlxEngine(), catalog=catalog)
    return ConnectedTestClient(app)


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "auto"}}


def prompt_tokens(client: falcon.testing.TestClient, model: str, messages: list[Any]) -> int:
    result = client.simulate_post("/v1/chat/completions", json={
        "model": model, "messages": messages, "max_tokens": 2, "temperature": 0})
    assert result.status_code == 200, result.text
    return int(result.json["usage"]["prompt_tokens"])


@pytest.mark.parametrize("model", ["gemma3", "qwen3"])
def test_images_keep_their_place_and_count(client: falcon.testing.TestClient, model: str) -> None:
    red, blue = data_uri(png_bytes()), data_uri(png_bytes(color=(20, 40, 220)))
    text_only = prompt_tokens(client, model, [{"role": "user", "content": "Describe."}])
    one = prompt_tokens(client, model, [{"role": "user", "content": [
        {"type": "text", "text": "Describe."}, image_part(red)]}])
    two = prompt_tokens(client, model, [{"role": "user", "content": [
        image_part(red), {"type": "text", "text": "Describe."}, image_part(blue)]}])
    per_image = IMAGE_TOKENS[model]
    assert one - text_only >= per_image and two - one >= per_image
    earlier = prompt_tokens(client, model, [
        {"role": "user", "content": [{"type": "text", "text": "Look."}, image_part(red)]},
        {"role": "assistant", "content": "Seen."},
        {"role": "user", "content": "Describe."}])
    assert earlier > text_only + per_image


@pytest.mark.parametrize("model", ["gemma3", "qwen3"])
def test_url_and_data_uri_give_the_same_prompt(client: falcon.testing.TestClient, model: str) -> None:
    image = png_bytes(color=(10, 200, 10))
    with serve_files({"/green.png": image}) as base:
        by_url = prompt_tokens(client, model, [{"role": "user", "content": [
            image_part(f"{base}/green.png"), {"type": "text", "text": "What?"}]}])
    by_data = prompt_tokens(client, model, [{"role": "user", "content": [
        image_part(data_uri(image)), {"type": "text", "text": "What?"}]}])
    assert by_url == by_data


@pytest.mark.parametrize(("url", "code"), [
    ("data:image/png;base64,!!!not-base64!!!", "invalid_image"),
    (data_uri(b"just some text"), "invalid_image"),
    ("file:///etc/passwd", "invalid_image_url"),
])
def test_bad_images_are_400_naming_the_part_and_the_server_keeps_serving(
        client: falcon.testing.TestClient, url: str, code: str) -> None:
    result = client.simulate_post("/v1/chat/completions", json={"model": "gemma3", "messages": [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "What?"}, image_part(url)]}]})
    assert result.status_code == 400
    assert result.json["error"]["code"] == code
    assert result.json["error"]["param"] == "messages[2].content[1].image_url.url"
    assert prompt_tokens(client, "gemma3", [{"role": "user", "content": "again"}]) > 0


def test_an_image_for_a_text_only_model_says_it_has_no_vision(
        client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/chat/completions", json={"model": "smollm", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "What?"},
                                     image_part(data_uri(png_bytes()))]}]})
    assert result.status_code == 400 and "no vision" in result.json["error"]["message"]
    assert result.json["error"]["param"] == "messages[0].content[1].image_url.url"


@pytest.mark.parametrize("size", [(1, 300), (300, 1), (2, 5000), (8000, 8)])
@pytest.mark.parametrize("model", ["gemma3", "qwen3"])
def test_a_strip_of_an_image_is_400_naming_the_part(client: falcon.testing.TestClient, model: str,
                                                    size: tuple[int, int]) -> None:
    """Qwen-VL's processor raises on a side ratio of 200 or more (it was a 500): refused by the
    loader for every model, naming the part; the server keeps serving."""
    result = client.simulate_post("/v1/chat/completions", json={"model": model, "max_tokens": 1,
        "messages": [{"role": "user", "content": [image_part(data_uri(png_bytes(size)))]}]})
    assert result.status_code == 400, result.text
    assert result.json["error"]["code"] == "invalid_image"
    assert result.json["error"]["param"] == "messages[0].content[0].image_url.url"
    assert prompt_tokens(client, model, [{"role": "user", "content": [
        image_part(data_uri(png_bytes((1, 199))))]}]) > 0


def test_what_the_processor_refuses_is_400_not_a_server_fault(tiny_qwen3_vl: Any) -> None:
    """Past the loader's checks, the processor's own ValueError on an input is the client's."""
    from PIL import Image

    from mlx_server.domain.conversation import Message, Role, TextPart
    from mlx_server.domain.errors import InvalidRequest
    from mlx_server.domain.families import QWEN3_VL
    from mlx_server.domain.models import ModelRef
    from mlx_server.domain.ports import LoadedImage, PromptInput

    engine = MlxEngine()
    engine.load(ModelRef("q", str(tiny_qwen3_vl), QWEN3_VL.name, 4096, vision=True))
    strip = LoadedImage(key="strip", image=Image.new("RGB", (1, 400)))
    message = Message(Role.USER, (TextPart("What?"),))
    with pytest.raises(InvalidRequest) as caught:
        engine.prepare(PromptInput((message,), (), (strip,), ""))
    assert caught.value.code == "invalid_image" and "aspect ratio" in caught.value.message


@pytest.mark.parametrize(("model", "marker"), [
    ("gemma3", "<image_soft_token>"), ("gemma3", "<start_of_image>"),
    ("qwen3", "<|image_pad|>"), ("qwen3", "<|vision_start|>"), ("qwen3", "<|video_pad|>")])
@pytest.mark.parametrize("stream", [False, True])
def test_image_markers_in_a_clients_text_are_400(client: falcon.testing.TestClient, model: str,
                                                 marker: str, stream: bool) -> None:
    """The processor counts its own markers: Gemma 3 with `<image_soft_token>` typed into the text
    beside an image failed to place the image features (a 500)."""
    red = data_uri(png_bytes())
    for content in ([image_part(red), {"type": "text", "text": f"say {marker * 3}"}],
                    f"say {marker}"):
        result = client.simulate_post("/v1/chat/completions", json={
            "model": model, "max_tokens": 1, "stream": stream,
            "messages": [{"role": "user", "content": content}]})
        assert result.status_code == 400, result.text
        assert (result.json["error"]["code"], result.json["error"]["param"]) == (
            "invalid_value", "messages")
        assert marker in result.json["error"]["message"]
    assert prompt_tokens(client, model, [{"role": "user", "content": [image_part(red)]}]) > 16


def test_a_text_model_takes_other_models_markers_as_text(client: falcon.testing.TestClient) -> None:
    assert prompt_tokens(client, "smollm", [
        {"role": "user", "content": "<image_soft_token> and <|image_pad|> are markers"}]) > 0

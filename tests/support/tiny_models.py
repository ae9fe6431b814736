"""Tiny random-weight gemma3 / qwen3_vl / qwen3 checkpoints that ``mlx_vlm.load`` reads offline.

The layout matches an ``mlx_vlm.convert -q`` output (4-bit affine language model, bf16 vision
tower/projector), with the real chat templates and special tokens. Builds are deterministic.
See /work/shared/notes/test-models.md for the measured facts behind the numbers below.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from tests.support.tiny_tokenizers import (
    QWEN_ADDED,
    QWEN_FIRST_ADDED_ID,
    write_gemma_tokenizer_files,
    write_json,
    write_qwen_tokenizer_files,
)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
SEED = 0
GEMMA_MM_TOKENS = 16
QUANT_GROUP_SIZE = 64
QUANT_BITS = 4
JsonDict = dict[str, Any]


def read_template(name: str) -> str:
    """The checked-in real chat template ("gemma3", "qwen3_vl", "qwen3_vl_thinking" or "qwen3"),
    byte-exact."""
    return (TEMPLATES_DIR / f"{name}_chat_template.jinja").read_bytes().decode("utf-8")


def _instantiate(config: JsonDict) -> Any:
    """mlx_vlm's own Model for ``config``, with seeded random init."""
    import mlx.core as mx
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    config = copy.deepcopy(config)  # qwen3_vl's TextConfig rewrites rope_scaling in place
    mx.random.seed(SEED)
    model_class, _ = get_model_and_args(config)
    model_config = model_class.ModelConfig.from_dict(config)
    modules = ["text", "vision", "perceiver", "projector", "audio"]
    model_config = update_module_configs(  # type: ignore[no-untyped-call]
        model_config, model_class, config, modules
    )
    return model_class.Model(model_config)


def _save_model(config: JsonDict, out_dir: Path, tie_lm_head: bool) -> None:
    """bf16 weights, 4-bit affine quantization like ``mlx_vlm.convert -q``, then save."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_vlm.quant_utils import quantize_model
    from mlx_vlm.utils import save_config, save_weights, skip_multimodal_module

    model = _instantiate(config)
    model.update(tree_map(_to_bf16, model.parameters()))
    if tie_lm_head:  # gemma3's sanitize replaces lm_head by embed_tokens at load time
        lm = model.language_model
        lm.lm_head.weight = lm.model.embed_tokens.weight
    model, config = quantize_model(
        model,
        config,
        QUANT_GROUP_SIZE,
        QUANT_BITS,
        mode="affine",
        quant_predicate=lambda path, _module: not skip_multimodal_module(path),
    )
    mx.eval(model.parameters())
    save_weights(out_dir, model)
    save_config(config, out_dir / "config.json")


def _to_bf16(value: Any) -> Any:
    import mlx.core as mx

    return value.astype(mx.bfloat16) if mx.issubdtype(value.dtype, mx.floating) else value


# --------------------------------------------------------------------------- gemma3


GEMMA3_TEXT_CONFIG: JsonDict = {
    "model_type": "gemma3_text",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
    "sliding_window": 512,
    "sliding_window_pattern": 2,  # must be <= num_hidden_layers
    "max_position_embeddings": 131072,
    "mm_tokens_per_image": GEMMA_MM_TOKENS,  # mlx_vlm reads it here, not at top level
}
GEMMA3_VISION_CONFIG: JsonDict = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,  # must be >= patch_size (sanitize's conv-layout heuristic)
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 14,
    "image_size": 112,  # 8x8 patches, pooled 2x2 -> 16 tokens per image
    "num_channels": 3,
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}


def gemma3_config(vocab_size: int) -> JsonDict:
    """config.json contents before quantization (ids as in the tiny tokenizer)."""
    return copy.deepcopy(
        {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "boi_token_index": 7,
            "eoi_token_index": 8,
            "image_token_index": vocab_size - 1,
            "eos_token_id": [1, 6],
            "initializer_range": 0.02,
            "mm_tokens_per_image": GEMMA_MM_TOKENS,
            "torch_dtype": "bfloat16",
            "text_config": {**GEMMA3_TEXT_CONFIG, "vocab_size": vocab_size},
            "vision_config": GEMMA3_VISION_CONFIG,
        }
    )


def _gemma3_processor_files(out_dir: Path) -> None:
    write_json(
        out_dir / "preprocessor_config.json",
        {
            "do_convert_rgb": None,
            "do_normalize": True,
            "do_pan_and_scan": None,
            "do_rescale": True,
            "do_resize": True,
            "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": GEMMA_MM_TOKENS,
            "image_std": [0.5, 0.5, 0.5],
            "pan_and_scan_max_num_crops": None,
            "pan_and_scan_min_crop_size": None,
            "pan_and_scan_min_ratio_to_activate": None,
            "processor_class": "Gemma3Processor",
            "resample": 2,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": 112, "width": 112},
        },
    )
    write_json(
        out_dir / "processor_config.json",
        {"image_seq_length": GEMMA_MM_TOKENS, "processor_class": "Gemma3Processor"},
    )
    write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": 2,
            "cache_implementation": "hybrid",
            "do_sample": True,
            "eos_token_id": [1, 6],
            "pad_token_id": 0,
            "top_k": 64,
            "top_p": 0.95,
        },
    )


def build_gemma3(out_dir: Path) -> Path:
    """Write a tiny 4-bit gemma3 checkpoint into ``out_dir``; return its absolute path."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    template = read_template("gemma3")
    vocab_size = write_gemma_tokenizer_files(out_dir, template)
    write_json(out_dir / "chat_template.json", {"chat_template": template})
    _gemma3_processor_files(out_dir)
    _save_model(gemma3_config(vocab_size), out_dir, tie_lm_head=True)
    return out_dir


# --------------------------------------------------------------------------- qwen3_vl


QWEN_IDS = {t: QWEN_FIRST_ADDED_ID + i for i, (t, _) in enumerate(QWEN_ADDED)}
QWEN3_VL_TEXT_CONFIG: JsonDict = {
    "model_type": "qwen3_vl_text",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 5_000_000,
    "rope_scaling": {  # mrope_section must sum to head_dim / 2
        "rope_type": "default",
        "mrope_interleaved": True,
        "mrope_section": [6, 5, 5],
    },
    "max_position_embeddings": 262144,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "dtype": "bfloat16",
    "bos_token_id": QWEN_IDS["<|endoftext|>"],
    "eos_token_id": QWEN_IDS["<|im_end|>"],
}
QWEN3_VL_VISION_CONFIG: JsonDict = {
    "model_type": "qwen3_vl",
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "out_hidden_size": 64,  # must equal the text hidden_size
    "in_channels": 3,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "num_position_embeddings": 256,  # must be a perfect square
    "deepstack_visual_indexes": [0, 1],
    "hidden_act": "gelu_pytorch_tanh",
    "initializer_range": 0.02,
}


def qwen3_vl_config(vocab_size: int) -> JsonDict:
    """config.json contents before quantization (ids as in the tiny tokenizer)."""
    return copy.deepcopy(
        {
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "model_type": "qwen3_vl",
            "image_token_id": QWEN_IDS["<|image_pad|>"],
            "video_token_id": QWEN_IDS["<|video_pad|>"],
            "vision_start_token_id": QWEN_IDS["<|vision_start|>"],
            "vision_end_token_id": QWEN_IDS["<|vision_end|>"],
            "tie_word_embeddings": True,
            "torch_dtype": "bfloat16",
            "text_config": {**QWEN3_VL_TEXT_CONFIG, "vocab_size": vocab_size},
            "vision_config": QWEN3_VL_VISION_CONFIG,
        }
    )


def _qwen3_vl_processor_files(out_dir: Path) -> None:
    common = {
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "Qwen3VLProcessor",
    }
    write_json(
        out_dir / "preprocessor_config.json",
        {
            "size": {"longest_edge": 16777216, "shortest_edge": 65536},
            **common,
            "image_processor_type": "Qwen2VLImageProcessorFast",
        },
    )
    write_json(
        out_dir / "video_preprocessor_config.json",
        {
            "size": {"longest_edge": 25165824, "shortest_edge": 4096},
            **common,
            "video_processor_type": "Qwen3VLVideoProcessor",
        },
    )
    write_json(out_dir / "processor_config.json", {"processor_class": "Qwen3VLProcessor"})
    write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": QWEN_IDS["<|endoftext|>"],
            "pad_token_id": QWEN_IDS["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [QWEN_IDS["<|im_end|>"], QWEN_IDS["<|endoftext|>"]],
            "top_k": 20,
            "top_p": 0.8,
            "repetition_penalty": 1.0,
            "temperature": 0.7,
        },
    )


def build_qwen3_vl(out_dir: Path, template_name: str = "qwen3_vl") -> Path:
    """Write a tiny 4-bit qwen3_vl checkpoint into ``out_dir``; return its absolute path.
    `template_name` "qwen3_vl_thinking": the same model with the Qwen3-VL Thinking template."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    template = read_template(template_name)
    vocab_size = write_qwen_tokenizer_files(out_dir, template)
    write_json(out_dir / "chat_template.json", {"chat_template": template})
    _qwen3_vl_processor_files(out_dir)
    _save_model(qwen3_vl_config(vocab_size), out_dir, tie_lm_head=False)
    return out_dir


# --------------------------------------------------------------------------- qwen3 (text)


def qwen3_config(vocab_size: int) -> JsonDict:
    """config.json contents before quantization: Qwen/Qwen3-4B's fields, tiny sizes (those of
    the tiny Qwen3-VL's text model; its 40960-token context, ids as in the tiny tokenizer). No
    text_config: a text-only model."""
    shared = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "rms_norm_eps",
              "tie_word_embeddings", "attention_bias", "bos_token_id", "eos_token_id")
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            **{key: QWEN3_VL_TEXT_CONFIG[key] for key in shared},
            "rope_theta": 1_000_000.0, "rope_scaling": None, "max_position_embeddings": 40960,
            "torch_dtype": "bfloat16", "vocab_size": vocab_size}


def build_qwen3(out_dir: Path) -> Path:
    """Write a tiny 4-bit qwen3 (text) checkpoint into ``out_dir``; return its absolute path.

    The files of Qwen/Qwen3-4B's folder that mlx_vlm reads: config, generation config and the
    tokenizer (same added tokens as Qwen3-VL's, with <think>/</think> and <tool_response>) with
    the real hybrid-thinking chat template (see templates/SOURCES.md). No processor files."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = write_qwen_tokenizer_files(out_dir, read_template("qwen3"), max_length=131072)
    write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": QWEN_IDS["<|endoftext|>"],
            "pad_token_id": QWEN_IDS["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [QWEN_IDS["<|im_end|>"], QWEN_IDS["<|endoftext|>"]],
            "temperature": 0.6,
            "top_k": 20,
            "top_p": 0.95,
        },
    )
    _save_model(qwen3_config(vocab_size), out_dir, tie_lm_head=False)
    return out_dir

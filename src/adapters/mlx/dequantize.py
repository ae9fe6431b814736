"""CPU only: replace quantized layers by float32 dense ones at load (``--cpu-weights``).

MLX's CPU ``quantized_matmul`` kernel is a plain loop, while a float32 matmul is served by an
optimized BLAS (see ``app/process.py``), an order of magnitude faster. float16/bfloat16 are no
help on the CPU: MLX does not send them to BLAS (slower than float32 even on the reference BLAS),
so the dense weights are float32. On Metal and CUDA the quantized kernels are the fast path:
nothing is changed there. (The measured figures: bench/RESULTS.md, "Figures formerly in code
comments".)
"""

from __future__ import annotations

import logging
from typing import Any

from ..host import Host

__all__ = ["MODES", "dequantize_for_cpu"]

log = logging.getLogger(__name__)

MODES = ("auto", "dequantize", "keep")
AUTO_MEMORY_FRACTION = 0.25  # auto dequantizes when the float32 weights fit in this share
_SKIP = ("vision", "visual", "audio", "multi_modal_projector", "mm_projector")


def dequantize_for_cpu(model: Any, mode: str = "auto", *,
                       available_bytes: int | None = None) -> str:
    """Dequantize ``model``'s language-model quantized layers to float32, per ``mode``.

    ``auto``: on the CPU device, when the float32 size is below a quarter of the memory
    available (``available_bytes`` overrides the reading of /proc/meminfo and the cgroup limit);
    ``dequantize``: on the CPU device, always; ``keep``: never. Vision and audio towers are left
    as they are. Returns one line for the log, e.g.
    ``"dequantized 211 layers to float32: 540 MB (was 98 MB)"``.
    """
    import importlib

    mx: Any = importlib.import_module("mlx.core")
    nn: Any = importlib.import_module("mlx.nn")  # (mlx ships no type stubs for its layers)

    if mode not in MODES:
        raise ValueError(f"cpu weights mode must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "keep":
        return "kept quantized weights (--cpu-weights keep)"
    device = _accelerator(mx)
    if device is not None:
        return f"kept quantized weights ({device}: quantized kernels are the fast path)"

    from mlx.utils import tree_map_with_path

    language = getattr(model, "language_model", None)
    root = model if language is None else language
    quantized = (nn.QuantizedLinear, nn.QuantizedEmbedding)
    targets = [module for name, module in root.named_modules()
               if isinstance(module, quantized) and not any(part in name for part in _SKIP)]
    if not targets:
        return "no quantized layers: weights as loaded"
    dense = sum(_dense_bytes(module) for module in targets)
    packed = sum(_packed_bytes(module) for module in targets)
    if mode == "auto":
        available = Host().available_memory_bytes() if available_bytes is None else available_bytes
        if available is not None and dense > AUTO_MEMORY_FRACTION * available:
            return (f"kept quantized weights: float32 would take {_mb(dense)}, more than "
                    f"{AUTO_MEMORY_FRACTION:.0%} of the {_mb(available)} available "
                    "(--cpu-weights dequantize forces it)")

    bits = "/".join(str(b) for b in sorted({int(module.bits) for module in targets}))
    chosen = {id(module) for module in targets}
    replaced: list[Any] = []

    def swap(_path: str, module: Any) -> Any:
        if id(module) not in chosen:
            return module
        replaced.append(_dense(module, mx, nn))
        return replaced[-1]

    # the pattern nn.quantize uses: map the leaf modules, then update the tree in place
    root.update_modules(tree_map_with_path(swap, root.leaf_modules(), is_leaf=nn.Module.is_module))
    mx.eval([layer.parameters() for layer in replaced])  # now, not lazily at the first request
    count = len(replaced)
    targets.clear()  # the quantized layers: their buffers go back to MLX's cache, then the OS
    chosen.clear()
    mx.clear_cache()
    return (f"dequantized {count} {bits}-bit layers to float32: {_mb(dense)} "
            f"(was {_mb(packed)})")


def _accelerator(mx: Any) -> str | None:
    """'metal' / 'cuda' when MLX runs on (or could run on) a GPU; None on a CPU-only build."""
    if mx.default_device().type == mx.gpu:
        return "gpu device"
    if mx.metal.is_available():
        return "metal available"
    cuda = getattr(mx, "cuda", None)
    if cuda is not None and cuda.is_available():
        return "cuda available"
    return None


def _dense(module: Any, mx: Any, nn: Any) -> Any:
    weight = mx.dequantize(module["weight"], scales=module["scales"], biases=module.get("biases"),
                           group_size=module.group_size, bits=module.bits, mode=module.mode,
                           dtype=mx.float32)
    if isinstance(module, nn.QuantizedEmbedding):
        layer = nn.Embedding(*weight.shape)  # as_linear() then runs x @ W.T through BLAS
        layer.weight = weight
    else:
        out_dims, in_dims = weight.shape
        layer = nn.Linear(in_dims, out_dims, bias="bias" in module)
        layer.weight = weight
        if "bias" in module:
            layer.bias = module["bias"].astype(mx.float32)
    if getattr(module, "_training", True) is False or not module.trainable_parameters():
        layer.freeze()
    return layer


def _dense_bytes(module: Any) -> int:
    rows, packed_cols = module["weight"].shape
    return int(rows * packed_cols * 32 // int(module.bits) * 4)


def _packed_bytes(module: Any) -> int:
    return sum(int(module[key].nbytes) for key in ("weight", "scales", "biases")
               if module.get(key) is not None)


def _mb(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"

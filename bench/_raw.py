"""Raw in-process baseline for ``python -m bench``: ``mlx_vlm.stream_generate`` in a subprocess started
the way the server starts (``prepare_process()`` re-execs with OpenBLAS preloaded before MLX loads,
then ``dequantize_for_cpu(model, "auto")``), so server ÷ raw compares like with like.

Protocol: one JSON command per stdin line, one JSON answer per stdout line.
  {"messages": [...], "max_tokens": N}  ->  {"ttft_s", "decode_tps", "prompt_tokens", "generated", "text"}
  {"op": "quit"}

Also: ``python -m bench._raw --float-copy SRC DST`` writes SRC with its quantized layers dequantized
to float32 (the weights the server runs on CPU), so the peer server can be given the same weights.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, cast

from ._fastpath import blas_in_use, prepare

prepare()  # re-exec (same pid) with the server's loader environment; no-op once active


def _copy_config(source: Path, target: Path) -> None:
    """Every file but the weights; config.json without its quantization."""
    for item in source.iterdir():
        if item.suffix != ".safetensors" and item.name != "model.safetensors.index.json" and item.is_file():
            shutil.copy(item, target / item.name)
    config = json.loads((source / "config.json").read_text())
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    (target / "config.json").write_text(json.dumps(config, indent=2))


def _float_copy(src: str, dst: str) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.utils import load

    from mlx_server.adapters.mlx.dequantize import dequantize_for_cpu

    source, target = Path(src), Path(dst)
    target.mkdir(parents=True, exist_ok=True)
    model, _ = load(str(source))
    dequantize_for_cpu(model, "dequantize")
    _copy_config(source, target)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(target / "model.safetensors"), weights, metadata={"format": "mlx"})
    print(json.dumps({"path": str(target), "tensors": len(weights)}))


def _generate(model: Any, processor: Any, command: dict[str, Any]) -> dict[str, Any]:
    from mlx_vlm.generate import stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template

    prompt = cast(str, apply_chat_template(processor, model.config, command["messages"]))
    start = time.perf_counter()
    first = None
    last = None
    text = ""
    for result in stream_generate(model, processor, prompt, max_tokens=command["max_tokens"],
                                  temperature=0.0):
        if first is None and result.text:
            first = time.perf_counter() - start
        text += result.text
        last = result
    assert last is not None
    return {"ttft_s": first if first is not None else time.perf_counter() - start,
            "decode_tps": last.generation_tps, "prompt_tokens": last.prompt_tokens,
            "generated": last.generation_tokens, "text": text}


def _serve(model_dir: str) -> None:
    import mlx.core as mx
    from mlx_vlm.utils import load

    from mlx_server.adapters.mlx.dequantize import dequantize_for_cpu

    model, processor = load(model_dir)
    weights = dequantize_for_cpu(model, "auto")
    print(json.dumps({"ready": True, "blas": blas_in_use(), "weights": weights,
                      "device": str(mx.default_device())}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        print(json.dumps(_generate(model, processor, command)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--float-copy":
        _float_copy(sys.argv[2], sys.argv[3])
    else:
        _serve(sys.argv[1])

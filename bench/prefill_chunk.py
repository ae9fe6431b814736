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

from mlx_server.adapters.cpu_fastpath import ensure_fast_blas


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--sizes", default="128,256,512,2048")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ensure_fast_blas()  # before mlx is imported

    from mlx_server.adapters.mlx.engine import MlxEngine
    from mlx_server.domain.conversation import Message, Role, SamplingParams, TextPart
    from mlx_server.domain.models import Family, ModelRef
    from mlx_server.domain.ports import PromptInput

    from ._common import smollm_dir

    sizes = [int(size) for size in args.sizes.split(",")]
    engines = {size: MlxEngine(prefix_cache=False, prefill_chunk=size) for size in sizes}
    ref = ModelRef("smollm", str(smollm_dir()), Family.GENERIC, 8192)
    first = engines[sizes[0]]
    first.load(ref)
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * (args.tokens // 10))
    prompt = first.prepare(PromptInput((Message(Role.USER, (TextPart(text),)),)))
    for engine in engines.values():  # one model in memory, shared: only the chunk size differs
        engine._model, engine._processor, engine._ref = first._model, first._processor, ref
    params = SamplingParams(temperature=0.0, max_tokens=1)
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:
            started = time.perf_counter()
            for _step in engines[size].generate(prompt, params):
                pass
            seconds[size].append(time.perf_counter() - started)
    base = statistics.median(seconds[2048]) if 2048 in seconds else None
    print(f"prefill of {prompt.token_count} tokens, SmolLM2, median of {args.rounds}")
    print("chunk  tokens/s  s per chunk (mean)  time vs 2048")
    for size in sizes:
        median = statistics.median(seconds[size])
        notice = median * min(size, prompt.token_count) / prompt.token_count
        ratio = f"{median / base:.2f}" if base else "-"
        print(f"{size:5d}  {prompt.token_count / median:8.1f}  {notice:18.2f}  {ratio:>12}")


if __name__ == "__main__":
    main()

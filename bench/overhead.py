"""Decode tokens/s seen by an SDK client over HTTP SSE vs raw mlx_vlm.stream_generate, same prompt,
same max tokens, temperature 0, on SmolLM2. Run: python -m bench.overhead [--runs 3] [--tokens 64]"""

from __future__ import annotations

import argparse
import signal
import statistics
import time
from typing import Any, cast

import openai

from ._common import smollm_dir, start_server

MESSAGES = [{"role": "user", "content": "Write a long story about a robot who learns to paint."}]


def raw_decode_tps(tokens: int) -> tuple[float, int]:
    from mlx_vlm.generate import stream_generate
    from mlx_vlm.prompt_utils import apply_chat_template
    from mlx_vlm.utils import load

    model, processor = load(str(smollm_dir()))
    prompt = cast(str, apply_chat_template(processor, model.config, MESSAGES))
    last = None
    for result in stream_generate(model, cast(Any, processor), prompt, max_tokens=tokens, temperature=0.0):
        last = result
    assert last is not None
    return last.generation_tps, last.generation_tokens


def server_decode_tps(client: openai.OpenAI, tokens: int) -> tuple[float, int]:
    stream = client.chat.completions.create(model="smollm", messages=cast(Any, MESSAGES),
                                            temperature=0, max_tokens=tokens, stream=True,
                                            stream_options={"include_usage": True})
    first = last = 0.0
    generated = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        if chunk.usage:
            generated = chunk.usage.completion_tokens
    # tokens after the first one, over the time they took: the same definition as mlx_vlm's
    return (generated - 1) / (last - first), generated


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    process, base = start_server("--model", "smollm")
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    served, raw = [], []
    try:
        server_decode_tps(client, 4)  # warm-up
        for _ in range(args.runs):  # alternate, so drift on a noisy machine hits both sides
            served.append(server_decode_tps(client, args.tokens)[0])
            process.send_signal(signal.SIGSTOP)  # the idle server must not share the cores
            raw.append(raw_decode_tps(args.tokens)[0])
            process.send_signal(signal.SIGCONT)
    finally:
        process.terminate()
    ours, theirs = statistics.median(served), statistics.median(raw)
    print(f"decode tokens/s over {args.runs} runs of {args.tokens} tokens (median)")
    print(f"  server (openai SDK, SSE): {ours:7.2f}")
    print(f"  raw stream_generate:      {theirs:7.2f}")
    print(f"  ratio server / raw:       {ours / theirs:7.3f}")


if __name__ == "__main__":
    main()

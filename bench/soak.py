"""A bounded soak over loopback: mixed requests from concurrent clients against one server, two
models so swaps happen, some streams cancelled mid-way. Not part of the test run.

Run: python -m bench.soak [--requests 500] [--clients 4] [--cancel 0.1] [--tokens 8]
Reports the 5xx count (target 0), latency p50/p99, and the server's RSS after the first swap and
after the last (ratio target <= 1.1).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ._common import start_server


def server_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_request(base: str, model: str, stream: bool, cancel: bool, tokens: int) -> tuple[int, float]:
    # a stream to be cancelled asks for many tokens, so its client really leaves mid-generation
    body = {"model": model, "max_tokens": 256 if cancel else tokens, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": f"Say something about {random.random():.3f}."}]}
    started = time.monotonic()
    if not stream:
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300)
        return response.status_code, time.monotonic() - started
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as response:
        for index, _ in enumerate(response.iter_lines()):
            if cancel and index >= 2:
                break  # the client goes away mid-stream
        return response.status_code, time.monotonic() - started


def main() -> None:
    from tests.support.tiny_models import build_gemma3

    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--cancel", type=float, default=0.1)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    gemma = str(build_gemma3(Path(tempfile.mkdtemp()) / "gemma3"))
    models = ["smollm", gemma]
    process, base = start_server("--model", "smollm", "--max-queue", str(args.clients * 2))
    rng = random.Random(20261125)
    # a cancelled request is a stream its client leaves after the first chunk
    plan = [(rng.choice(models), rng.random() < 0.5 or cancel, cancel)
            for cancel in (rng.random() < args.cancel for _ in range(args.requests))]
    results: list[tuple[int, float]] = []
    samples: list[tuple[str, float]] = []  # (loaded model, server RSS) after each request
    lock = threading.Lock()

    def client(jobs: list[tuple[str, bool, bool]]) -> None:
        for model, stream, cancel in jobs:
            outcome = one_request(base, model, stream, cancel, args.tokens)
            loaded = str(httpx.get(f"{base}/health", timeout=30).json().get("model"))
            with lock:
                results.append(outcome)
                samples.append((loaded, server_rss_mb(process.pid)))

    started = time.monotonic()
    try:
        threads = [threading.Thread(target=client, args=(plan[i::args.clients],))
                   for i in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=3600)
        metrics = httpx.get(f"{base}/metrics", timeout=30).text
    finally:
        process.terminate()
    latencies = sorted(seconds for _, seconds in results)
    errors = sum(1 for status, _ in results if status >= 500)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"{len(results)} requests from {args.clients} clients in {time.monotonic() - started:.0f} s"
          f" ({args.cancel:.0%} of requests cancelled mid-stream)")
    print(f"  5xx: {errors}   statuses: {sorted({status for status, _ in results})}")
    stopped = [line for line in metrics.splitlines()
               if line.startswith("mlx_server_cancellations_total{")]
    print(f"  cancelled {sum(1 for _, _, cancel in plan if cancel)} streams; the server counted: "
          + (", ".join(line.split("{", 1)[1] for line in stopped) or "none"))
    print(f"  latency p50 {statistics.median(latencies):.3f} s, p99 {p99:.3f} s")
    # compare like with like: the same model loaded, each time right after it was swapped back in
    # (a swap clears MLX's buffer cache, so these samples hold the model and one request's buffers)
    swapped_back = [r for i, (m, r) in enumerate(samples)
                    if i and m == samples[0][0] and samples[i - 1][0] != m] or [samples[0][1]]
    swaps = sum(1 for a, b in itertools.pairwise(samples) if a[0] != b[0])
    quartiles = [swapped_back[min(len(swapped_back) - 1, len(swapped_back) * q // 4)]
                 for q in range(5)]
    print(f"  {swaps} swaps; server RSS with {samples[0][0].split('/')[-1]} just swapped back in, "
          f"first/25%/50%/75%/last of {len(swapped_back)}: "
          + " ".join(f"{r:.0f}" for r in quartiles) + f" MB, ratio last/first "
          f"{swapped_back[-1] / swapped_back[0]:.3f}; at the very end {samples[-1][1]:.0f} MB")

if __name__ == "__main__":
    main()

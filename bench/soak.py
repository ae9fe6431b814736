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
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ._common import rss_mb, start_server, tiny_model

SEED = 20261125
Job = tuple[str, bool, bool]  # model, stream, cancel


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


def plan(models: list[str], requests: int, cancel_share: float) -> list[Job]:
    """A cancelled request is a stream its client leaves after the first chunk."""
    rng = random.Random(SEED)
    return [(rng.choice(models), rng.random() < 0.5 or cancel, cancel)
            for cancel in (rng.random() < cancel_share for _ in range(requests))]


@dataclass
class Soak:
    base: str
    process: subprocess.Popen[bytes]
    tokens: int
    results: list[tuple[int, float]] = field(default_factory=list)
    samples: list[tuple[str, float]] = field(default_factory=list)  # (loaded model, server RSS) after each
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, jobs: list[Job]) -> None:
        for model, stream, cancel in jobs:
            outcome = one_request(self.base, model, stream, cancel, self.tokens)
            loaded = str(httpx.get(f"{self.base}/health", timeout=30).json().get("model"))
            with self.lock:
                self.results.append(outcome)
                self.samples.append((loaded, rss_mb(self.process.pid)))

    def run(self, jobs: list[Job], clients: int) -> str:
        """Every job, spread over ``clients`` threads; the server's /metrics afterwards."""
        threads = [threading.Thread(target=self.client, args=(jobs[i::clients],)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=3600)
        return httpx.get(f"{self.base}/metrics", timeout=30).text


def report_requests(soak: Soak, jobs: list[Job], args: argparse.Namespace, metrics: str, took: float) -> None:
    results = soak.results
    latencies = sorted(seconds for _, seconds in results)
    errors = sum(1 for status, _ in results if status >= 500)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    print(f"{len(results)} requests from {args.clients} clients in {took:.0f} s"
          f" ({args.cancel:.0%} of requests cancelled mid-stream)")
    print(f"  5xx: {errors}   statuses: {sorted({status for status, _ in results})}")
    stopped = [line for line in metrics.splitlines()
               if line.startswith("mlx_server_cancellations_total{")]
    print(f"  cancelled {sum(1 for _, _, cancel in jobs if cancel)} streams; the server counted: "
          + (", ".join(line.split("{", 1)[1] for line in stopped) or "none"))
    print(f"  latency p50 {statistics.median(latencies):.3f} s, p99 {p99:.3f} s")


def report_rss(samples: list[tuple[str, float]]) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--cancel", type=float, default=0.1)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    models_dir = Path(tempfile.mkdtemp())
    gemma = str(tiny_model("gemma3", models_dir / "gemma3"))
    process, base = start_server("--model", "smollm", "--max-queue", str(args.clients * 2),
                                 "--models-dir", str(models_dir))  # other local paths are refused
    jobs = plan(["smollm", gemma], args.requests, args.cancel)
    soak = Soak(base, process, args.tokens)
    started = time.monotonic()
    try:
        metrics = soak.run(jobs, args.clients)
    finally:
        process.terminate()
    report_requests(soak, jobs, args, metrics, time.monotonic() - started)
    report_rss(soak.samples)


if __name__ == "__main__":
    main()

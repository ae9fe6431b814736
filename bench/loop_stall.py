"""How long the event loop stalls while one large request body is read, decoded and validated.

A ticker wakes every 10 ms on the server's own event loop (in process, fake engine) while one
chat request with N short messages runs; the longest gap past 10 ms is the stall every other
connection (`/health` included) would have seen. Printed beside the request's own duration, as a
ratio: the body's work is proportional to its size and must run off the loop, so the ratio stays
small however large the body is.

Run: python -m bench.loop_stall [--messages 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any, cast

import falcon.testing

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings

TICK = 0.01


async def measure(messages: int) -> tuple[float, float, int]:
    body = json.dumps({"model": "gemma", "max_tokens": 2, "messages": [
        {"role": "user", "content": "hello there"}] * messages}).encode()
    app = build(Settings(engine="fake"), engine=FakeEngine())
    worst, done = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            started = time.perf_counter()
            await asyncio.sleep(TICK)
            worst = max(worst, time.perf_counter() - started - TICK)

    async with falcon.testing.ASGIConductor(app) as conductor:
        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        result = await conductor.simulate_post(
            "/v1/chat/completions", body=body, host="localhost",
            headers={"content-type": "application/json"}, _stream_result=True)
        await cast(Any, result)._task  # the app finished its answer (falcon's private task)
        took = time.perf_counter() - started
        done = True
        await task
    return worst, took, len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    stall, took, size = asyncio.run(measure(args.messages))
    print(f"{args.messages} messages ({size / 2**20:.1f} MiB): request {took:.2f} s, "
          f"longest event-loop stall {stall:.3f} s, stall / request = {stall / took:.3f}")


if __name__ == "__main__":
    main()

"""The swap row: one server, model A (the benchmark's) and B (a tiny VLM, preloaded), 1-token
requests alternating A and B: the B→A leg against A's first load, and RSS after the swaps."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ._common import tiny_model
from .harness import Server, only, start_ours
from .results import Bench, progress, summary


@dataclass
class _Legs:
    cold: float  # first load of A in this process (B, the tiny VLM, was preloaded)
    away: list[float] = field(default_factory=list)  # A -> B (the tiny VLM: its processor load dominates)
    back: list[float] = field(default_factory=list)  # B -> A: the time to have A serving again after a swap
    rss_first: float = float("nan")
    rss_last: float = float("nan")


def _ask(server: Server, model_id: str) -> float:
    start = time.perf_counter()
    server.client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}],
                                          temperature=0, max_tokens=1)
    return time.perf_counter() - start


def _swap(server: Server, model: str, tiny_id: str, swaps: int, budget: float) -> _Legs:
    legs = _Legs(cold=_ask(server, model))
    deadline = time.monotonic() + budget
    for index in range(swaps // 2):
        if index and time.monotonic() > deadline:
            break
        legs.away.append(_ask(server, tiny_id))
        legs.back.append(_ask(server, model))
        if index == 0:
            legs.rss_first = server.rss_mb()
        legs.rss_last = server.rss_mb()
    return legs


def _put(bench: Bench, legs: _Legs) -> None:
    rounds = [x + y for x, y in zip(legs.away, legs.back, strict=True)]
    bench.put("swap_time", "ours", legs.back, cold_load_s=legs.cold, a_to_b=summary(legs.away),
              round_trip=summary(rounds))
    bench.put("swap_rss", "ours", [legs.rss_last / legs.rss_first] if rounds else [],
              rss_first_mb=legs.rss_first, rss_last_mb=legs.rss_last, swaps=2 * len(rounds))


def row_swap(bench: Bench, model: str, swaps: int) -> None:
    progress("row swap")
    tiny = tiny_model("gemma3", Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "gemma3")
    server = start_ours("swap", str(tiny), "--fallback-model", "")
    bench.procs.append(server)
    try:
        with only(server, bench.procs):
            legs = _swap(server, model, str(tiny), swaps, bench.opts.row_budget * 2)
        _put(bench, legs)
    finally:
        server.stop()
        bench.procs.remove(server)

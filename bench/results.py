"""What ``python -m bench`` was asked to do (Options) and what it measured (Bench): medians with
min–max, the progress line, and the bounded run loop every row uses."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import Proc

ROWS = ("decode", "ttft", "health", "multiturn", "interleaved", "swap")
QUICK_ROWS = ("decode",)

Stat = dict[str, Any]  # summary() plus the row's extra fields, as written to --json


@dataclass
class Options:
    """The command line (bench/__main__.py ARGUMENTS), in its order: the --json "args" object keeps it."""

    model: str
    runs: int
    tokens: int
    long_tokens: int
    swaps: int
    row_budget: float
    rows: list[str]
    no_peer: bool
    json: Path | None
    quick: bool


def summary(values: list[float]) -> Stat | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def fmt(stat: Stat | None, scale: float = 1.0, digits: int = 2) -> str:
    if not stat:
        return "-"
    med, low, high = (stat[k] * scale for k in ("median", "min", "max"))
    if stat["n"] == 1:
        return f"{med:.{digits}f} (n=1)"
    return f"{med:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def ratio(a: Stat | None, b: Stat | None) -> float | None:
    if not a or not b or not b["median"]:
        return None
    return float(a["median"] / b["median"])


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bounded_runs(runs: int, budget: float) -> Iterator[int]:
    """Up to ``runs`` indices; none after the first once ``budget`` seconds have passed."""
    start = time.monotonic()
    for index in range(runs):
        if index and time.monotonic() - start > budget:
            return
        yield index


class Bench:
    """Results by row and side ("ours", "peer", "raw"), the notes under the table, the processes."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.results: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.procs: list[Proc] = []

    def put(self, row: str, side: str, values: Sequence[float | None], **extra: Any) -> None:
        measured = [v for v in values if v is not None]
        self.results.setdefault(row, {})[side] = {**(summary(measured) or {}), **extra} if values else None

    def get(self, row: str, side: str) -> Stat | None:
        stat: Stat | None = self.results.get(row, {}).get(side)
        return stat if stat and "median" in stat else None

    def runs(self) -> Iterator[int]:
        return bounded_runs(self.opts.runs, self.opts.row_budget)

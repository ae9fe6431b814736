"""The table ``python -m bench`` prints (markdown) and the rows of its --json, from a Bench."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .results import Bench, Stat, fmt, ratio

SIDES = ("ours", "peer", "raw")
HEADER = ["row", "ours", "peer", "raw", "ratio ours", "ratio peer", "target", "ours meets"]
MEETS = {True: "yes", False: "**no**", None: "-"}

# how a row's ratio columns are computed: each side over raw, cached over cold (each side), the
# side's own median (a ratio already), the swap leg over the cold load (ours), or none
RatioOf = Literal["raw", "cached/cold", "median", "swap/cold", "none"]


@dataclass(frozen=True)
class Spec:
    label: str
    key: str
    target: str
    ratio_of: RatioOf = "raw"
    digits: int = 2
    check: Callable[[float], bool] | None = None  # applied to ours' ratio ("ours meets")


def specs(bench: Bench) -> list[Spec]:
    r = bench.results
    long_row = r.get("ttft_long", {})
    long_tokens = (long_row.get("raw") or long_row.get("ours") or {}).get("prompt_tokens")
    history = r.get("multiturn_cached", {}).get("history_tokens")
    swaps = (r.get("swap_rss", {}).get("ours") or {}).get("swaps")
    return [
        Spec("decode tok/s (SSE vs stream_generate)", "decode", "ours/raw ≥ 0.97", check=lambda v: v >= 0.97),
        Spec("TTFT short prompt, s", "ttft_short", "ours/raw (report)", digits=3),
        Spec(f"TTFT long prompt ({long_tokens or '?'} tokens), s", "ttft_long", "ours/raw (report)"),
        Spec(f"turn-6 TTFT ({history} tok history), prefix cache on, s", "multiturn_cached",
             "cached/cold ≤ 0.1", "cached/cold", 3, lambda v: v <= 0.1),
        Spec("turn-6 TTFT, cold (no cache), s", "multiturn_cold", "(denominator)", "none"),
        Spec("interleaved ×4: cache hit ratio", "interleaved_hit", "≥ 0.9", "median", 3, lambda v: v >= 0.9),
        Spec("A→B→A: the B→A leg (1-token request), s", "swap_time", "swap/cold ≤ 1.1", "swap/cold", 3,
             lambda v: v <= 1.1),
        Spec(f"RSS after {swaps} swaps ÷ after first A→B→A", "swap_rss", "≤ 1.1", "median", 3,
             lambda v: v <= 1.1),
        Spec("/health p99 during a stream, ms", "health_p99", "≤ 20 ms", "none", 1, lambda v: v <= 20),
    ]


def _median(stat: Stat | None) -> float | None:
    value: float | None = stat["median"] if stat else None
    return value


def _ratios(bench: Bench, spec: Spec, cells: dict[str, Stat | None]) -> tuple[float | None, float | None]:
    if spec.ratio_of == "raw":
        return ratio(cells["ours"], cells["raw"]), ratio(cells["peer"], cells["raw"])
    if spec.ratio_of == "cached/cold":
        return (ratio(bench.get("multiturn_cached", "ours"), bench.get("multiturn_cold", "ours")),
                ratio(bench.get("multiturn_cached", "peer"), bench.get("multiturn_cold", "peer")))
    if spec.ratio_of == "median":
        return _median(cells["ours"]), _median(cells["peer"])
    if spec.ratio_of == "swap/cold" and cells["ours"]:
        return cells["ours"]["median"] / cells["ours"]["cold_load_s"], None
    return None, None


def _meets(spec: Spec, cells: dict[str, Stat | None], ours_ratio: float | None) -> bool | None:
    if spec.check is None:
        return None
    # a row whose ratio is the target is judged on it; a row with an absolute target on ours' median
    value = ours_ratio if spec.ratio_of in ("raw", "cached/cold", "swap/cold") else _median(cells["ours"])
    return None if value is None else bool(spec.check(value))


def _row(bench: Bench, spec: Spec) -> dict[str, Any] | None:
    cells = {side: bench.get(spec.key, side) for side in SIDES}
    if not any(cells.values()):
        return None
    ours_ratio, peer_ratio = _ratios(bench, spec, cells)
    return {"row": spec.label, "key": spec.key, **cells, "ours_ratio": ours_ratio, "peer_ratio": peer_ratio,
            "target": spec.target, "meets": _meets(spec, cells, ours_ratio),
            "cells": [fmt(cells[side], 1.0, spec.digits) for side in SIDES]}


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join([row["row"], *row["cells"], _num(row["ours_ratio"]),
                                        _num(row["peer_ratio"]), row["target"], MEETS[row["meets"]]]) + " |")
    return "\n".join(lines)


def table(bench: Bench) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table and its rows (the --json "table"), measured rows only, in a fixed order."""
    rows = [row for spec in specs(bench) if (row := _row(bench, spec)) is not None]
    return markdown(rows), rows

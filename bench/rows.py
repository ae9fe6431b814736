"""Rows that generate from a fresh conversation each run: decode tok/s, TTFT (short and long
prompt), /health p99 during a stream. Each run goes to every side in turn, the others paused."""

from __future__ import annotations

from .client import SHORT, STORY, Generation, Messages, fresh, health_p99, stream_once
from .harness import Proc, Raw, Server, only
from .results import Bench, progress

Side = tuple[str, Proc]


def sides_for(raw: Raw | None, ours: Server, peer: Server | None) -> list[Side]:
    sides: list[Side] = [("ours", ours)]
    if peer:
        sides.append(("peer", peer))
    if raw:
        sides.append(("raw", raw))
    return sides


def run_generation(side: Proc, messages: Messages, tokens: int) -> Generation:
    if isinstance(side, Raw):
        return side.generate(messages, tokens)
    if isinstance(side, Server):
        return stream_once(side, messages, tokens)
    raise TypeError(f"cannot generate on {side.name}")


def _collect(bench: Bench, sides: list[Side], user: str, tokens: int) -> dict[str, list[Generation]]:
    collected: dict[str, list[Generation]] = {name: [] for name, _ in sides}
    for _ in bench.runs():
        for name, side in sides:
            messages = fresh(user)
            with only(side, bench.procs):
                collected[name].append(run_generation(side, messages, tokens))
    return collected


def _put_generations(bench: Bench, row: str, key: str, collected: dict[str, list[Generation]]) -> None:
    for name, results in collected.items():
        bench.put(row, name, [r[key] for r in results],
                  prompt_tokens=results[0].get("prompt_tokens") if results else None,
                  generated=[r.get("generated") for r in results],
                  sample=(results[0].get("text") or "")[:60] if results else None)


def row_decode_ttft(bench: Bench, raw: Raw, ours: Server, peer: Server | None, long_doc: str) -> None:
    sides = sides_for(raw, ours, peer)
    cases = [("decode", STORY, bench.opts.tokens)]
    if "ttft" in bench.opts.rows:
        cases += [("ttft_short", SHORT, 2), ("ttft_long", long_doc + "\n\nSummarize the text above.", 2)]
    for row, user, tokens in cases:
        progress(f"row {row}")
        collected = _collect(bench, sides, user, tokens)
        _put_generations(bench, row, "decode_tps" if row == "decode" else "ttft_s", collected)


def row_health(bench: Bench, ours: Server, peer: Server | None) -> None:
    progress("row health")
    for name, side in [("ours", ours), ("peer", peer)]:
        if side is None:
            continue
        values = []
        for _ in bench.runs():
            with only(side, bench.procs):
                values.append(health_p99(side, fresh(STORY), bench.opts.tokens))
        bench.put("health_p99", name, [v * 1000 for v in values if v is not None])

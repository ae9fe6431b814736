"""Prefix-cache rows: turn-6 TTFT of a conversation with a long document, cache on vs cold, and the
cache hit ratio of four conversations taking turns."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from .client import QUESTIONS, Generation, Messages, chat_turn, long_document, stream_once, sysmsg
from .harness import Server, only
from .results import Bench, progress

TURNS = 6  # the multiturn row measures the last one
INTERLEAVED = 4  # conversations
INTERLEAVED_TURNS = 3


def conversation(side: Server, long_doc: str, turns: int, tokens: int) -> tuple[Messages, Generation]:
    """``turns`` questions about ``long_doc``; the messages up to the last question, its answer."""
    messages: Messages = [sysmsg(uuid.uuid4().hex[:12])]
    last: Generation = {}
    for turn in range(turns):
        content = QUESTIONS[turn % len(QUESTIONS)]
        if turn == 0:
            content = long_doc + "\n\n" + content
        last = chat_turn(side, messages, content, tokens)
    return messages[:-1], last


@dataclass
class _Multiturn:
    bench: Bench
    ours_nocache: Server | None
    long_doc: str
    ours_has_cache: bool
    history: int = 0

    def __post_init__(self) -> None:
        self.cached: dict[str, list[float | None]] = {"ours": [], "peer": []}
        self.cold: dict[str, list[float | None]] = {"ours": [], "peer": []}

    def run(self, name: str, side: Server) -> None:
        with only(side, self.bench.procs):
            messages, turn6 = conversation(side, self.long_doc, TURNS, 12)
        self.history = turn6.get("prompt_tokens") or self.history
        if name == "ours" and not self.ours_has_cache:
            self.cold["ours"].append(turn6["ttft_s"])  # this build has no prefix cache: turn 6 is cold
            return
        self.cached[name].append(turn6["ttft_s"])
        self.cold[name] += self._cold_turn6(name, side, messages)

    def _cold_turn6(self, name: str, side: Server, messages: Messages) -> list[float | None]:
        cold_side = self.ours_nocache if name == "ours" else side
        if cold_side is None:
            return []
        if name == "peer":
            httpx.post(f"{side.base}/v1/cache/reset", timeout=30)
        with only(cold_side, self.bench.procs):
            return [stream_once(cold_side, messages, 12)["ttft_s"]]


def row_multiturn(bench: Bench, ours: Server, ours_nocache: Server | None, peer: Server | None,
                  long_doc: str, ours_has_cache: bool) -> None:
    state = _Multiturn(bench, ours_nocache, long_doc, ours_has_cache)
    progress("row multiturn")
    for _ in bench.runs():
        for name, side in [("ours", ours), ("peer", peer)]:
            if side is not None:
                state.run(name, side)
    for name in ("ours", "peer"):
        bench.put("multiturn_cached", name, state.cached[name])
        bench.put("multiturn_cold", name, state.cold[name])
    bench.results.setdefault("multiturn_cached", {})["history_tokens"] = state.history


@dataclass
class _Hits:
    """Prompt tokens the server reported cached, of those an unlimited cache could reuse."""

    cached: int = 0
    cacheable: int = 0
    reported: bool = True

    def count(self, result: Generation, previous: int | None) -> None:
        if result["cached_tokens"] is None:
            self.reported = False
        if previous is not None:
            # cacheable: the prompt this conversation already sent (the previous request's
            # prompt tokens), a prefix of this one; generated tokens are not counted
            self.cacheable += previous or 0
            self.cached += min(result["cached_tokens"] or 0, previous or 0)


def _interleave(side: Server, docs: list[str], deadline: float) -> _Hits:
    convs: list[Messages] = [[sysmsg(uuid.uuid4().hex[:12])] for _ in docs]
    previous: list[int | None] = [None] * len(docs)
    hits = _Hits()
    for turn in range(INTERLEAVED_TURNS):
        for index, conv in enumerate(convs):
            if time.monotonic() > deadline:
                break
            content = QUESTIONS[turn] if turn else docs[index] + "\n\n" + QUESTIONS[turn]
            result = chat_turn(side, conv, content, 8)
            hits.count(result, previous[index])
            previous[index] = result["prompt_tokens"]
    return hits


def row_interleaved(bench: Bench, ours: Server, peer: Server | None, model_dir: Path) -> None:
    docs = [long_document(model_dir, 300) + f"\nDocument {i}." for i in range(INTERLEAVED)]
    progress("row interleaved")
    for name, side in [("ours", ours), ("peer", peer)]:
        if side is None:
            continue
        deadline = time.monotonic() + bench.opts.row_budget
        with only(side, bench.procs):
            hits = _interleave(side, docs, deadline)
        bench.put("interleaved_hit", name, [hits.cached / hits.cacheable] if hits.cacheable and hits.reported
                  else [], cached=hits.cached, cacheable=hits.cacheable, usage_reports_cached=hits.reported)

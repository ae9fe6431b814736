"""Deterministic clock and ids for tests (the engine fake is a real adapter in src/)."""

from __future__ import annotations

import itertools


class FixedClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


class CountingIds:
    def __init__(self) -> None:
        self._next = itertools.count(1)

    def completion_id(self) -> str:
        return f"chatcmpl-{next(self._next)}"

    def tool_call_id(self) -> str:
        return f"call_{next(self._next)}"

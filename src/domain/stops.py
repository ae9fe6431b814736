"""Stop sequences over a token stream: cut at the first match, hold back only a possible start."""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Feed generated text piece by piece; get back what is safe to emit now.

    Text that could still grow into a stop sequence is held back until it either completes one
    (generation stops, the stop text is not returned unless it is one of `kept`) or can no longer
    match (it is released).
    """

    def __init__(self, stops: Iterable[str], kept: Iterable[str] = ()) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._kept = frozenset(kept)  # stops returned at the end of the text (no_stop_trim)
        self._held = ""
        self.matched: str | None = None  # the stop sequence that ended generation, if one did

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop sequence was reached)."""
        if not self._stops:
            return text, False
        buffer = self._held + text
        hits = [(index, -len(stop), stop) for stop in self._stops
                if (index := buffer.find(stop)) >= 0]
        if hits:
            index, _, self.matched = min(hits)  # the earliest; at one place, the longest
            self._held = ""
            end = index + len(self.matched) if self.matched in self._kept else index
            return buffer[:end], True
        keep = self._longest_pending_prefix(buffer)
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """Release what is held back once generation has ended without a stop."""
        held, self._held = self._held, ""
        return held

    def _longest_pending_prefix(self, buffer: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def truncate_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """The whole-text equivalent of a StopMatcher run: text up to the first stop sequence."""
    hits = [index for stop in stops if stop and (index := text.find(stop)) >= 0]
    return (text[: min(hits)], True) if hits else (text, False)

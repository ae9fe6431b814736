"""Call blocks in model output: find them, judge each one, and keep content and whitespace rules
identical between a whole-text parse and a stream.

The rules (both paths):
- A block runs from an opener to the first closer after it. An opener with no closer is not a
  block: the rest of the output is content.
- Each block is judged on its own. Accepted: every call in it parses, names a known tool and fits
  that tool's schema. Otherwise the block is rejected: it stays in the content verbatim and is
  counted in `rejected`.
- A *cut* is a maximal run of accepted blocks with only whitespace around and between them. A cut
  is removed with that whitespace. When text remains on both sides, the whitespace that preceded
  the cut is kept as the separator ("Hi <call> there" → "Hi there"); at the start or the end of the
  output nothing is kept.
- Content is None when it is empty and there are calls; without calls the text is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import attrs

from .conversation import ToolCall, ToolChoice, ToolChoiceMode, ToolSpec
from .tool_types import CallArguments, CallStarted, ContentPiece, ParsedReply, ToolEvent

# A block's full text -> (name, JSON arguments) per call, or None when the block is rejected.
Judge = Callable[[str], tuple[tuple[str, str], ...] | None]


@attrs.frozen
class Syntax:
    opener: str
    closer: str


def segments(text: str, syntax: Syntax) -> Iterator[tuple[str, bool]]:
    """Split `text` into (piece, is_block) in order; pieces join back to `text`."""
    position = 0
    while (start := text.find(syntax.opener, position)) >= 0:
        end = text.find(syntax.closer, start + len(syntax.opener))
        if end < 0:
            break
        end += len(syntax.closer)
        yield text[position:start], False
        yield text[start:end], True
        position = end
    yield text[position:], False


def parse_blocks(text: str, syntax: Syntax, judge: Judge, new_id: Callable[[], str]) -> ParsedReply:
    """The whole-text reference for the module's rules."""
    out, rejected = "", 0
    cut: str | None = None  # inside a cut: the separator to use if text follows
    calls: list[ToolCall] = []
    for piece, is_block in segments(text, syntax):
        found = judge(piece) if is_block else None
        if found is None:
            rejected += is_block
            if cut is None:
                out += piece
            elif stripped := piece.lstrip():
                out, cut = out + cut + stripped, None
            continue
        calls.extend(ToolCall(new_id(), name, arguments) for name, arguments in found)
        if cut is None:
            body = out.rstrip()
            out, cut = body, out[len(body):] if body else ""
    return ParsedReply(out if out or not calls else None, tuple(calls), rejected)


def partial_opener(buffer: str, opener: str) -> int:
    """Length of the longest end of `buffer` that could still grow into `opener`."""
    for size in range(min(len(opener) - 1, len(buffer)), 0, -1):
        if buffer.endswith(opener[:size]):
            return size
    return 0


class BlockStreamer:
    """The streaming side of `parse_blocks`: content as soon as it is certain, blocks when closed.

    Held back: the trailing whitespace run (it may turn out to touch a cut) and an end that could
    still become an opener; inside a block, everything until its closer.
    """

    def __init__(self, syntax: Syntax, judge: Judge, new_id: Callable[[], str]) -> None:
        self._syntax, self._judge, self._new_id = syntax, judge, new_id
        self._buffer = ""  # unprocessed: a possible opener start, or the open block
        self._in_block = False
        self._scanned = 0  # how far the open block has been searched for the closer
        self._space = ""  # trailing whitespace of the content so far, not yet emitted
        self._cut: str | None = None  # inside a cut: the separator to use if text follows
        self._emitted = False
        self._calls = 0
        self._rejected = 0

    @property
    def rejected(self) -> int:
        """Blocks rejected so far."""
        return self._rejected

    def feed(self, text: str) -> list[ToolEvent]:
        """Take the next piece of output; return the events that are certain now."""
        events: list[ToolEvent] = []
        self._buffer += text
        while self._close_block(events) if self._in_block else self._open_block(events):
            pass
        return events

    def finish(self) -> list[ToolEvent]:
        """End of output: an unclosed block or partial opener is content; trailing whitespace
        is released unless it ends a cut."""
        events: list[ToolEvent] = []
        self._text(self._buffer, events)
        self._buffer, self._in_block = "", False
        if self._cut is None and self._space:
            events.append(ContentPiece(self._space))
        self._space = ""
        return events

    def _open_block(self, events: list[ToolEvent]) -> bool:
        """Outside a block: emit text up to an opener (then enter the block) or up to what is
        held back. True when a block was entered."""
        start = self._buffer.find(self._syntax.opener)
        if start < 0:
            start = len(self._buffer) - partial_opener(self._buffer, self._syntax.opener)
        self._text(self._buffer[:start], events)
        self._buffer = self._buffer[start:]
        self._in_block = self._buffer.startswith(self._syntax.opener)
        self._scanned = len(self._syntax.opener)
        return self._in_block

    def _close_block(self, events: list[ToolEvent]) -> bool:
        """Inside a block: judge it once its closer is there. True when the block closed."""
        closer = self._syntax.closer
        end = self._buffer.find(closer, self._scanned)
        if end < 0:
            self._scanned = max(self._scanned, len(self._buffer) - len(closer) + 1)
            return False
        end += len(closer)
        block, self._buffer, self._in_block = self._buffer[:end], self._buffer[end:], False
        found = self._judge(block)
        if found is None:
            self._rejected += 1
            self._text(block, events)
            return True
        if self._cut is None:
            self._cut, self._space = (self._space if self._emitted else ""), ""
        for name, arguments in found:
            call_id = self._new_id()
            events += [CallStarted(self._calls, call_id, name), CallArguments(self._calls, arguments)]
            self._calls += 1
        return True

    def _text(self, text: str, events: list[ToolEvent]) -> None:
        """Content text: skipped while only whitespace follows a cut, trailing whitespace held."""
        if self._cut is not None:
            stripped = text.lstrip()
            if not stripped:
                return
            text, self._cut = self._cut + stripped, None
        whole = self._space + text
        body = whole.rstrip()
        if body:
            events.append(ContentPiece(body))
            self._emitted = True
        self._space = whole[len(body):]


class BlockFormat:
    """`parse` and `streamer` for a format whose calls sit in opener ... closer blocks; a format
    names its `syntax` and how it `judge`s one block against the tools."""

    syntax: Syntax

    @property
    def opener(self) -> str:
        return self.syntax.opener

    @staticmethod
    def judge(block: str, tools: Sequence[ToolSpec]) -> tuple[tuple[str, str], ...] | None:
        raise NotImplementedError

    def parse(self, text: str, tools: Sequence[ToolSpec], new_id: Callable[[], str]) -> ParsedReply:
        """Split a whole output into content and calls."""
        return parse_blocks(text, self.syntax, lambda block: self.judge(block, tools), new_id)

    def streamer(self, tools: Sequence[ToolSpec], new_id: Callable[[], str]) -> BlockStreamer:
        """A streamer that assembles to `parse` of the whole text."""
        return BlockStreamer(self.syntax, lambda block: self.judge(block, tools), new_id)

    def forced_prefix(self, choice: ToolChoice) -> str:
        """The block opener for `required`; the opener and the start of the named call for a
        named function; nothing otherwise."""
        if choice.mode is ToolChoiceMode.REQUIRED:
            return self.syntax.opener + "\n"
        if choice.mode is ToolChoiceMode.FUNCTION and choice.function:
            return self.syntax.opener + "\n" + self.call_start(choice.function)
        return ""

    def call_start(self, name: str) -> str:
        """How this format's call of `name` begins, up to its arguments."""
        raise NotImplementedError

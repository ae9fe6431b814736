"""What tool-call parsing gives back: a parsed reply, stream events, and the format protocols."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from .conversation import ToolCall, ToolChoice, ToolSpec


@attrs.frozen
class ParsedReply:
    """A whole model output split into the text around the calls and the calls themselves."""

    content: str | None  # None only when it is empty and there are calls
    calls: tuple[ToolCall, ...]
    rejected: int = 0  # call blocks that did not parse, named an unknown tool or broke the schema


@attrs.frozen
class ContentPiece:
    text: str


@attrs.frozen
class CallStarted:
    index: int
    id: str
    name: str


@attrs.frozen
class CallArguments:
    index: int
    text: str  # a piece of the call's JSON arguments string


ToolEvent = ContentPiece | CallStarted | CallArguments


class ToolCallStreamer(Protocol):
    """Turns generated text, piece by piece, into content and call events."""

    def feed(self, text: str) -> list[ToolEvent]:
        """Take the next piece of output; return what can be told now."""

    def finish(self) -> list[ToolEvent]:
        """Generation ended: release what is held back (an unclosed block becomes content)."""

    @property
    def rejected(self) -> int:
        """Call blocks rejected so far (kept as content)."""


class ToolCallFormat(Protocol):
    """One model family's native tool-call syntax."""

    @property
    def opener(self) -> str:
        """The text that begins a call block."""

    def parse(self, text: str, tools: Sequence[ToolSpec], new_id: Callable[[], str]) -> ParsedReply:
        """Split a whole output into content and calls."""

    def streamer(self, tools: Sequence[ToolSpec], new_id: Callable[[], str]) -> ToolCallStreamer:
        """A streamer whose assembled events equal `parse` of the whole text, for any split."""

    def forced_prefix(self, choice: ToolChoice) -> str:
        """Text that starts the assistant turn so that the model must produce a call."""

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        """The calls as the model itself would write them (parse gives them back)."""

    def call_grammar(self, tools: Sequence[ToolSpec], parallel: bool) -> str | None:
        """An llguidance Lark grammar whose `start` matches exactly what follows the forced
        prefix of `required` (the opener and its newline): one call block of `tools` (with
        `parallel`, as many calls as the format puts in one block), arguments valid for the
        called tool's schema, closer included. None when a schema cannot be enforced."""


def assemble(events: Sequence[ToolEvent], rejected: int = 0) -> ParsedReply:
    """Put stream events back together into the reply `parse` gives for the whole text."""
    text: list[str] = []
    names: dict[int, tuple[str, str]] = {}
    arguments: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ContentPiece):
            text.append(event.text)
        elif isinstance(event, CallStarted):
            names[event.index] = (event.id, event.name)
            arguments.setdefault(event.index, [])
        else:
            arguments.setdefault(event.index, []).append(event.text)
    calls = tuple(ToolCall(names[index][0], names[index][1], "".join(arguments[index]))
                  for index in sorted(names))
    content = "".join(text)
    return ParsedReply(content if content or not calls else None, calls, rejected)

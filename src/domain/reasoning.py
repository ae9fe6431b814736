"""Reasoning split from the answer: the model's `<think>` ... `</think>` block, streamed.

A thinking model writes its reasoning first, between its family's markers (`Profile.thinking`),
then the answer. The split is decided by where the rendered prompt leaves the model:

- the prompt ends inside an open block (a Thinking template's generation prompt writes `<think>`
  itself: "thinking forced open"): the reply starts as reasoning;
- the prompt ends with a closed block (a hybrid template told not to think writes an empty one):
  the reply is all answer, nothing is split;
- otherwise a reply that opens with the marker (after whitespace) reasons until the close; one
  that opens with anything else is all answer.

An unclosed block (the reply cut at max_tokens) is all reasoning. Whitespace between the markers
and the text they enclose, and at the start of the answer, is not part of either. Text that
could still be the start of a marker is held back until it is or is not one, so any chunking of
a reply splits as the whole does.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from .conversation import Message, Role

BEFORE, INSIDE, AFTER = 0, 1, 2  # looking for an opening marker; in the block; in the answer


class Start(enum.Enum):
    """Where a reply starts, read from the end of its prompt."""

    OPEN = "open"  # inside the block: the prompt opened it
    CLOSED = "closed"  # after a block: the prompt closed it (or the family has none)
    MAYBE = "maybe"  # the reply may open one


def reply_start(prompt_tail: str, markers: tuple[str, str] | None) -> Start:
    """How the reply to a prompt ending in `prompt_tail` starts, for a family's markers."""
    if markers is None:
        return Start.CLOSED
    tail = prompt_tail.rstrip()
    opened, closed = tail.rfind(markers[0]), tail.rfind(markers[1])
    if opened >= 0 and tail.endswith(markers[0]):
        return Start.OPEN
    if closed >= 0 and tail.endswith(markers[1]):
        return Start.CLOSED
    return Start.MAYBE


class ReasoningSplitter:
    """Feed generated text piece by piece; get back (reasoning, answer) text safe to emit now."""

    __slots__ = ("_close", "_held", "_open", "_state", "_trim")

    def __init__(self, markers: tuple[str, str], start: Start) -> None:
        self._open, self._close = markers
        self._state = {Start.OPEN: INSIDE, Start.CLOSED: AFTER, Start.MAYBE: BEFORE}[start]
        self._held = ""
        self._trim = True  # drop whitespace at the start of the current part

    @property
    def inside(self) -> bool:
        """Whether the text fed so far ends inside the reasoning block."""
        return self._state == INSIDE

    @property
    def settled(self) -> bool:
        """Whether the rest of the reply is answer as it comes (nothing more to split)."""
        return self._state == AFTER and not self._trim and not self._held

    def feed(self, text: str) -> tuple[str, str]:
        if self._state == AFTER and not self._trim:
            return "", text  # the hot path: the answer, once past its leading whitespace
        return self._step(self._held + text, final=False)

    def finish(self) -> tuple[str, str]:
        """Release what is held back once generation has ended."""
        held, self._held = self._held, ""
        return self._step(held, final=True)

    def _step(self, buffer: str, final: bool) -> tuple[str, str]:
        reasoning = ""
        self._held = ""
        if self._state == BEFORE:
            stripped = buffer.lstrip()
            if stripped.startswith(self._open):
                self._state, self._trim = INSIDE, True
                buffer = stripped[len(self._open):]
            elif self._open.startswith(stripped) and not final:
                self._held = buffer  # could still be the opening marker (or only whitespace)
                return "", ""
            else:
                self._state = AFTER
        if self._state == INSIDE:
            if self._trim:
                buffer = buffer.lstrip()
                self._trim = not buffer
            index = buffer.find(self._close)
            if index < 0:  # hold back a possible marker start and the whitespace before it
                body = buffer if final else buffer[: len(buffer) - _pending(buffer, self._close)]
                if not final:
                    body = body.rstrip()
                self._held = buffer[len(body):]
                return body, ""
            reasoning, buffer = buffer[:index].rstrip(), buffer[index + len(self._close):]
            self._state, self._trim = AFTER, True
        if self._trim:
            buffer = buffer.lstrip()
            self._trim = not buffer
        return reasoning, buffer


def _pending(buffer: str, marker: str) -> int:
    """The length of the longest end of `buffer` that begins `marker`."""
    for size in range(min(len(marker) - 1, len(buffer)), 0, -1):
        if buffer.endswith(marker[:size]):
            return size
    return 0


def split_whole(text: str, markers: tuple[str, str], start: Start) -> tuple[str, str]:
    """The split of a whole reply: what a splitter fed all of it at once returns."""
    splitter = ReasoningSplitter(markers, start)
    reasoning, answer = splitter.feed(text)
    more_reasoning, more_answer = splitter.finish()
    return reasoning + more_reasoning, answer + more_answer


def keep_reasoning(messages: Sequence[Message], turns: int) -> tuple[Message, ...]:
    """The conversation with the reasoning of all but the last `turns` assistant turns cleared
    (Anthropic's `clear_thinking` context edit): a template that shows earlier reasoning shows
    only what is kept."""
    kept = 0
    out = list(messages)
    for index in range(len(out) - 1, -1, -1):
        message = out[index]
        if message.role is not Role.ASSISTANT:
            continue
        if kept >= turns and message.reasoning is not None:
            out[index] = attrs.evolve(message, reasoning=None)
        kept += 1
    return tuple(out)

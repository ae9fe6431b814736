"""Server-sent events in OpenAI's chunk format, rendered from domain stream events.

The per-token path only JSON-encodes the new text: each chunk's fixed parts are rendered once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import falcon.asgi

from ...domain.chat import ChatStream
from ...domain.completion import ReasoningDelta, StreamEnd, StreamEvent, StreamStart, TextDelta
from ...domain.errors import DomainError, EngineFailure
from ...domain.tool_types import CallArguments, CallStarted
from .codec import logprobs_json, usage_dto
from .dto import make_converter
from .errors import domain_envelope

log = logging.getLogger(__name__)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_converter = make_converter()


class EventDispatch:
    """Routes each event after the start to the writer's method for its kind; an API renders
    text, a call's start, a call's arguments and the end in its own format."""

    def event(self, event: StreamEvent) -> bytes:
        """The chunk(s) for any event after the start (text first: by far the most frequent)."""
        if isinstance(event, TextDelta):
            return self.text(event)
        if isinstance(event, ReasoningDelta):
            return self.reasoning(event)
        if isinstance(event, CallStarted):
            return self.call_started(event)
        if isinstance(event, CallArguments):
            return self.call_arguments(event)
        return self.end(event) if isinstance(event, StreamEnd) else b""

    def text(self, event: TextDelta) -> bytes:
        raise NotImplementedError

    def reasoning(self, event: ReasoningDelta) -> bytes:
        raise NotImplementedError

    def call_started(self, event: CallStarted) -> bytes:
        raise NotImplementedError

    def call_arguments(self, event: CallArguments) -> bytes:
        raise NotImplementedError

    def end(self, event: StreamEnd) -> bytes:
        raise NotImplementedError


class ChunkWriter(EventDispatch):
    def __init__(self, start: StreamStart, include_usage: bool) -> None:
        self._head = (
            'data: {"id":' + _dumps(start.id) + ',"object":"chat.completion.chunk","created":'
            + str(start.created) + ',"model":' + _dumps(start.model)
            + ',"system_fingerprint":"mlx-server","choices":'
        )
        self._tail = (',"usage":null}\n\n' if include_usage else "}\n\n")
        self._include_usage = include_usage

    def choice(self, delta: str, finish_reason: str | None = None, logprobs: str = "null") -> bytes:
        reason = "null" if finish_reason is None else f'"{finish_reason}"'
        return (self._head + '[{"index":0,"delta":' + delta + ',"logprobs":' + logprobs
                + ',"finish_reason":' + reason + "}]" + self._tail).encode()

    def first(self) -> bytes:
        return self.choice('{"role":"assistant","content":""}')

    def text(self, event: TextDelta) -> bytes:
        logprobs = _dumps(logprobs_json(event.logprobs)) if event.logprobs else "null"
        return self.choice('{"content":' + _dumps(event.text) + "}", logprobs=logprobs)

    def reasoning(self, event: ReasoningDelta) -> bytes:
        return self.choice('{"reasoning_content":' + _dumps(event.text) + "}")

    def call_started(self, event: CallStarted) -> bytes:
        return self.choice('{"tool_calls":[{"index":' + str(event.index) + ',"id":' + _dumps(event.id)
                           + ',"type":"function","function":{"name":' + _dumps(event.name)
                           + ',"arguments":""}}]}')

    def call_arguments(self, event: CallArguments) -> bytes:
        return self.choice('{"tool_calls":[{"index":' + str(event.index)
                           + ',"function":{"arguments":' + _dumps(event.text) + "}}]}")

    def end(self, event: StreamEnd) -> bytes:
        chunks = self.choice("{}", event.finish_reason.value)
        return chunks + (usage_chunk(self._head, event) if self._include_usage else b"")


def usage_chunk(head: str, end: StreamEnd) -> bytes:
    """OpenAI's last chunk with `stream_options.include_usage`: no choices, the usage."""
    usage = _dumps(_converter.unstructure(usage_dto(end.usage)))
    return (head + "[]" + ',"usage":' + usage + "}\n\n").encode()


class Writer(Protocol):
    """Renders one stream's events in one API's chunk format."""

    def first(self) -> bytes:
        """What goes out as the stream starts (nothing: b"")."""

    def event(self, event: StreamEvent) -> bytes:
        """The chunk(s) for any event after the start (nothing: b"")."""


class RenderedEvent(falcon.asgi.SSEvent):
    """An event whose bytes are rendered already. Chunks leave through Falcon's SSE path because
    that path notices a client that went away (its plain stream path keeps sending into the void),
    which is what stops the generation."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def serialize(self, handler: object = None) -> bytes:
        return self.raw


async def render(events: ChatStream, include_usage: bool,
                 writer_for: Callable[[StreamStart, bool], Writer] = ChunkWriter, *,
                 done: bytes = b"data: [DONE]\n\n",  # OpenAI's end of stream; b"": none
                 error_event: Callable[[DomainError], bytes] | None = None,
                 ) -> AsyncIterator[falcon.asgi.SSEvent]:
    """The chunks of `events` (chat's, or those `writer_for` makes), then `done`; an error after
    the status line is reported in-band (`error_event`: OpenAI's envelope unless an API has its
    own). Closing this generator (a client that left) closes `events` at once, which stops the
    generation."""
    error_event = error_event or _error_event
    writer: Writer | None = None
    try:
        async for event in events:
            if isinstance(event, StreamStart):
                writer = writer_for(event, include_usage)
                if first := writer.first():
                    yield RenderedEvent(first)
            elif writer is not None and (chunk := writer.event(event)):
                yield RenderedEvent(chunk)
        if done:
            yield RenderedEvent(done)
    except DomainError as error:
        yield RenderedEvent(error_event(error))
    except Exception as error:  # the status line is gone
        log.exception("stream failed")
        yield RenderedEvent(error_event(EngineFailure(f"Generation failed: {error}")))
    finally:
        await events.aclose()


def _error_event(error: DomainError) -> bytes:
    return b"data: " + _dumps(domain_envelope(error)).encode() + b"\n\n"

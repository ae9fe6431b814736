"""Anthropic's Messages API: `POST /v1/messages` (streamed and not) and
`POST /v1/messages/count_tokens`, over the same chat use case as /v1/chat/completions.

A stream is Anthropic's event sequence: `message_start`, `ping`, then per content block
`content_block_start` / `content_block_delta` (`thinking_delta` then `signature_delta` for the
reasoning (only the `signature_delta` with `thinking.display: "omitted"`), `text_delta`, or
`input_json_delta` for a tool's input) / `content_block_stop`,
then `message_delta` (stop reason, stop sequence, usage) and `message_stop`. An error after
the status line is one `error` event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import falcon
import falcon.asgi

from ...domain.chat import ChatService, ChatStream
from ...domain.completion import ReasoningDelta, StreamEnd, StreamStart, TextDelta, Usage
from ...domain.errors import DomainError
from ...domain.tool_types import CallArguments, CallStarted
from . import sse
from .disconnect import ClientGone, while_connected
from .errors import anthropic_envelope, status_of
from .json_body import read_json
from .messages_codec import (
    MessagesCodec,
    MessagesTurn,
    message_id,
    message_json,
    stop_reason,
    tool_use_id,
    usage_json,
)
from .resources import CLIENT_CLOSED_REQUEST, answer
from .sse import EventDispatch

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def sse_event(name: str, data: dict[str, object]) -> bytes:
    return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()


class EventWriter(EventDispatch):
    """Anthropic's events for one message: knows which content block is open."""

    def __init__(self, start: StreamStart, omit_thinking: bool = False) -> None:
        self._start = start
        self._omit_thinking = omit_thinking  # the thinking block comes without its text
        self._index = -1  # the last block started
        self._open: str | None = None  # "text" or "tool_use" while a block is open

    def first(self) -> bytes:
        event = self._start
        usage = usage_json(Usage(event.prompt_tokens or 0, 0, event.cached_tokens))
        message: dict[str, object] = {
            "id": message_id(event.id), "type": "message", "role": "assistant",
            "model": event.model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage}
        return (sse_event("message_start", {"type": "message_start", "message": message})
                + sse_event("ping", {"type": "ping"}))

    def text(self, event: TextDelta) -> bytes:
        if not event.text:  # log probabilities only: Anthropic's API has none
            return b""
        out = b""
        if self._open != "text":
            out += self._begin("text", {"type": "text", "text": ""})
        return out + self._delta({"type": "text_delta", "text": event.text})

    def reasoning(self, event: ReasoningDelta) -> bytes:
        out = b""
        if self._open != "thinking":
            out += self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if self._omit_thinking:
            return out
        return out + self._delta({"type": "thinking_delta", "thinking": event.text})

    def call_started(self, event: CallStarted) -> bytes:
        return self._begin("tool_use", {"type": "tool_use", "id": tool_use_id(event.id),
                                        "name": event.name, "input": {}})

    def call_arguments(self, event: CallArguments) -> bytes:
        return self._delta({"type": "input_json_delta", "partial_json": event.text})

    def end(self, event: StreamEnd) -> bytes:
        delta = {"stop_reason": stop_reason(event.finish_reason, event.stop_sequence),
                 "stop_sequence": event.stop_sequence}
        return (self._close() + sse_event("message_delta", {
            "type": "message_delta", "delta": delta, "usage": usage_json(event.usage)})
            + sse_event("message_stop", {"type": "message_stop"}))

    def _begin(self, kind: str, block: dict[str, object]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        return out + sse_event("content_block_start", {
            "type": "content_block_start", "index": self._index, "content_block": block})

    def _delta(self, delta: dict[str, object]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta",
                                                 "index": self._index, "delta": delta})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        # a thinking block ends with its signature: this server signs nothing (empty)
        out = self._delta({"type": "signature_delta", "signature": ""}) \
            if self._open == "thinking" else b""
        self._open = None
        return out + sse_event("content_block_stop", {"type": "content_block_stop", "index": self._index})


def render(events: ChatStream, omit_thinking: bool = False
           ) -> AsyncIterator[falcon.asgi.SSEvent]:
    """Anthropic's events for `events`: no `[DONE]`, a late error as an `error` event. Closing
    it (a client that left) closes `events`, which stops the generation."""
    return sse.render(events, False, lambda start, _: EventWriter(start, omit_thinking),
                      done=b"", error_event=_error_event)


def _error_event(error: DomainError) -> bytes:
    return sse_event("error", anthropic_envelope(error.message, status_of(error)))


class MessagesResource:
    """`POST /v1/messages` and (suffix `count`) `POST /v1/messages/count_tokens`. Query
    parameters (Claude Code's `?beta=true`) and the `anthropic-version` / `anthropic-beta`
    headers are accepted whatever they say, or missing: the body alone decides."""

    def __init__(self, service: ChatService, codec: MessagesCodec, max_body_bytes: int,
                 body_timeout: float) -> None:
        self._service, self._codec = service, codec
        self._max_body, self._body_timeout = max_body_bytes, body_timeout

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        turn: MessagesTurn = await read_json(req, self._max_body, self._body_timeout,
                                             self._codec.create_request)
        omit = turn.omit_thinking
        await answer(req, resp, self._service, turn.request,
                     lambda completion: message_json(completion, omit),
                     lambda events: render(events, omit))

    async def on_post_count(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = await read_json(req, self._max_body, self._body_timeout,
                                  self._codec.count_request)
        try:
            tokens = await while_connected(req.scope, self._service.count_tokens(request))
        except ClientGone:
            resp.status = CLIENT_CLOSED_REQUEST
            return
        resp.media = {"input_tokens": tokens}

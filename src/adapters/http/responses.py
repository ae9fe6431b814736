"""OpenAI's Responses API: `POST /v1/responses` (streamed and not), `GET` and `DELETE
/v1/responses/{id}`, over the same chat use case as /v1/chat/completions.

A stream is OpenAI's event sequence, each event numbered (`sequence_number`): `response.created`,
`response.in_progress`, then per output item `response.output_item.added`, for a message
`response.content_part.added` / `response.output_text.delta`... / `response.output_text.done` /
`response.content_part.done`, for reasoning `response.reasoning_text.delta`... /
`response.reasoning_text.done`, for a function call `response.function_call_arguments.delta`... /
`response.function_call_arguments.done`, then `response.output_item.done`; last
`response.completed` or `response.incomplete` (cut by `max_output_tokens`). An error after the
status line is `response.failed`, its `error` set.

A response whose request did not say `store: false` is kept in the ResponseStore once it ends
(completed, incomplete or failed): retrievable, deletable, and continued by `previous_response_id`.
A stream its client left is not kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import falcon
import falcon.asgi

from ...domain.chat import ChatService, ChatStream
from ...domain.completion import Completion, ReasoningDelta, StreamEnd, StreamStart, TextDelta
from ...domain.conversation import ToolCall
from ...domain.errors import DomainError, ResponseNotFound
from ...domain.ports import ResponseStore
from ...domain.tool_types import CallArguments, CallStarted
from . import sse
from .json_body import read_json
from .resources import answer
from .responses_codec import (
    ResponsesCodec,
    ResponsesTurn,
    call_item,
    completion_output,
    item_id,
    message_item,
    reasoning_item,
    record,
    response_id,
    response_json,
    shown,
    status_of,
    text_part,
)
from .sse import EventDispatch

log = logging.getLogger(__name__)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
# the codes a failed response's `error` may carry (OpenAI's ResponseErrorCode); others: server_error
_ERROR_CODES = frozenset({"server_error", "invalid_prompt", "invalid_image", "invalid_image_url"})


class Recorder:
    """Keeps a finished response in the store, unless its request said `store: false`."""

    def __init__(self, store: ResponseStore, turn: ResponsesTurn) -> None:
        self._store, self._turn = store, turn

    def keep(self, response: Mapping[str, Any]) -> None:
        if self._turn.store and not self._store.put(response["id"], record(self._turn, response)):
            log.warning("response %s not stored: larger than the whole store "
                        "(--responses-max-mb)", response["id"])


class EventWriter(EventDispatch):
    """OpenAI's Responses events for one response: numbers them, and knows the open output item
    (a message or a function call) and every item so far. One method per kind of event, so that
    a new kind (reasoning) is one more method."""

    def __init__(self, start: StreamStart, turn: ResponsesTurn, recorder: Recorder) -> None:
        self._start, self._turn, self._recorder = start, turn, recorder
        self._id = response_id(start.id)
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # every item so far, as output_item.added/done
        self._open: dict[str, Any] | None = None  # the item being written, while one is
        self._open_index = -1  # its output_index
        self._text: list[str] = []  # the open message's (or reasoning's) text so far
        self._calls: dict[int, tuple[int, dict[str, Any]]] = {}  # call index -> output index, item

    def first(self) -> bytes:
        response = self._response("in_progress", None)
        return (self._event("response.created", response=response)
                + self._event("response.in_progress", response=response))

    def text(self, event: TextDelta) -> bytes:
        if not event.text:  # log probabilities only: not asked for in this API
            return b""
        out = b""
        if self._open is None or self._open["type"] != "message":
            item = message_item(item_id("msg", self._id, len(self._output)), "", "in_progress")
            item["content"] = []
            out += self._add(item) + self._event(
                "response.content_part.added", item_id=item["id"], output_index=self._index,
                content_index=0, part=text_part(""))
        self._text.append(event.text)
        return out + self._event("response.output_text.delta", item_id=self._item_id,
                                 output_index=self._index, content_index=0, delta=event.text,
                                 logprobs=[])

    def reasoning(self, event: ReasoningDelta) -> bytes:
        out = b""
        if self._open is None or self._open["type"] != "reasoning":
            item = reasoning_item(self._turn, item_id("rs", self._id, len(self._output)), "",
                                  "in_progress")
            item["content"] = []
            item.pop("encrypted_content", None)  # known once the reasoning is whole
            out += self._add(item)
        self._text.append(event.text)
        return out + self._event("response.reasoning_text.delta", item_id=self._item_id,
                                 output_index=self._index, content_index=0, delta=event.text)

    def call_started(self, event: CallStarted) -> bytes:
        item = call_item(item_id("fc", self._id, len(self._output)),
                         ToolCall(event.id, event.name, ""), "in_progress", self._turn.namespaces)
        self._calls[event.index] = (len(self._output), item)
        return self._add(item)

    def call_arguments(self, event: CallArguments) -> bytes:
        index, item = self._calls[event.index]
        item["arguments"] += event.text
        return self._event("response.function_call_arguments.delta", item_id=item["id"],
                           output_index=index, delta=event.text)

    def end(self, event: StreamEnd) -> bytes:
        status, incomplete = status_of(event.finish_reason)
        out = self._close("incomplete" if incomplete else "completed")
        response = self._response(status, event, incomplete=incomplete)
        self._recorder.keep(response)
        return out + self._event(f"response.{status}", response=response)

    def failed(self, error: DomainError) -> bytes:
        """`response.failed`, the items so far in it, its `error` set; kept like any other."""
        if self._open is not None:
            self._open["status"] = "incomplete"
            self._open = None
        code = error.code if error.code in _ERROR_CODES else "server_error"
        response = self._response("failed", None, error={"code": code, "message": error.message})
        self._recorder.keep(response)
        return self._event("response.failed", response=response)

    # -- the items --------------------------------------------------------------------------

    @property
    def _index(self) -> int:
        return len(self._output) - 1

    @property
    def _item_id(self) -> str:
        return str(self._output[-1]["id"])

    def _add(self, item: dict[str, Any]) -> bytes:
        out = self._close("completed")
        self._output.append(item)
        self._open, self._open_index = item, len(self._output) - 1
        return out + self._event("response.output_item.added", output_index=self._index,
                                 item=item)

    def _close(self, status: str) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        item["status"] = status
        index = self._open_index
        if item["type"] == "message":
            text, self._text = "".join(self._text), []
            part = text_part(text)
            item["content"] = [part]
            out = (self._event("response.output_text.done", item_id=item["id"],
                               output_index=index, content_index=0, text=text, logprobs=[])
                   + self._event("response.content_part.done", item_id=item["id"],
                                 output_index=index, content_index=0, part=part))
        elif item["type"] == "reasoning":
            text, self._text = "".join(self._text), []
            item.update(reasoning_item(self._turn, item["id"], text, status))
            out = self._event("response.reasoning_text.done", item_id=item["id"],
                              output_index=index, content_index=0, text=text)
        else:
            out = self._event("response.function_call_arguments.done", item_id=item["id"],
                              name=item["name"], output_index=index, arguments=item["arguments"])
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _response(self, status: str, end: StreamEnd | None, **details: Any) -> dict[str, Any]:
        return response_json(self._turn, self._id, self._start.created, self._start.model, status,
                             json.loads(_dumps(self._output)),  # a snapshot: items change later
                             end.usage if end is not None else None, **details)

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return f"event: {kind}\ndata: {_dumps(data)}\n\n".encode()


def render(events: ChatStream, turn: ResponsesTurn,
           recorder: Recorder) -> AsyncIterator[falcon.asgi.SSEvent]:
    """The Responses events of `events`: no `[DONE]`, a late error as `response.failed`. Closing
    it (a client that left) closes `events`, which stops the generation."""
    writers: list[EventWriter] = []

    def writer_for(start: StreamStart, _: bool) -> EventWriter:
        writers.append(EventWriter(start, turn, recorder))
        return writers[-1]

    def error_event(error: DomainError) -> bytes:
        if writers:
            return writers[-1].failed(error)
        return sse_error(error)  # no start seen: open_stream raises before, so never in practice

    return sse.render(events, False, writer_for, done=b"", error_event=error_event)


def sse_error(error: DomainError) -> bytes:
    data = {"type": "error", "sequence_number": 0, "code": error.code, "message": error.message,
            "param": error.param}
    return f"event: error\ndata: {_dumps(data)}\n\n".encode()


def whole(turn: ResponsesTurn, recorder: Recorder, completion: Completion) -> dict[str, Any]:
    resp_id = response_id(completion.id)
    status, incomplete = status_of(completion.finish_reason)
    response = response_json(turn, resp_id, completion.created, completion.model, status,
                             completion_output(turn, resp_id, completion, status), completion.usage,
                             incomplete=incomplete)
    recorder.keep(response)
    return response


class ResponsesResource:
    """`POST /v1/responses`."""

    def __init__(self, service: ChatService, codec: ResponsesCodec, store: ResponseStore,
                 max_body_bytes: int, body_timeout: float) -> None:
        self._service, self._codec, self._store = service, codec, store
        self._max_body, self._body_timeout = max_body_bytes, body_timeout

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        turn = await read_json(req, self._max_body, self._body_timeout, self._codec.create_request)
        recorder = Recorder(self._store, turn)
        await answer(req, resp, self._service, turn.request,
                     lambda completion: whole(turn, recorder, completion),
                     lambda events: render(events, turn, recorder))


class StoredResponseResource:
    """`GET` and `DELETE /v1/responses/{response_id}` (a resource of its own: a POST there is
    405, not a body to check)."""

    def __init__(self, store: ResponseStore) -> None:
        self._store = store

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     response_id: str) -> None:
        kept = self._store.get(response_id)
        if kept is None:
            raise _not_found(response_id)
        stored = await asyncio.to_thread(json.loads, kept)  # as large as the store allows
        resp.media = stored["response"]

    async def on_delete(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                        response_id: str) -> None:
        if not self._store.delete(response_id):
            raise _not_found(response_id)
        resp.media = {"id": response_id, "object": "response.deleted", "deleted": True}


def _not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(f"No response found with id '{shown(response_id)}' (never stored, "
                            "deleted, or dropped from this server's in-memory store).")


"""Thin Falcon resources: parse, call the use case, render."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import falcon
import falcon.asgi

from ...domain.chat import ChatService, ChatStream
from ...domain.completion import Completion
from ...domain.conversation import ChatRequest
from . import sse
from .codec import ChatCodec
from .disconnect import ClientGone, while_connected
from .json_body import read_json
from .observability import served

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left: in the access log and metrics


async def answer(req: falcon.asgi.Request, resp: falcon.asgi.Response, service: ChatService,
                 request: ChatRequest, whole: Callable[[Completion], Any],
                 streamed: Callable[[ChatStream], AsyncIterator[falcon.asgi.SSEvent]]) -> None:
    """How every API answers a request of the chat use case, whatever its wire format: one JSON
    body (`whole` renders the Completion), or an SSE stream (`streamed` renders the events);
    noted for the access log; a client gone before the answer starts is 499."""
    try:
        if not request.stream:
            completion = await while_connected(req.scope, service.complete(request))
            resp.media = whole(served(req, completion))
            return
        events = await while_connected(req.scope, service.open_stream(request))
    except ClientGone:  # its work was cancelled; nobody will read an answer
        resp.status = CLIENT_CLOSED_REQUEST
        return
    resp.set_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    resp.sse = streamed(served(req, events))


class HealthResource:
    def __init__(self, service: ChatService, backend: Callable[[], Mapping[str, str]],
                 draining: Callable[[], bool]) -> None:
        self._service, self._backend, self._draining = service, backend, draining

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        status = self._service.status()
        state = "draining" if self._draining() and status.state != "down" else status.state
        if state == "down":  # the generation thread died: nothing will be answered
            resp.status = 503
        resp.media = {"status": "down" if state == "down" else "ok", "state": state,
                      "model": status.model, "queued": status.queued,
                      "running": status.running, "max_batch": status.max_batch,
                      "backend": dict(self._backend())}


class ServerInfoResource:
    """What a router asks a worker before it routes to it: sglang-router probes `/server_info`,
    `/get_server_info`, `/model_info` and `/get_model_info` (SGLang's own endpoints) and takes
    `served_model_name` as the model it lists. No `model_path` or `tokenizer_path`: given one,
    the router would fetch a tokenizer it does not need to route plain HTTP."""

    def __init__(self, service: ChatService) -> None:
        self._service = service

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        status = self._service.status()
        info: dict[str, Any] = {"is_generation": True, "dp_size": 1, "max_batch": status.max_batch,
                                "server": "mlx-server"}
        if status.model is not None:
            info["served_model_name"] = status.model
        resp.media = info


class ModelsResource:
    def __init__(self, service: ChatService, codec: ChatCodec) -> None:
        self._service, self._codec = service, codec

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        listing = await self._service.models()
        resp.media = self._codec.models(list(listing.models), listing.loaded)

    async def on_get_one(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_id: str) -> None:
        listing = await self._service.models(model_id)  # raises ModelNotFound
        resp.media = self._codec.model(listing.models[0], listing.loaded)


class ChatCompletionsResource:
    def __init__(self, service: ChatService, codec: ChatCodec, max_body_bytes: int,
                 body_timeout: float) -> None:
        self._service, self._codec = service, codec
        self._max_body, self._body_timeout = max_body_bytes, body_timeout

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = await read_json(req, self._max_body, self._body_timeout, self._codec.chat_request)
        await answer(req, resp, self._service, request, self._codec.completion,
                     lambda events: sse.render(events, request.include_usage))


class SpecResource:
    def __init__(self, spec_text: str) -> None:
        self._body = spec_text.encode()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "application/yaml"
        resp.data = self._body

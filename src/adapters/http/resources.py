"""Thin Falcon resources: parse, call the use case, render."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import falcon
import falcon.asgi

from ...domain.chat import ChatService
from ...domain.errors import ModelNotFound
from ...domain.models import ModelInfo
from ...domain.ports import ModelCatalog
from . import sse
from .codec import ChatCodec
from .disconnect import ClientGone, while_connected
from .json_body import read_json
from .observability import note_completion, observe_stream

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left: in the access log and metrics


class HealthResource:
    def __init__(self, service: ChatService, backend: Callable[[], Mapping[str, str]],
                 draining: Callable[[], bool]) -> None:
        self._service, self._backend, self._draining = service, backend, draining

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        loaded, worker = self._service.loaded_model, self._service.worker
        state = "draining" if self._draining() else "busy" if worker.busy else "idle"
        resp.media = {"status": "ok", "state": state, "model": loaded.id if loaded else None,
                      "queued": worker.queued, "backend": dict(self._backend())}


class ModelsResource:
    def __init__(self, service: ChatService, catalog: ModelCatalog, codec: ChatCodec) -> None:
        self._service, self._catalog, self._codec = service, catalog, codec

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        models = await asyncio.to_thread(self._catalog.list_models)  # may scan the disk cache
        resp.media = self._codec.models(list(models), self._loaded_id())

    async def on_get_one(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                         model_id: str) -> None:
        model = await asyncio.to_thread(self._find, model_id)
        resp.media = self._codec.model(model, self._loaded_id())

    def _find(self, name: str) -> ModelInfo:
        wanted = self._catalog.resolve(name).id  # raises ModelNotFound
        for model in self._catalog.list_models():
            if model.id == wanted:
                return model
        raise ModelNotFound(f"The model {name!r} does not exist.", param="model")

    def _loaded_id(self) -> str | None:
        loaded = self._service.loaded_model
        return loaded.id if loaded else None


class ChatCompletionsResource:
    def __init__(self, service: ChatService, codec: ChatCodec, max_body_bytes: int,
                 body_timeout: float = 30.0) -> None:
        self._service, self._codec = service, codec
        self._max_body, self._body_timeout = max_body_bytes, body_timeout

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = await read_json(req, self._max_body, self._body_timeout, self._codec.chat_request)
        try:
            if not request.stream:
                completion = await while_connected(req.scope, self._service.complete(request))
                resp.media = self._codec.completion(note_completion(req, completion))
                return
            events = await while_connected(req.scope, self._service.open_stream(request))
        except ClientGone:  # its work was cancelled; nobody will read an answer
            resp.status = CLIENT_CLOSED_REQUEST
            return
        resp.set_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        resp.sse = sse.render(observe_stream(req, events), request.include_usage)


class SpecResource:
    def __init__(self, spec_text: str) -> None:
        self._body = spec_text.encode()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "application/yaml"
        resp.data = self._body

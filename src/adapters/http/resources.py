"""Thin Falcon resources: parse, call the use case, render."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

import falcon
import falcon.asgi

from ...domain.chat import ChatService
from ...domain.errors import InvalidRequest, ModelNotFound
from ...domain.models import ModelInfo
from ...domain.ports import ModelCatalog
from . import sse
from .codec import ChatCodec
from .observability import note_completion, observe_stream


class HealthResource:
    def __init__(self, service: ChatService, backend: Callable[[], Mapping[str, str]]) -> None:
        self._service, self._backend = service, backend

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        loaded = self._service.loaded_model
        resp.media = {"status": "ok", "model": loaded.id if loaded else None,
                      "backend": dict(self._backend())}


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
    def __init__(self, service: ChatService, codec: ChatCodec, max_body_bytes: int) -> None:
        self._service, self._codec, self._max_body = service, codec, max_body_bytes

    async def on_post(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        request = self._codec.chat_request(await read_json(req, self._max_body))
        if not request.stream:
            completion = note_completion(req, await self._service.complete(request))
            resp.media = self._codec.completion(completion)
            return
        events = await self._service.open_stream(request)
        resp.set_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        resp.sse = sse.render(observe_stream(req, events), request.include_usage)


class SpecResource:
    def __init__(self, spec_text: str) -> None:
        self._body = spec_text.encode()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = "application/yaml"
        resp.data = self._body


async def read_json(req: falcon.asgi.Request, limit: int) -> Any:
    if req.content_length is not None and req.content_length > limit:
        raise falcon.HTTPContentTooLarge(description=_too_large(limit))
    body = await req.stream.read(limit + 1)
    if len(body) > limit:
        raise falcon.HTTPContentTooLarge(description=_too_large(limit))
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). Send valid JSON with "
            "'Content-Type: application/json'.", code="invalid_json") from exc


def _too_large(limit: int) -> str:
    return f"The request body is larger than the server's limit of {limit} bytes."

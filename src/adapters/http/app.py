"""The Falcon ASGI application: routes, error envelope, startup and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import falcon
import falcon.asgi
import yaml

from ...domain.chat import ChatService
from ...domain.errors import DomainError
from ...domain.ports import ModelCatalog
from . import errors
from .codec import ChatCodec
from .errors import AsgiApp
from .resources import (
    ChatCompletionsResource,
    HealthResource,
    ModelsResource,
    SpecResource,
)

log = logging.getLogger(__name__)


class Lifecycle:
    """Preloads the startup model (or its fallback) and stops the generation thread on shutdown."""

    def __init__(self, service: ChatService, preload: str | None, fallback: str | None) -> None:
        self._service = service
        self._candidates = [name for name in (preload, fallback) if name]
        if preload is None or fallback == preload:
            self._candidates = self._candidates[:1] if preload else []

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        for position, name in enumerate(self._candidates):
            try:
                model = await self._service.load(name)
            except DomainError as error:
                later = self._candidates[position + 1:]
                log.warning("%s is not available: %s%s", name, error.message,
                            f" Serving {later[0]} instead." if later else "")
            else:
                log.info("model %s loaded", model.id)
                return

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._service.worker.stop)  # joins the generation thread


def create_app(service: ChatService, catalog: ModelCatalog, spec_text: str, *,
               max_body_bytes: int, preload: str | None = None,
               fallback: str | None = None,
               backend: Callable[[], Mapping[str, str]] = dict) -> AsgiApp:
    codec = ChatCodec(yaml.safe_load(spec_text))
    app: AsgiApp = falcon.asgi.App(middleware=Lifecycle(service, preload, fallback), cors_enable=True)
    app.req_options.strip_url_path_trailing_slash = True
    models = ModelsResource(service, catalog, codec)
    app.add_route("/health", HealthResource(service, backend))
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="one")
    app.add_route("/v1/chat/completions", ChatCompletionsResource(service, codec, max_body_bytes))
    app.add_route("/openapi.yaml", SpecResource(spec_text))
    errors.install(app)
    return app

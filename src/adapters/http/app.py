"""The Falcon ASGI application: routes, error envelope, startup and shutdown."""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
    """Preloads the startup model and stops the generation thread on shutdown."""

    def __init__(self, service: ChatService, preload: str | None) -> None:
        self._service, self._preload = service, preload

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self._preload is None:
            return
        try:
            model = await self._service.load(self._preload)
        except DomainError as error:
            log.error("could not preload %r: %s", self._preload, error.message)
        else:
            log.info("model %s loaded", model.id)

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        self._service.worker.stop()


def create_app(service: ChatService, catalog: ModelCatalog, spec_text: str, *,
               max_body_bytes: int, preload: str | None = None) -> AsgiApp:
    codec = ChatCodec(yaml.safe_load(spec_text))
    app: AsgiApp = falcon.asgi.App(middleware=Lifecycle(service, preload), cors_enable=True)
    app.req_options.strip_url_path_trailing_slash = True
    models = ModelsResource(service, catalog, codec)
    app.add_route("/health", HealthResource(service))
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="one")
    app.add_route("/v1/chat/completions", ChatCompletionsResource(service, codec, max_body_bytes))
    app.add_route("/openapi.yaml", SpecResource(spec_text))
    errors.install(app)
    return app

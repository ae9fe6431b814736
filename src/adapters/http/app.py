"""The Falcon ASGI application: routes, error envelope, startup and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import falcon
import falcon.asgi
import yaml

from ...domain.chat import ChatService
from ...domain.errors import DomainError
from ...domain.ports import ModelCatalog
from ..metrics import PrometheusMetrics
from . import errors
from .codec import ChatCodec
from .disconnect import DisconnectWatch
from .errors import AsgiApp
from .observability import MetricsResource, ObservabilityMiddleware
from .perimeter import Perimeter
from .resources import (
    ChatCompletionsResource,
    HealthResource,
    ModelsResource,
    SpecResource,
)
from .security import OPEN_PATHS, ApiKeyAuth

log = logging.getLogger(__name__)


@attrs.frozen
class HttpOptions:
    max_body_bytes: int = 64 * 1024 * 1024
    preload: str | None = None  # model loaded at startup
    fallback: str | None = None  # loaded instead when `preload` cannot be had
    api_key: str | None = None  # required on every path but /health, the spec (and /metrics)
    metrics_auth: bool = False  # /metrics needs the API key too
    cors_origins: tuple[str, ...] = ()  # browser origins allowed; none by default
    idle_unload: float = 0.0  # free the model after this many idle seconds; 0: never
    # Host names answered beyond loopback ones; None: any (see perimeter.allowed_hosts_for)
    allowed_hosts: tuple[str, ...] | None = ()
    body_timeout: float = 30.0  # seconds a request body may take to arrive whole


class Lifecycle:
    """Preloads the startup model (or its fallback), frees an idle model, and stops the generation
    thread on shutdown."""

    def __init__(self, service: ChatService, options: HttpOptions) -> None:
        self._service, self._options = service, options
        preload, fallback = options.preload, options.fallback
        self._candidates = [name for name in (preload, fallback) if name]
        if preload is None or fallback == preload:
            self._candidates = self._candidates[:1] if preload else []
        self._idle_task: asyncio.Task[None] | None = None

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self._options.idle_unload > 0:
            self._idle_task = asyncio.create_task(self._unload_when_idle(self._options.idle_unload))
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

    async def _unload_when_idle(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(min(seconds / 4, 30.0))
            if await self._service.unload_if_idle(seconds):
                log.info("model unloaded after %.0f s without requests", seconds)

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        await asyncio.to_thread(self._service.worker.stop)  # joins the generation thread


def create_app(service: ChatService, catalog: ModelCatalog, spec_text: str,
               options: HttpOptions = HttpOptions(), *,
               backend: Callable[[], Mapping[str, str]] = dict,
               metrics: PrometheusMetrics | None = None) -> DisconnectWatch:
    codec = ChatCodec(yaml.safe_load(spec_text))
    middleware: list[Any] = [Lifecycle(service, options)]
    if options.cors_origins:
        origins = "*" if "*" in options.cors_origins else list(options.cors_origins)
        middleware.append(falcon.CORSMiddleware(allow_origins=origins, expose_headers=["Retry-After"]))
    middleware.append(Perimeter(options.allowed_hosts))  # Host and path before the key
    if options.api_key:
        open_paths = OPEN_PATHS if options.metrics_auth else OPEN_PATHS | {"/metrics"}
        middleware.append(ApiKeyAuth(options.api_key, open_paths))
    observability = ObservabilityMiddleware(metrics)
    middleware.insert(0, observability)  # first in, last out: sees it all
    app: AsgiApp = falcon.asgi.App(middleware=middleware)
    app.req_options.strip_url_path_trailing_slash = True
    models = ModelsResource(service, catalog, codec)
    app.add_route("/health", HealthResource(service, backend, lambda: observability.gate.draining))
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="one")
    app.add_route("/v1/chat/completions",
                  ChatCompletionsResource(service, codec, options.max_body_bytes,
                                          body_timeout=options.body_timeout))
    app.add_route("/openapi.yaml", SpecResource(spec_text))
    if metrics is not None:
        app.add_route("/metrics", MetricsResource(metrics))
    errors.install(app)
    return DisconnectWatch(app)

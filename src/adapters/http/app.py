"""The Falcon ASGI application: routes, error envelope, startup and shutdown."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import falcon
import falcon.asgi
import yaml

from ...domain.chat import ChatService
from ...domain.ports import ResponseStore
from ..metrics import PrometheusMetrics
from ..response_store import MemoryResponseStore
from . import errors
from .codec import ChatCodec
from .completions import CompletionCodec, CompletionsResource
from .disconnect import DisconnectWatch
from .errors import AsgiApp
from .messages import MessagesResource
from .messages_codec import MessagesCodec
from .observability import MetricsResource, ObservabilityMiddleware
from .perimeter import Perimeter
from .resources import (
    ChatCompletionsResource,
    HealthResource,
    ModelsResource,
    ServerInfoResource,
    SpecResource,
)
from .responses import ResponsesResource, StoredResponseResource
from .responses_codec import ResponsesCodec
from .security import OPEN_PATHS, ApiKeyAuth
from .webui import add_chat_page

ROUTER_PROBES = ("/server_info", "/get_server_info", "/model_info", "/get_model_info")


@attrs.frozen(kw_only=True)
class HttpOptions:
    """The HTTP layer's own settings; their defaults are Settings' (app/config.py)."""

    max_body_bytes: int
    api_key: str | None  # required on every path but /health, the spec, the page (and /metrics)
    metrics_auth: bool  # /metrics needs the API key too
    cors_origins: tuple[str, ...]  # browser origins allowed
    # Host names answered beyond loopback ones; None: any (see perimeter.allowed_hosts_for)
    allowed_hosts: tuple[str, ...] | None
    body_timeout: float  # seconds a request body may take to arrive whole
    # the Responses API's store of responses: at most this many, of at most this many bytes
    responses_max_count: int
    responses_max_bytes: int


class Lifespan:
    """ASGI startup and shutdown, translated: the service starts (preload, idle unload) and
    stops (the generation thread joined)."""

    def __init__(self, service: ChatService) -> None:
        self._service = service

    async def process_startup(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self._service.start()

    async def process_shutdown(self, scope: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        await self._service.stop()


def create_app(service: ChatService, spec_text: str, options: HttpOptions, *,
               backend: Callable[[], Mapping[str, str]] = dict,
               metrics: PrometheusMetrics | None = None,
               responses: ResponseStore | None = None) -> DisconnectWatch:
    spec = yaml.safe_load(spec_text)
    responses = responses or MemoryResponseStore(options.responses_max_count,
                                                 options.responses_max_bytes)
    codec = ChatCodec(spec)
    middleware: list[Any] = [Lifespan(service)]
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
    models = ModelsResource(service, codec)
    app.add_route("/health", HealthResource(service, backend, lambda: observability.gate.draining))
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="one")
    app.add_route("/v1/chat/completions",
                  ChatCompletionsResource(service, codec, options.max_body_bytes,
                                          body_timeout=options.body_timeout))
    app.add_route("/v1/completions",
                  CompletionsResource(service, CompletionCodec(spec), options.max_body_bytes,
                                      body_timeout=options.body_timeout))
    messages = MessagesResource(service, MessagesCodec(spec), options.max_body_bytes,
                                body_timeout=options.body_timeout)
    app.add_route("/v1/messages", messages)  # Anthropic's API
    app.add_route("/v1/messages/count_tokens", messages, suffix="count")
    app.add_route("/v1/responses", ResponsesResource(  # OpenAI's Responses API
        service, ResponsesCodec(spec, responses), responses, options.max_body_bytes,
        body_timeout=options.body_timeout))
    app.add_route("/v1/responses/{response_id}", StoredResponseResource(responses))
    app.add_route("/openapi.yaml", SpecResource(spec_text))
    add_chat_page(app)  # "/": the chat page (webui.py)
    info = ServerInfoResource(service)
    for path in ROUTER_PROBES:  # sglang-router's, before it routes here (README "Fleet")
        app.add_route(path, info)
    if metrics is not None:
        app.add_route("/metrics", MetricsResource(metrics))
    errors.install(app)
    return DisconnectWatch(app)

"""Every error leaves as OpenAI's envelope: {"error": {"message", "type", "param", "code"}};
on Anthropic's routes (/v1/messages...) as Anthropic's: {"type": "error", "error": {"type",
"message"}}, with Anthropic's status for an overloaded server (529)."""

from __future__ import annotations

import logging
from typing import Any

import falcon
import falcon.asgi

from ...domain.errors import (
    DomainError,
    EngineFailure,
    EngineUnavailable,
    ModelNotFound,
    ModelUnavailable,
    ResponseNotFound,
    ServerBusy,
)
from .security import normalised

log = logging.getLogger(__name__)
AsgiApp = falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]

_HTTP_CODES = {401: "invalid_api_key", 404: "unknown_url", 405: "method_not_allowed", 408: "request_timeout",
               413: "request_too_large", 415: "unsupported_media_type", 400: "invalid_request",
               421: "host_not_allowed"}


MESSAGES_PREFIX = "/v1/messages"  # Anthropic's API: its own error envelope
OVERLOADED = 529  # Anthropic's status for an overloaded API (the SDK's OverloadedError, retried)
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", OVERLOADED: "overloaded_error"}


def is_messages_route(path: str) -> bool:
    """Whether `path` is Anthropic's API here (any spelling the router would take for it)."""
    path = normalised(path)
    return path == MESSAGES_PREFIX or path.startswith(MESSAGES_PREFIX + "/")


def anthropic_envelope(message: str, status: int, *, kind: str | None = None) -> dict[str, Any]:
    """Anthropic's error body; `kind` overrides the type its status implies."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    return {"type": "error",
            "error": {"type": kind or _ANTHROPIC_TYPES.get(status, default), "message": message}}


def error_body(req: falcon.asgi.Request, message: str, status: int, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """The envelope the route of `req` speaks."""
    if is_messages_route(req.path):
        kind = "overloaded_error" if code in ("server_busy", "server_shutting_down") else None
        return anthropic_envelope(message, status, kind=kind)
    return envelope(message, status, param=param, code=code)


def status_on(req: falcon.asgi.Request, error: DomainError) -> int:
    """The status of `error` on the route of `req`: a busy server is 529 on Anthropic's."""
    if isinstance(error, ServerBusy) and is_messages_route(req.path):
        return OVERLOADED
    return status_of(error)


def status_of(error: DomainError) -> int:
    if isinstance(error, ModelNotFound | ResponseNotFound):
        return 404
    if isinstance(error, ModelUnavailable | ServerBusy | EngineUnavailable):
        return 503
    if isinstance(error, EngineFailure):
        return 500
    return 400


def envelope(message: str, status: int, *, param: str | None = None,
             code: str | None = None) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def domain_envelope(error: DomainError) -> dict[str, Any]:
    return envelope(error.message, status_of(error), param=error.param, code=error.code)


async def on_domain_error(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                          error: DomainError, params: dict[str, Any]) -> None:
    if isinstance(error, EngineFailure):
        log.error("inference failed: %s", error.message)
    resp.status = status = status_on(req, error)
    resp.media = error_body(req, error.message, status, param=error.param, code=error.code)
    if isinstance(error, ServerBusy | EngineUnavailable):
        resp.set_header("Retry-After", str(error.retry_after))


async def on_http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                        error: falcon.HTTPError, params: dict[str, Any]) -> None:
    status = error.status_code
    if status == 404:
        message = f"Invalid URL ({req.method} {req.path})"
    elif status == 405:
        message = f"Method {req.method} is not allowed on {req.path}."
    else:
        message = error.description or error.title or "Request error"
    resp.status = status
    code = _HTTP_CODES.get(status) or (str(error.code) if error.code else None)
    resp.media = error_body(req, message, status, code=code)
    if error.headers:
        resp.set_headers(error.headers)


async def on_unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response,
                        error: Exception, params: dict[str, Any]) -> None:
    log.exception("unhandled error on %s %s", req.method, req.path, exc_info=error)
    resp.status = 500
    resp.media = error_body(req, "The server had an error while processing your request.", 500,
                            code="server_error")


def install(app: AsgiApp) -> None:
    # Falcon picks the most specific handler, so the order here does not matter.
    app.add_error_handler(Exception, on_unexpected)
    app.add_error_handler(falcon.HTTPError, on_http_error)
    app.add_error_handler(DomainError, on_domain_error)

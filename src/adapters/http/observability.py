"""Request IDs, one access log line per request, HTTP metrics, /metrics, and refusing new work
while the server shuts down.

The chat resource hands its outcome (a Completion, or the domain's ChatStream, which notes its
own start and end) to `served`; the middleware logs its model, token counts and time to first
token when the response (or the stream) ends. Those figures are the domain's, the very ones the
generation metrics record: nothing here watches the events go by.
"""

from __future__ import annotations

import logging
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any, Protocol, TypeVar

import falcon
import falcon.asgi
from prometheus_client import CONTENT_TYPE_LATEST

from ...domain.completion import Usage
from ...domain.errors import RETRY_AFTER
from ..metrics import PrometheusMetrics
from .errors import error_body

access_log = logging.getLogger("mlx_server.access")
REQUEST_ID = "X-Request-ID"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def request_id(incoming: str | None) -> str:
    """The client's X-Request-ID, cut to 128 safe characters; a fresh one if nothing is left."""
    cleaned = _UNSAFE.sub("", incoming or "")[:128]
    return cleaned or uuid.uuid4().hex


# -- what the resources report ---------------------------------------------------------------------

class Served(Protocol):
    """What the access log reports of a chat: a Completion, or a ChatStream as far as it got."""

    @property
    def model(self) -> str | None: ...

    @property
    def usage(self) -> Usage | None: ...

    @property
    def ttft(self) -> float | None: ...


S = TypeVar("S", bound=Served)


def served(req: falcon.asgi.Request, outcome: S) -> S:
    """Keep `outcome` for the access line; returns it unchanged."""
    req.context.served = outcome
    return outcome


# -- shutdown ----------------------------------------------------------------------------------

class ShutdownGate:
    """Set on SIGTERM: from then on /v1/* answers 503 while running requests finish.

    Installed at ASGI startup, so it wraps the server's own SIGTERM handler (uvicorn's, which stops
    accepting connections and waits for running ones) and then hands the signal on to it.
    """

    def __init__(self) -> None:
        self.draining = False
        self._previous: _SignalHandler = None

    def begin(self) -> None:
        if not self.draining:
            access_log.info("shutting down: refusing new work, finishing running requests")
        self.draining = True

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: the server owns the signals
            self._previous = None

    def uninstall(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.begin()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


# -- the middleware ----------------------------------------------------------------------------

class ObservabilityMiddleware:
    def __init__(self, metrics: PrometheusMetrics | None = None,
                 gate: ShutdownGate | None = None) -> None:
        self.metrics = metrics
        self.gate = gate or ShutdownGate()

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        self.gate.install()

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        self.gate.uninstall()

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        req.context.started = time.perf_counter()
        req.context.request_id = request_id(req.get_header(REQUEST_ID))
        resp.set_header(REQUEST_ID, req.context.request_id)
        if self.gate.draining and req.path.startswith("/v1/"):
            resp.status = 503
            resp.media = error_body(req, "The server is shutting down and takes no new requests. "
                                    "Retry shortly.", 503, code="server_shutting_down")
            resp.set_header("Retry-After", str(RETRY_AFTER))
            resp.complete = True

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, req_succeeded: bool) -> None:
        if "started" not in req.context:  # failed before process_request ran
            req.context.started = time.perf_counter()
            req.context.request_id = request_id(req.get_header(REQUEST_ID))
            resp.set_header(REQUEST_ID, req.context.request_id)
        status = falcon.http_status_to_code(resp.status)
        stream = resp.stream
        if resp.sse is not None:  # logged when the stream ends (or the client goes away)
            resp.sse = _observed_events(resp.sse, lambda: self._finish(req, status))
        elif stream is not None and not hasattr(stream, "read"):
            resp.stream = _ObservedStream(stream, lambda: self._finish(req, status))
        else:
            self._finish(req, status)

    def _finish(self, req: falcon.asgi.Request, status: int) -> None:
        seconds = time.perf_counter() - req.context.started
        route = req.uri_template or "unmatched"
        if self.metrics is not None:
            self.metrics.http_request(req.method, route, status, seconds)
        fields = access_fields(req, route, status, seconds)
        access_log.info(" ".join(f"{key}={value}" for key, value in fields.items()),
                        extra={"access": fields})


def access_fields(req: falcon.asgi.Request, route: str, status: int,
                  seconds: float) -> dict[str, str]:
    outcome: Served | None = req.context.get("served")
    usage = outcome.usage if outcome else None
    ttft = outcome.ttft if outcome else None
    model = outcome.model if outcome else None
    return {"id": req.context.request_id, "method": req.method, "route": route,
            "status": str(status), "model": model or "-",
            "prompt_tokens": str(usage.prompt_tokens) if usage else "-",
            "completion_tokens": str(usage.completion_tokens) if usage else "-",
            "cached_tokens": str(usage.cached_tokens) if usage else "-",
            "ttft": f"{ttft:.4f}" if ttft is not None else "-", "total": f"{seconds:.4f}"}


async def _observed_events(events: AsyncIterator[Any], done: Callable[[], None]) -> AsyncIterator[Any]:
    """Falcon stops iterating SSE at a client that went away without closing the iterator; this
    generator is then finalised (closed) when dropped, which ends the inner one too."""
    try:
        async for event in events:
            yield event
    finally:
        try:
            await events.aclose()  # type: ignore[attr-defined]
        finally:
            done()


class _ObservedStream:
    """A response body that reports when it ends: exhausted, failed, or closed by Falcon because the
    client went away. Falcon closes bodies through `close()`, so this also closes the inner one."""

    def __init__(self, inner: AsyncIterator[bytes], done: Callable[[], None]) -> None:
        self._inner, self._done = inner, done
        self._finished = False

    def __aiter__(self) -> _ObservedStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._inner)
        except BaseException:
            self._finish()
            raise

    async def close(self) -> None:
        try:
            aclose = getattr(self._inner, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._finish()

    def _finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._done()


class MetricsResource:
    """`GET /metrics`: Prometheus text exposition."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = self._metrics.render()

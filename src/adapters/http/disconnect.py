"""Notice a client that goes away while its request is still being worked on.

A streamed answer's status line goes out only after the prefill (so that setup errors still get a
real status), and a non-streamed one only at the end; until then nothing reads from the connection,
so a client that leaves would go unnoticed and its request would hold the model. `DisconnectWatch`
wraps the ASGI app: once the request body is read it listens for `http.disconnect` and sets an
event in the scope; `while_connected` races a use-case call against that event and cancels it.

It also decides two things before Falcon sees a request, because Falcon decides them badly:
- An HTTP version ASGI does not define (`HTTP/2.0` or `HTTP/0.9` on an HTTP/1 connection) makes
  Falcon raise before any handler runs (a plain-text 500): it is a 400 in OpenAI's envelope here.
- Falcon waits for a first body event before any middleware runs. Asking for the body is what
  makes uvicorn answer `Expect: 100-continue`, and a client that then sends nothing held the
  request before the Host, key and media-type checks, and before the body deadline, which only the
  resource applies (`json_body.read_body`). Falcon gets an empty first event instead, so the
  header checks answer before a byte of the body is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

from .errors import envelope

T = TypeVar("T")
GONE = "mlx_server.client_gone"  # scope key: an asyncio.Event, set when the client disconnects
Message = dict[str, Any]
ASGI_HTTP_VERSIONS = ("1.0", "1.1", "2")
_NOTHING_YET: Message = {"type": "http.request", "body": b"", "more_body": True}


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class DisconnectWatch:
    """ASGI middleware: `scope[GONE]` is set as soon as the client disconnects. The app's own
    later `receive()` calls (Falcon's SSE watcher) get the disconnect from the same event."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("http_version", "1.1") not in ASGI_HTTP_VERSIONS:  # ASGI: absent is 1.1
            await _refuse_version(str(scope["http_version"]), send)
            return
        gone = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        asked = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def app_receive() -> Message:
            nonlocal watcher, asked
            if not asked:  # Falcon's own first call: nothing is asked of the client yet
                asked = True
                return _NOTHING_YET
            if watcher is None:  # still reading the body
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                elif not message.get("more_body", False):
                    watcher = asyncio.create_task(watch())
                return message
            await gone.wait()
            return {"type": "http.disconnect"}

        try:
            await self.app({**scope, GONE: gone}, app_receive, send)
        finally:
            if watcher is not None:
                watcher.cancel()


async def _refuse_version(version: str, send: Any) -> None:
    body = json.dumps(envelope(f"HTTP/{version[:10]} is not supported here: send HTTP/1.1.", 400,
                               code="unsupported_http_version")).encode()
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def while_connected(scope: Mapping[str, Any], work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientGone."""
    gone: asyncio.Event | None = scope.get(GONE)
    if gone is None:
        return await work
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(gone.wait())
    try:
        done, _ = await asyncio.wait((task, waiter), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        waiter.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientGone

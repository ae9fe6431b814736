"""Notice a client that goes away while its request is still being worked on.

A streamed answer's status line goes out only after the prefill (so that setup errors still get a
real status), and a non-streamed one only at the end; until then nothing reads from the connection,
so a client that leaves would go unnoticed and its request would hold the model. `DisconnectWatch`
wraps the ASGI app: once the request body is read it listens for `http.disconnect` and sets an
event in the scope; `while_connected` races a use-case call against that event and cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
GONE = "mlx_server.client_gone"  # scope key: an asyncio.Event, set when the client disconnects
Message = dict[str, Any]


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
        gone = asyncio.Event()
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        async def app_receive() -> Message:
            nonlocal watcher
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

"""The ASGI disconnect watch: a client that hangs up is noticed before any answer is sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mlx_server.adapters.http.disconnect import GONE, ClientGone, DisconnectWatch, while_connected


def client(hang_up: asyncio.Event) -> Any:
    """An ASGI receive: the body in two parts, then a disconnect once `hang_up` is set."""
    messages = [{"type": "http.request", "body": b"{}", "more_body": True},
                {"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await hang_up.wait()
        return {"type": "http.disconnect"}

    return receive


def test_a_hang_up_cancels_the_work_and_later_receives_see_it() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        work = asyncio.ensure_future(asyncio.sleep(30))
        with pytest.raises(ClientGone):
            await while_connected(scope, work)
        seen["work_cancelled"] = work.cancelled()
        seen["next_receive"] = await receive()  # as Falcon's SSE watcher would call it

    async def run() -> None:
        hang_up = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, hang_up.set)
        await asyncio.wait_for(DisconnectWatch(app)({"type": "http"}, client(hang_up), None), 5)

    asyncio.run(run())
    assert seen == {"work_cancelled": True, "next_receive": {"type": "http.disconnect"}}


def test_a_client_that_stays_gets_the_result() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        assert not scope[GONE].is_set()
        await send(await while_connected(scope, asyncio.sleep(0.01, result="answer")))

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(DisconnectWatch(app)({"type": "http"}, client(asyncio.Event()), send))
    assert sent == ["answer"]


def test_other_scopes_pass_through_untouched() -> None:
    scopes: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scopes.append(scope)

    asyncio.run(DisconnectWatch(app)({"type": "lifespan"}, None, None))
    assert scopes == [{"type": "lifespan"}]

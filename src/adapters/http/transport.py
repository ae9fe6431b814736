"""uvicorn's HTTP/1.1 protocol with two more deadlines: for a connection that never sends a request,
and for a request head that trickles in (slowloris).

uvicorn (0.54, h11) starts its keep-alive timer only after a response and cancels it on the first
byte that comes in: a connection that never sends anything, or that sends its request line and
headers a byte every few seconds, stays open forever (tests/e2e/test_timeouts.py shows both). A few
hundred such sockets exhaust the file descriptors of a server that runs one process.

`HeadDeadlineProtocol` starts the keep-alive timer when the connection opens too, and gives a
request `head_timeout` seconds from its first byte to its last header; else it closes the
connection. h11 also bounds the head's size (16 KiB). The body's deadline is the app's
(`--body-timeout`, 408): only the app knows when it reads one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeadDeadlineProtocol(H11Protocol):
    head_timeout: float = 10.0  # seconds; set per server by `head_deadline_protocol`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(  # idle from the start, not only later
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        before = self.cycle  # a new cycle is made once a whole request head is parsed
        super().data_received(data)
        if self.cycle is not before:
            self._stop_head_timer()
        elif self._head_timer is None and (before is None or before.response_complete):
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out, before)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self, waiting_after: Any) -> None:
        self._head_timer = None
        if self.cycle is waiting_after and not self.transport.is_closing():
            log.info("closing a connection whose request head did not arrive within %g s",
                     self.head_timeout)
            self.transport.close()


def head_deadline_protocol(seconds: float) -> type[HeadDeadlineProtocol]:
    """The protocol class to hand uvicorn (`http=`), with its deadline."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout": seconds})

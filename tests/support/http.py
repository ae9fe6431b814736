"""A Falcon test client whose simulated client stays connected until the response ends.

Falcon's stock TestClient marks the client disconnected as soon as the request is sent; an SSE
response (rightly) stops at a client that went away, so streams would be cut short. This one
waits for the whole response, as a real client does. It also calls the server by a loopback name
(`Host: 127.0.0.1`) as a local client does: Falcon's default, falconframework.org, is refused (421).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import falcon.testing


class ConnectedTestClient(falcon.testing.TestClient):
    def simulate_request(self, *args: Any, **kwargs: Any) -> falcon.testing.Result:
        kwargs.setdefault("host", "127.0.0.1")  # the server answers loopback names only
        if self._default_headers:
            kwargs["headers"] = {**self._default_headers, **(kwargs.get("headers") or {})}
        return asyncio.run(self._whole_response(*args, **kwargs))

    async def _whole_response(self, *args: Any, **kwargs: Any) -> falcon.testing.Result:
        async with falcon.testing.ASGIConductor(self.app) as conductor:
            streamed = await conductor.simulate_request(*args, _stream_result=True, **kwargs)
            await streamed._task  # NOTE: the app finished sending; only then does the client leave
            body = await streamed.stream.read()
            await streamed.finalize()
        return falcon.testing.Result([body], streamed.status, list(streamed.headers.items()))


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """A stream of named server-sent events (Anthropic's, the Responses API's), each checked:
    `event:` names its data's `type` (Anthropic's `error` event aside)."""
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            name, data = block.split("\n", 1)
            assert name.startswith("event: ") and data.startswith("data: ")
            payload = json.loads(data[6:])
            assert payload["type"] == name[7:] or name == "event: error"
            out.append((name[7:], payload))
    return out

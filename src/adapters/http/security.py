"""Optional API key on /v1/*: `Authorization: Bearer KEY`, compared in constant time."""

from __future__ import annotations

import hmac

import falcon
import falcon.asgi


class ApiKeyAuth:
    """Falcon middleware. /health and the spec stay open; CORS preflights pass."""

    def __init__(self, key: str) -> None:
        self._expected = f"Bearer {key}".encode()

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if not req.path.startswith("/v1/") or req.method == "OPTIONS":
            return
        given = (req.get_header("Authorization") or "").encode()
        if not hmac.compare_digest(given, self._expected):
            raise falcon.HTTPUnauthorized(
                title="invalid_api_key", challenges=["Bearer"],
                description="Incorrect or missing API key: send 'Authorization: Bearer <key>' with "
                            "the key the server was started with (--api-key).")

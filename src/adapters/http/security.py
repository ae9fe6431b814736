"""Optional API key: with `--api-key`, every path needs `Authorization: Bearer KEY` (OpenAI's
clients) or `x-api-key: KEY` (Anthropic's) except a short list of open ones. Both headers are
taken on every route: one key, one check, and a client of either family may call any route
(Anthropic's SDK lists models too); a route-by-route rule would be one more list to keep right.

Default-deny, because a check that lists what it protects ("/v1/...") misses every other spelling
the router also accepts (`//v1/...`) and every route added later. The open list is compared on the
path as the router sees it (percent-decoded, slashes collapsed, no trailing slash), so no spelling
of a protected route can look open. The key is compared in constant time over fixed-length digests,
so neither its content nor its length leaks through timing.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import falcon
import falcon.asgi

from .webui import PAGE_PATHS

# the chat page's files (webui.py) are open by their exact paths: "/", "/ui/app.js", "/ui/style.css"
OPEN_PATHS = frozenset({"/health", "/openapi.yaml"}) | PAGE_PATHS
_SLASHES = re.compile(r"/+")


def normalised(path: str) -> str:
    """`path` with repeated slashes collapsed and no trailing slash (Falcon has decoded it)."""
    collapsed = _SLASHES.sub("/", path)
    return collapsed.rstrip("/") or "/"


def bearer_token(header: str | None) -> str | None:
    """The credentials of `Authorization: Bearer TOKEN`; the scheme is case-insensitive
    (RFC 9110 section 11.1). None for another scheme or none."""
    scheme, _, token = (header or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class ApiKeyAuth:
    """Falcon middleware. `open_paths` stay open (/health, the spec, the chat page's files;
    /metrics unless --metrics-auth); CORS preflights pass, since browsers never send credentials with them."""

    def __init__(self, key: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self._expected = _digest(key)
        self._open = frozenset(normalised(path) for path in open_paths)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if normalised(req.path) in self._open or _is_preflight(req):
            return
        tokens = [token for token in (bearer_token(req.get_header("Authorization")),
                                      _plain(req.get_header("X-Api-Key"))) if token is not None]
        # every key sent must be right: a wrong one is never excused by a right one beside it
        if not tokens or not all(hmac.compare_digest(_digest(token), self._expected)
                                 for token in tokens):
            raise falcon.HTTPUnauthorized(
                title="invalid_api_key", challenges=["Bearer"],
                description="Incorrect or missing API key: send 'Authorization: Bearer <key>' (or "
                            "'x-api-key: <key>') with the key the server was started with "
                            "(--api-key).")


def _plain(header: str | None) -> str | None:
    """The key in `x-api-key: KEY`, None when absent or blank."""
    return header.strip() or None if header is not None else None


def _is_preflight(req: falcon.asgi.Request) -> bool:
    return req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method") is not None

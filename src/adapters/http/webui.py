"""The chat page at "/": three static files shipped in the package (static/), served as they are.

No build step and nothing from another origin: the page's script talks only to this server's own
/v1 API. The files are open (they hold no data; `/v1` keeps its key), exactly these paths and no
prefix, so no spelling of a protected route can pass as a page file (security.OPEN_PATHS).

The Content-Security-Policy is the second wall behind the page's own rule (model text and tool
results are put in the page as text nodes, never parsed as HTML): even if a rendering bug did let
markup in, no inline script, event handler attribute, inline style, plugin or other origin would
run or load. Images may be `data:`/`blob:` (attachments and their thumbnails).
"""

from __future__ import annotations

from importlib import resources

import falcon
import falcon.asgi

# path -> (file in static/, Content-Type)
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(PAGE_FILES)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new server version's page is seen at once
}


def read_static(name: str) -> bytes:
    """A file of the page, from the installed package (a wheel, or src/ in a checkout)."""
    return (resources.files(__package__ or __name__) / "static" / name).read_bytes()


class StaticFile:
    """One file of the page, read once at start-up."""

    def __init__(self, name: str, content_type: str) -> None:
        self._body, self._content_type = read_static(name), content_type

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = self._content_type
        resp.set_headers(PAGE_HEADERS)
        resp.data = self._body


def add_chat_page(app: falcon.asgi.App[falcon.asgi.Request, falcon.asgi.Response]) -> None:
    for path, (name, content_type) in PAGE_FILES.items():
        app.add_route(path, StaticFile(name, content_type))

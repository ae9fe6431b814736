"""What a request must look like before any route runs: a Host the server answers to, a canonical
path, and, for a body, JSON declared as JSON.

Why each check:
- Host (DNS rebinding, CVE-2024-28224 in Ollama): a web page on evil.example can make its own name
  resolve to 127.0.0.1 and then talk to a loopback server as a same-origin page; the only trace is
  its Host header. So a server bound to loopback answers only loopback names and `--allowed-hosts`.
- Canonical path: routing tolerates `//v1/models` and the like while a check on the path string may
  not; refusing every non-canonical form (doubled slashes, `.`/`..` segments) with 404 leaves one
  spelling per route for the router and the API key check alike.
- Content-Type: a page may POST `text/plain`, form or multipart bodies to any origin without a CORS
  preflight; `application/json` needs one, which `--cors-origins` then refuses. A JSON body declared
  as anything else is refused (415) before a byte of it is read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import falcon
import falcon.asgi

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_CHARSETS = frozenset({"utf-8", "utf8"})  # JSON is UTF-8 (RFC 8259)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")


# -- Host --------------------------------------------------------------------------------------

def is_loopback(name: str) -> bool:
    """`localhost`, any 127.x, `::1` (bracketed or not): a bind address or a Host name."""
    name = name.strip().lower().rstrip(".")
    if name == "localhost":
        return True
    bracketed = name.startswith("[") and name.endswith("]")
    try:
        address = ipaddress.ip_address(name[1:-1] if bracketed else name)
    except ValueError:
        return False
    if bracketed and address.version != 6:  # brackets hold IPv6 literals only (RFC 3986)
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def host_name(header: str) -> str | None:
    """The name in a Host header: lowercased, without port and trailing dot; None if malformed."""
    value = header.strip().lower()
    if value.startswith("["):  # [v6] or [v6]:port
        inside, bracket, port = value[1:].partition("]")
        name, chars = f"[{inside}]" if bracket and inside else "", _NAME_CHARS | {":", "[", "]"}
    else:
        name, colon, port = value.partition(":")
        port, chars = colon + port, _NAME_CHARS
    name = name.rstrip(".")
    digits = port[1:]
    valid = port in ("", ":") or (port[0] == ":" and digits.isascii() and digits.isdigit()
                                  and len(digits) <= 5 and int(digits) <= 65535)
    return name if valid and name and set(name) <= chars else None


def allowed_hosts_for(bind: str, configured: Iterable[str]) -> tuple[str, ...] | None:
    """The Host names the server answers to beyond loopback ones, or None for any Host: a server
    bound to a public address is reached under names it cannot know, unless it is told them."""
    names = tuple(name.strip().lower().rstrip(".") for name in configured if name.strip())
    if "*" in names or (not names and not is_loopback(bind)):
        return None
    return names


class Perimeter:
    """Falcon middleware, ahead of the API key check: Host, then path, then the body's type."""

    def __init__(self, allowed_hosts: tuple[str, ...] | None = ()) -> None:
        self._allowed = None if allowed_hosts is None else frozenset(allowed_hosts)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        self._check_host(req.get_header("Host"), str(req.scope.get("http_version", "1.1")))
        if not is_canonical(req.path):
            raise falcon.HTTPNotFound()

    async def process_resource(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, params: dict[str, object]) -> None:
        if (req.method in BODY_METHODS and _answers(resource, req.method)
                and not is_json(req.get_header("Content-Type"))):
            raise falcon.HTTPUnsupportedMediaType(description=(
                f"Unsupported Content-Type {req.get_header('Content-Type') or '(none)'!r}: "
                "send the body as JSON with 'Content-Type: application/json'."))

    def _check_host(self, header: str | None, http_version: str) -> None:
        if header is None:
            if self._allowed is not None or http_version not in ("1.0", "0.9"):
                raise falcon.HTTPBadRequest(description="The request has no Host header.")
            return
        if self._allowed is None:
            return
        name = host_name(header)
        if name is None or not (is_loopback(name) or name in self._allowed):
            raise falcon.HTTPError(
                falcon.HTTP_421, description=(
                    f"This server does not answer to the host {header[:100]!r}. It serves loopback "
                    "names (localhost, 127.0.0.1, [::1]); if you reach it under another name, start "
                    "it with --allowed-hosts NAME[,NAME...] (or MLX_SERVER_ALLOWED_HOSTS)."))


# -- path and body -----------------------------------------------------------------------------

def _answers(resource: object, method: str) -> bool:
    """Whether `resource` has a responder for `method` (`on_post`, `on_post_<suffix>`): a method
    the route does not take is Falcon's 405, whatever the body."""
    prefix = f"on_{method.lower()}"
    return any(name == prefix or name.startswith(prefix + "_") for name in dir(resource))


def is_canonical(path: str) -> bool:
    """One spelling per resource: absolute, no empty segment (`//`), no `.` or `..` segment; one
    trailing slash is allowed (the router strips it, clients add it). The path is the
    percent-decoded one the router matches, so `%2F%2F` counts as `//`."""
    if not path.startswith("/"):
        return False
    segments = path[1:].removesuffix("/").split("/")
    if segments == [""]:  # "/" itself
        return True
    return all(segment not in ("", ".", "..") for segment in segments)


def is_json(content_type: str | None) -> bool:
    """`application/json`, any case, optionally with a UTF-8 charset and other parameters."""
    if not content_type:
        return False
    media_type, params = falcon.parse_header(content_type)
    charset = params.get("charset")
    return (media_type.strip().lower() == "application/json"
            and (charset is None or charset.lower() in JSON_CHARSETS))

"""Fetching image URLs safely: scheme and address policy, pinned connections, limits.

Why httpx: it is already installed (the `openai` SDK depends on it), it is async-native, it streams
bodies so the byte limit is enforced while reading, it has separate connect/read timeouts, and its
transport layer is usable on its own (`AsyncHTTPTransport.handle_async_request`): no redirect
following (each hop is checked here instead), no environment proxies, no cookies, and an injectable
seam that lets tests prove a refused URL never reaches the network. Its `sni_hostname` request
extension (handled by httpcore) lets us connect to an IP address we checked while TLS still sends
SNI for, and verifies the certificate against, the URL's hostname.

Server-side request forgery: every hop's host is resolved (by an injectable resolver), and the hop is
refused if *any* resolved address is not public (see `is_public_address`). The request then goes to
the checked IP itself (the URL's host is rewritten to it, the original `Host` header is sent), so a
second DNS answer cannot slip a private address past the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

import attrs
import httpx

from ...domain.errors import InvalidImageUrl

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
AddressCheck = Callable[[IPAddress], bool]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


@attrs.frozen
class ImagePolicy:
    max_bytes: int = 20 * 1024 * 1024
    # 40 megapixels: every 8K screenshot (33 MP) and common camera photo fits, while the worst
    # decoded image stays near 160 MB (RGBA) + 120 MB (RGB copy); it is also below Pillow's own
    # bomb warning (89 MP), so Pillow's process-wide limit never fires first.
    max_pixels: int = 40_000_000
    connect_timeout: float = 5.0
    total_timeout: float = 20.0
    max_redirects: int = 3
    allow_private: bool = False  # --allow-private-image-urls


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` may be fetched from by default: a globally routable unicast address.

    Loopback, private, link-local, multicast, reserved, unspecified, shared (CGNAT) and site-local
    are refused. IPv6 forms that embed an IPv4 address (IPv4-mapped, 6to4, NAT64) are judged by the
    embedded address; Teredo is refused outright.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
        if address.teredo is not None or address.is_site_local:
            return False
    flags = (address.is_private, address.is_loopback, address.is_link_local, address.is_multicast,
             address.is_reserved, address.is_unspecified)
    return address.is_global and not any(flags)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def parse_address(text: str) -> IPAddress | None:
    """The IP address `text` spells (IPv6 zone ids and brackets allowed), or None."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


async def default_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


@attrs.frozen
class _Hop:
    url: httpx.URL  # as the client wrote it (redirects are joined against it)
    host: str  # ASCII (IDNA) hostname or IP literal, no brackets
    port: int


def parse_http_url(url: str, param: str) -> _Hop:
    """Accept only absolute http(s) URLs with a host; everything else is InvalidImageUrl."""
    try:
        parsed = httpx.URL(url)
        scheme, raw_host = parsed.scheme, parsed.raw_host.decode("ascii")
        port = parsed.port or (443 if scheme == "https" else 80)
    except Exception:
        raise InvalidImageUrl("the image URL is not a valid URL", param=param) from None
    if scheme not in ("http", "https"):
        shown = scheme or "(none)"
        raise InvalidImageUrl(f"image URL scheme {shown!r} is not allowed; use https, http or a "
                              "data: URI", param=param)
    if not raw_host:
        raise InvalidImageUrl("the image URL has no host", param=param)
    if not 0 < port < 65536:
        raise InvalidImageUrl(f"the image URL's port {port} is out of range", param=param)
    return _Hop(parsed, raw_host.strip("[]"), port)


class Fetcher:
    """Downloads one image URL under an `ImagePolicy`; raises only InvalidImageUrl."""

    def __init__(self, policy: ImagePolicy, resolver: Resolver | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 is_allowed_address: AddressCheck | None = None) -> None:
        self._policy = policy
        self._resolve = resolver or default_resolver
        self._transport = transport
        self._allowed = is_allowed_address or (
            (lambda _address: True) if policy.allow_private else is_public_address)

    async def fetch(self, url: str, *, param: str) -> bytes:
        hop = parse_http_url(url, param)
        try:
            async with asyncio.timeout(self._policy.total_timeout):
                return await self._follow(hop, param)
        except TimeoutError:
            raise InvalidImageUrl(f"fetching the image timed out after {self._policy.total_timeout:g}s",
                                  param=param) from None
        except InvalidImageUrl:
            raise
        except Exception:
            raise InvalidImageUrl("the image URL could not be fetched", param=param) from None

    async def _follow(self, hop: _Hop, param: str) -> bytes:
        async with self._transport_for_one_fetch() as transport:
            for _ in range(self._policy.max_redirects + 1):
                address = await self._checked_address(hop, param)
                location = await self._get(transport, hop, address, param)
                if isinstance(location, bytes):
                    return location
                hop = parse_http_url(str(hop.url.join(location)), param)
        raise InvalidImageUrl(f"the image URL redirected more than {self._policy.max_redirects} times",
                              param=param)

    def _transport_for_one_fetch(self) -> httpx.AsyncBaseTransport:
        """The transport is used directly, without httpx.AsyncClient: no redirect handling (each hop
        is checked here), no proxies from the environment (they would undo the pinning), no cookies.
        No keep-alive: the pool is keyed by IP, and a TLS connection made for one hostname must
        not carry a request for another hostname behind the same address."""
        if self._transport is not None:
            return _Borrowed(self._transport)
        return httpx.AsyncHTTPTransport(retries=0, limits=httpx.Limits(max_keepalive_connections=0))

    async def _checked_address(self, hop: _Hop, param: str) -> IPAddress:
        literal = parse_address(hop.host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                answers = await self._resolve(hop.host, hop.port)
                addresses = [a for a in (parse_address(str(text)) for text in answers) if a is not None]
            except Exception:
                addresses = []
            if not addresses:
                raise InvalidImageUrl(f"the image host {hop.host!r} could not be resolved", param=param)
        refused = [a for a in addresses if not self._allowed(a)]
        if refused:  # the resolved address is not echoed: it would map the server's internal DNS
            what = (f"the image URL's address {literal} is" if literal is not None
                    else f"the image host {hop.host!r} resolves to an address that is")
            raise InvalidImageUrl(f"{what} not public (loopback, private, link-local, multicast or "
                                  "reserved); refused", param=param)
        return addresses[0]

    async def _get(self, transport: httpx.AsyncBaseTransport, hop: _Hop, address: IPAddress,
                   param: str) -> bytes | str:
        """GET `hop` from `address`; the body, or the Location of a redirect."""
        timeout = httpx.Timeout(self._policy.total_timeout, connect=self._policy.connect_timeout)
        request = _pinned_request(hop, address, timeout)
        try:
            response = await transport.handle_async_request(request)
            try:
                return await self._read(response, param)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            raise InvalidImageUrl("fetching the image timed out", param=param) from None
        except (InvalidImageUrl, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise InvalidImageUrl(f"the image URL could not be fetched ({_describe(exc)})",
                                  param=param) from None

    async def _read(self, response: httpx.Response, param: str) -> bytes | str:
        status = response.status_code
        if status in _REDIRECTS and "location" in response.headers:
            return response.headers["location"]
        if not 200 <= status < 300:
            raise InvalidImageUrl(f"the image URL answered HTTP {status}", param=param)
        limit = self._policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise self._too_large(param)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise self._too_large(param)
        return bytes(body)

    def _too_large(self, param: str) -> InvalidImageUrl:
        return InvalidImageUrl(f"the image is larger than the {self._policy.max_bytes} byte limit",
                               param=param)


def _pinned_request(hop: _Hop, address: IPAddress, timeout: httpx.Timeout) -> httpx.Request:
    """A GET to `address` that still names `hop.host`: Host header, TLS SNI and certificate check."""
    authority = f"[{hop.host}]" if ":" in hop.host else hop.host
    default_port = 443 if hop.url.scheme == "https" else 80
    host_header = authority if hop.port == default_port else f"{authority}:{hop.port}"
    pinned = hop.url.copy_with(host=str(address).split("%")[0], port=hop.port)
    headers = {"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity",
               "User-Agent": "mlx-server"}
    extensions = {"sni_hostname": hop.host, "timeout": timeout.as_dict()}
    return httpx.Request("GET", pinned, headers=headers, extensions=extensions)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "TLS certificate not valid" if "CERTIFICATE_VERIFY" in str(exc) else "could not connect"
    if isinstance(exc, httpx.HTTPError):
        return type(exc).__name__
    return "unexpected error"


class _Borrowed(httpx.AsyncBaseTransport):
    """An injected transport, lent for one fetch: not closed after it."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None

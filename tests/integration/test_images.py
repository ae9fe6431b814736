"""The image loader against a hostile corpus, with a loopback HTTP server started by each test.

Traffic only ever goes to 127.0.0.1: refused URLs are proven refused before any connection by an
injected resolver and a transport that records and fails every attempt.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import io
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest
from PIL import Image

from mlx_server.adapters.images.fetch import is_public_address, parse_address
from mlx_server.adapters.images.loader import ImagePolicy, PillowImageLoader
from mlx_server.domain.errors import InvalidImage, InvalidImageUrl

PARAM = "messages[0].content[1].image_url.url"
LOCAL = ImagePolicy(allow_private=True, total_timeout=5.0)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]], Awaitable[None]]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


PNG_1X1 = encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries one tiny IDAT: nothing big is allocated."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


# -- a loopback HTTP server ---------------------------------------------------------------------

class Server:
    """Serves `routes` (path -> handler) on 127.0.0.1; records each request's headers."""

    def __init__(self, routes: dict[str, Handler], tls: ssl.SSLContext | None = None) -> None:
        self.routes, self.tls, self.seen = routes, tls, list[dict[str, str]]()
        self.port = 0
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._handlers:
            task.cancel()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            self.seen.append({"path": path, **headers})
            await self.routes[path](reader, writer, headers)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()


def body(payload: bytes, status: str = "200 OK", length: bool = True, **extra: str) -> Handler:
    async def handler(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _h: dict[str, str]) -> None:
        headers = {"Content-Type": "image/png", "Connection": "close", **extra}
        if length:
            headers["Content-Length"] = str(len(payload))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + payload)
        await writer.drain()
    return handler


def redirect(location: str) -> Handler:
    return body(b"", "302 Found", Location=location)


async def never_answers(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _h: dict[str, str]) -> None:
    await asyncio.sleep(3600)


class Refusing(httpx.AsyncBaseTransport):
    """Records and fails every request: the proof that nothing was sent."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raise AssertionError(f"a connection was attempted to {request.url}")


class Recording(httpx.AsyncHTTPTransport):
    """The real transport, recording which hosts it was asked to connect to."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(limits=httpx.Limits(max_keepalive_connections=0), **kwargs)
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        assert request.url.host == "127.0.0.1", "test traffic must stay on loopback"
        return await super().handle_async_request(request)


def resolver(table: dict[str, list[str]], calls: list[str] | None = None) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return table[host]
    return resolve


def loopback_only(address: Any) -> bool:
    """Allows the public internet and 127.0.0.1 (the test server) but no other private address."""
    return bool(is_public_address(address) or str(address) == "127.0.0.1")


async def load_from(routes: dict[str, Handler], path: str, policy: ImagePolicy = LOCAL) -> Any:
    async with Server(routes) as server:
        return await PillowImageLoader(policy).load(server.url(path), param=PARAM)


def expect(error: type[Exception], coro: Coroutine[Any, Any, Any], match: str | None = None) -> Exception:
    with pytest.raises(error, match=match) as caught:
        run(coro)
    assert getattr(caught.value, "param", None) == PARAM
    return caught.value


# -- the hostile corpus ---------------------------------------------------------------------------

def test_bad_base64() -> None:
    expect(InvalidImage, PillowImageLoader().load("data:image/png;base64,iVBOR***w0K", param=PARAM),
           "base64")


def test_text_file_named_png() -> None:
    expect(InvalidImage, load_from({"/notes.png": body(b"just some text\n")}, "/notes.png"),
           "not a PNG, JPEG, WebP or GIF")


def test_truncated_png() -> None:
    whole = encode(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    expect(InvalidImage, PillowImageLoader().load(data_uri(whole[: len(whole) // 2]), param=PARAM))


def test_one_pixel_image_is_accepted() -> None:
    loaded = run(PillowImageLoader().load(data_uri(PNG_1X1), param=PARAM))
    assert loaded.image.size == (1, 1) and loaded.image.getpixel((0, 0)) == (1, 2, 3)


def test_zero_byte_image() -> None:
    expect(InvalidImage, load_from({"/empty.png": body(b"")}, "/empty.png"), "empty")


def test_zero_byte_data_uri() -> None:
    expect(InvalidImage, PillowImageLoader().load("data:image/png;base64,", param=PARAM), "empty")


def test_png_declaring_30000x30000_pixels() -> None:
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 100
    expect(InvalidImage, PillowImageLoader().load(data_uri(bomb), param=PARAM), "too many pixels")


def test_pixel_limit_is_checked_before_decoding() -> None:
    loader = PillowImageLoader(ImagePolicy(max_pixels=100))
    expect(InvalidImage, loader.load(data_uri(png_header_only(11, 10)), param=PARAM), "110x10|11x10")


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-content-length"])
def test_body_above_byte_limit(declared: bool) -> None:
    policy = ImagePolicy(allow_private=True, max_bytes=10_000)
    big = body(b"x" * 50_000, length=declared)
    expect(InvalidImageUrl, load_from({"/big.png": big}, "/big.png", policy), "10000 byte limit")


def test_data_uri_above_byte_limit() -> None:
    loader = PillowImageLoader(ImagePolicy(max_bytes=1000))
    expect(InvalidImageUrl, loader.load(data_uri(b"\0" * 5000), param=PARAM), "1000 byte limit")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/",
                                 "data:image/png,rawbytes", "//example.com/a.png", "javascript:alert(1)"])
def test_refused_schemes(url: str) -> None:
    transport, calls = Refusing(), list[str]()
    loader = PillowImageLoader(resolver=resolver({}, calls), transport=transport)
    expect(InvalidImageUrl, loader.load(url, param=PARAM))
    assert transport.requests == [] and calls == []


def test_cloud_metadata_address_refused_before_any_connection() -> None:
    transport, calls = Refusing(), list[str]()
    loader = PillowImageLoader(resolver=resolver({}, calls), transport=transport)
    expect(InvalidImageUrl, loader.load("http://169.254.169.254/latest/meta-data/", param=PARAM),
           "not public")
    assert transport.requests == [] and calls == []


@pytest.mark.parametrize("url", ["http://10.0.0.1/a.png", "http://[::1]/a.png", "http://[::ffff:10.0.0.1]/",
                                 "http://intranet.example/a.png", "http://mixed.example/a.png"])
def test_private_range_refused_before_any_connection(url: str) -> None:
    transport = Refusing()
    table = {"intranet.example": ["192.168.1.20"], "mixed.example": ["93.184.216.34", "10.1.2.3"]}
    loader = PillowImageLoader(resolver=resolver(table), transport=transport)
    expect(InvalidImageUrl, loader.load(url, param=PARAM), "not public")
    assert transport.requests == []


@pytest.mark.parametrize("target", ["http://10.0.0.1/inner.png", "http://intranet.example/inner.png"])
def test_redirect_to_private_address_refused_before_connecting(target: str) -> None:
    async def scenario() -> None:
        async with Server({"/start.png": redirect(target)}) as server:
            transport = Recording()
            table = {"images.example": ["127.0.0.1"], "intranet.example": ["10.9.9.9"]}
            loader = PillowImageLoader(ImagePolicy(total_timeout=5.0), resolver=resolver(table),
                                       transport=transport, is_allowed_address=loopback_only)
            with pytest.raises(InvalidImageUrl, match="not public") as caught:
                await loader.load(server.url("/start.png", host="images.example"), param=PARAM)
            assert caught.value.param == PARAM
            assert transport.hosts == ["127.0.0.1"] and [s["path"] for s in server.seen] == ["/start.png"]
    run(scenario())


@pytest.mark.parametrize("target", ["file:///etc/passwd", "gopher://127.0.0.1/", "data:image/png;base64,AA==",
                                    "ftp://10.0.0.1/x"])
def test_redirect_to_another_scheme_is_refused(target: str) -> None:
    expect(InvalidImageUrl, load_from({"/start.png": redirect(target)}, "/start.png"), "scheme")


def test_url_that_never_answers_times_out() -> None:
    policy = ImagePolicy(allow_private=True, connect_timeout=0.5, total_timeout=0.5)
    expect(InvalidImageUrl, load_from({"/slow.png": never_answers}, "/slow.png", policy), "timed out")


def test_non_2xx_is_refused() -> None:
    expect(InvalidImageUrl, load_from({"/gone.png": body(b"", "404 Not Found")}, "/gone.png"), "HTTP 404")


def test_too_many_redirects() -> None:
    routes = {f"/r{i}": redirect(f"/r{i + 1}") for i in range(5)}
    expect(InvalidImageUrl, load_from(routes, "/r0"), "redirected more than 3")


def test_unresolvable_host() -> None:
    async def fails(host: str, port: int) -> list[str]:
        raise OSError("no such host")
    loader = PillowImageLoader(resolver=fails, transport=Refusing())
    expect(InvalidImageUrl, loader.load("https://nowhere.example/a.png", param=PARAM), "resolved")


# -- what works -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_data_uri_formats(fmt: str) -> None:
    data = encode(Image.new("RGB", (8, 6), (200, 30, 30)), fmt)
    loaded = run(PillowImageLoader().load(data_uri(data, f"image/{fmt.lower()}"), param=PARAM))
    assert loaded.image.mode == "RGB" and loaded.image.size == (8, 6)
    red, green, _ = loaded.image.getpixel((4, 3))
    assert red > 150 and green < 80


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    loaded = run(PillowImageLoader().load(data_uri(buffer.getvalue(), "image/gif"), param=PARAM))
    assert loaded.image.getpixel((0, 0)) == (255, 0, 0)


def test_media_type_and_whitespace_are_tolerated() -> None:
    encoded = base64.b64encode(PNG_1X1).decode().rstrip("=")
    wrapped = "\n".join(encoded[i:i + 10] for i in range(0, len(encoded), 10))
    loaded = run(PillowImageLoader().load(f"data:;base64,{wrapped}", param=PARAM))
    assert loaded.image.size == (1, 1)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90° clockwise
    loaded = run(PillowImageLoader().load(data_uri(encode(image, "JPEG", exif=exif)), param=PARAM))
    assert loaded.image.size == (20, 40)
    top, bottom = loaded.image.getpixel((10, 5)), loaded.image.getpixel((10, 35))
    assert top[2] > 200 and bottom[0] > 200  # the blue left half is now on top


def test_transparency_is_composited_on_white() -> None:
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    image.putpixel((1, 0), (0, 0, 0, 0))
    loaded = run(PillowImageLoader().load(data_uri(encode(image, "PNG")), param=PARAM))
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((0, 0)) == (255, 0, 0) and loaded.image.getpixel((1, 0)) == (255, 255, 255)


def test_same_bytes_are_decoded_once() -> None:
    async def scenario() -> None:
        uri = data_uri(encode(Image.new("RGB", (16, 16), (9, 9, 9)), "PNG"))
        loader = PillowImageLoader()
        first = await loader.load(uri, param=PARAM)
        together = await asyncio.gather(*(loader.load(uri, param=PARAM) for _ in range(3)))
        assert loader.decode_count == 1
        assert all(item.image is first.image for item in together)
        assert first.key == first.key.lower() and len(first.key) == 64
    run(scenario())


def test_concurrent_loads_of_new_bytes_share_one_decode() -> None:
    async def scenario() -> None:
        loader = PillowImageLoader()
        uri = data_uri(encode(Image.new("RGB", (16, 16), (1, 9, 9)), "PNG"))
        results = await asyncio.gather(*(loader.load(uri, param=PARAM) for _ in range(4)))
        assert loader.decode_count == 1 and len({id(r.image) for r in results}) == 1
    run(scenario())


def test_cache_is_bounded_and_can_be_disabled() -> None:
    async def scenario() -> None:
        uris = [data_uri(encode(Image.new("RGB", (2, 2), (i, 0, 0)), "PNG")) for i in range(3)]
        bounded = PillowImageLoader(cache_size=2)
        for uri in [*uris, uris[0]]:
            await bounded.load(uri, param=PARAM)
        assert bounded.decode_count == 4  # uris[0] was evicted by the third
        disabled = PillowImageLoader(cache_size=0)
        for _ in range(2):
            await disabled.load(uris[0], param=PARAM)
        assert disabled.decode_count == 2
    run(scenario())


def test_cache_is_bounded_in_decoded_bytes_least_recently_used_out_first() -> None:
    async def scenario() -> None:
        # 10x10 RGB: 400 decoded bytes each (Pillow keeps 4 bytes a pixel); room for two
        uris = [data_uri(encode(Image.new("RGB", (10, 10), (i, 0, 0)), "PNG")) for i in range(4)]
        loader = PillowImageLoader(cache_bytes=1000)
        keys = [(await loader.load(uri, param=PARAM)).key for uri in uris[:2]]
        await loader.load(uris[0], param=PARAM)  # a hit: uris[0] is now the most recent
        assert loader.decode_count == 2 and loader.cached_keys == [keys[1], keys[0]]
        third = (await loader.load(uris[2], param=PARAM)).key
        assert loader.cached_keys == [keys[0], third]  # uris[1], least recently used, went out
        assert loader.cached_bytes == 800 <= 1000
        await loader.load(uris[1], param=PARAM)
        assert loader.decode_count == 4 and loader.cached_bytes <= 1000
        big = data_uri(encode(Image.new("RGB", (20, 20), (5, 5, 5)), "PNG"))  # 1600 bytes decoded
        await loader.load(big, param=PARAM)
        await loader.load(big, param=PARAM)
        assert loader.decode_count == 6  # larger than the whole budget: never kept
        assert loader.cached_bytes <= 1000 and len(loader.cached_keys) == 2
    run(scenario())


def test_url_and_data_uri_of_same_bytes_share_the_key() -> None:
    async def scenario() -> None:
        async with Server({"/a.png": body(PNG_1X1)}) as server:
            loader = PillowImageLoader(LOCAL)
            by_url = await loader.load(server.url("/a.png"), param=PARAM)
            by_data = await loader.load(data_uri(PNG_1X1), param=PARAM)
            assert by_url.key == by_data.key and loader.decode_count == 1
    run(scenario())


def test_redirects_are_followed_and_the_checked_address_is_connected_to() -> None:
    async def scenario() -> None:
        routes = {"/start": redirect("/moved.png"), "/moved.png": body(PNG_1X1)}
        async with Server(routes) as server:
            transport, calls = Recording(), list[str]()
            loader = PillowImageLoader(ImagePolicy(total_timeout=5.0), transport=transport,
                                       resolver=resolver({"images.example": ["127.0.0.1"]}, calls),
                                       is_allowed_address=loopback_only)
            loaded = await loader.load(server.url("/start", host="images.example"), param=PARAM)
        assert isinstance(loaded.image, Image.Image) and loaded.image.size == (1, 1)
        assert calls == ["images.example", "images.example"]
        assert transport.hosts == ["127.0.0.1", "127.0.0.1"]
        assert [s["host"] for s in server.seen] == [f"images.example:{server.port}"] * 2
    run(scenario())


# -- TLS: connect to the checked IP, verify the certificate and send SNI for the hostname --------

def certificate(hostname: str) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def tls_contexts(hostname: str, tmp_path: Any) -> tuple[ssl.SSLContext, ssl.SSLContext, list[str | None]]:
    cert_pem, key_pem = certificate(hostname)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    sni: list[str | None] = []
    server.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client, sni


@pytest.mark.parametrize("cert_host", ["images.example", "other.example"], ids=["valid", "wrong-name"])
def test_https_pins_the_ip_but_verifies_the_hostname(cert_host: str, tmp_path: Any) -> None:
    server_tls, client_tls, sni = tls_contexts(cert_host, tmp_path)

    async def scenario() -> Any:
        async with Server({"/a.png": body(PNG_1X1)}, tls=server_tls) as server:
            transport = Recording(verify=client_tls)
            loader = PillowImageLoader(ImagePolicy(total_timeout=5.0), transport=transport,
                                       resolver=resolver({"images.example": ["127.0.0.1"]}),
                                       is_allowed_address=loopback_only)
            url = server.url("/a.png", host="images.example", scheme="https")
            try:
                return await loader.load(url, param=PARAM)
            finally:
                assert transport.hosts == ["127.0.0.1"] and sni == ["images.example"]

    if cert_host == "images.example":
        assert run(scenario()).image.size == (1, 1)
    else:
        expect(InvalidImageUrl, scenario(), "TLS certificate not valid")


def test_parse_address_accepts_brackets_and_zones() -> None:
    assert str(parse_address("[::1]")) == "::1"
    assert parse_address("fe80::1%eth0") is not None and parse_address("images.example") is None

"""Property tests for the image URL/address policy and data-URI parsing: arbitrary input only ever
yields the domain's error types. No test here reaches any network: the resolver and the transport
are injected, and the transport fails every request it is given."""

from __future__ import annotations

import asyncio
import base64
import ipaddress

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_server.adapters.images.fetch import is_public_address, parse_address, parse_http_url
from mlx_server.adapters.images.loader import ImagePolicy, PillowImageLoader, decode_image, parse_data_uri
from mlx_server.domain.errors import InvalidImage, InvalidImageUrl

DOMAIN_ERRORS = (InvalidImage, InvalidImageUrl)
PARAM = "messages[1].content[0].image_url.url"

REFUSED = ["127.0.0.1", "127.255.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254",
           "100.64.0.1", "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255",
           "192.0.2.1", "198.18.0.1", "::", "::1", "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1",
           "ff02::1", "fec0::1", "2001:db8::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
           "::ffff:169.254.169.254", "::127.0.0.1", "2002:7f00:1::1", "2002:a00:1::", "64:ff9b::a00:1",
           "64:ff9b::7f00:1", "64:ff9b:1::a00:1", "2001::1", "2001:0:4136:e378::1"]
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2001:4860:4860::8888", "2606:4700:4700::1111",
           "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]


@pytest.mark.parametrize("text", REFUSED)
def test_refused_addresses(text: str) -> None:
    address = parse_address(text)
    assert address is not None and not is_public_address(address)


@pytest.mark.parametrize("text", ALLOWED)
def test_public_addresses(text: str) -> None:
    address = parse_address(text)
    assert address is not None and is_public_address(address)


@given(st.integers(0, 2**32 - 1))
def test_mapped_and_nat64_forms_agree_with_ipv4(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | value)
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | value)
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | 1)
    assert is_public_address(mapped) == is_public_address(nat64) == is_public_address(sixtofour) \
        == is_public_address(v4)


@given(st.integers(0, 2**128 - 1))
def test_classifier_total_on_ipv6(value: int) -> None:
    assert isinstance(is_public_address(ipaddress.IPv6Address(value)), bool)


@given(st.text())
def test_parse_address_never_raises(text: str) -> None:
    parse_address(text)


URLISH = st.one_of(
    st.text(),
    st.builds(lambda s, rest: f"{s}://{rest}", st.sampled_from(["http", "https", "HTTP", "file", "ftp", ""]),
              st.text()),
    st.builds(lambda host, port, path: f"http://{host}:{port}/{path}", st.text(max_size=30),
              st.integers(-5, 70000), st.text(max_size=20)),
)


@given(URLISH)
def test_parse_http_url_only_raises_invalid_image_url(url: str) -> None:
    try:
        hop = parse_http_url(url, PARAM)
    except InvalidImageUrl as exc:
        assert exc.param == PARAM and exc.message
    else:
        assert hop.url.scheme in ("http", "https") and hop.host and 0 < hop.port < 65536


DATA_URIS = st.one_of(
    st.text().map(lambda rest: "data:" + rest),
    st.builds(lambda mime, payload: f"data:{mime};base64,{payload}", st.text(max_size=20),
              st.text(alphabet="ABCDabcd0189+/=-_ \n\t%", max_size=40)),
)


@given(DATA_URIS)
def test_parse_data_uri_only_raises_domain_errors(url: str) -> None:
    try:
        data = parse_data_uri(url, param=PARAM, max_bytes=1000)
    except DOMAIN_ERRORS as exc:
        assert exc.param == PARAM and exc.message
    else:
        assert isinstance(data, bytes) and len(data) <= 1000


@given(st.binary(max_size=200), st.sampled_from(["image/png", "", "application/octet-stream"]),
       st.integers(1, 20))
def test_base64_round_trips_through_wrapping_and_missing_padding(data: bytes, mime: str, width: int) -> None:
    encoded = base64.b64encode(data).decode().rstrip("=")
    wrapped = "\n".join(encoded[i:i + width] for i in range(0, len(encoded), width))
    assert parse_data_uri(f"data:{mime};base64,{wrapped}", param=PARAM, max_bytes=1000) == data


@settings(max_examples=60)
@given(st.binary(max_size=300))
def test_decode_image_only_raises_invalid_image(data: bytes) -> None:
    try:
        image = decode_image(data, max_pixels=10_000)
    except InvalidImage as exc:
        assert exc.message
    else:
        assert image.mode == "RGB"


class Refusing(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        raise httpx.ConnectError("refused by the test")


ANSWERS = st.lists(st.sampled_from(["8.8.8.8", "10.0.0.1", "::1", "not an ip", "fe80::1%1"]), max_size=3)


@settings(max_examples=80, deadline=None)
@given(st.one_of(URLISH, DATA_URIS), ANSWERS, st.booleans())
def test_loader_only_raises_domain_errors(url: str, answers: list[str], allow_private: bool) -> None:
    transport = Refusing()

    async def resolve(host: str, port: int) -> list[str]:
        return answers

    loader = PillowImageLoader(ImagePolicy(allow_private=allow_private, total_timeout=2.0),
                               resolver=resolve, transport=transport)
    try:
        asyncio.run(loader.load(url, param=PARAM))
    except DOMAIN_ERRORS as exc:
        assert exc.param == PARAM
    if not allow_private:  # nothing non-public was ever asked for
        for request in transport.requests:
            address = parse_address(request.url.host)
            assert address is not None and is_public_address(address)

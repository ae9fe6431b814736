"""A real `mlx-server` (uvicorn) on a loopback port, spoken to over raw sockets: idle and slow
connections are closed, and the perimeter holds for what a real HTTP parser hands the app (paths it
does not normalise, Host headers, bodies that do not say they are JSON)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import start_server, stop_server

KEEP_ALIVE, HEAD, BODY = 1, 2, 2  # seconds: --keep-alive-timeout, --header-timeout, --body-timeout
KEY = "s3cret"
CHAT = b'{"model": "gemma", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    process, base = start_server(["--engine", "fake", "--api-key", KEY, "--metrics-auth",
                                  "--keep-alive-timeout", str(KEEP_ALIVE), "--header-timeout",
                                  str(HEAD), "--body-timeout", str(BODY)])
    try:
        yield "127.0.0.1", int(base.rsplit(":", 1)[1])
    finally:
        stop_server(process)


@contextlib.contextmanager
def connection(address: tuple[str, int]) -> Iterator[socket.socket]:
    with socket.create_connection(address, timeout=15) as sock:
        yield sock


def closed_after(sock: socket.socket, limit: float = 10.0) -> tuple[float, bytes]:
    """Seconds until the server closes `sock` (reading whatever it sends first), and what it sent."""
    started, received = time.monotonic(), b""
    sock.settimeout(limit)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return time.monotonic() - started, received


def exchange(address: tuple[str, int], request: bytes) -> tuple[int, bytes]:
    """Send one raw request (the server closes after it: `Connection: close`); status and body."""
    with connection(address) as sock:
        sock.sendall(request)
        _, received = closed_after(sock)
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def request(method: str, target: str, *, host: str | None = "127.0.0.1", auth: bool = False,
            content_type: str | None = "application/json", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"Host: {host}"] if host is not None else []
    lines += [f"Authorization: Bearer {KEY}"] if auth else []
    lines += [f"Content-Type: {content_type}"] if content_type and method == "POST" else []
    lines += [f"Content-Length: {len(body)}"] if method == "POST" else []
    lines += ["Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- item 4: timeouts ---------------------------------------------------------------------------

def test_a_connection_that_never_sends_a_request_is_closed(server: tuple[str, int]) -> None:
    with connection(server) as sock:
        waited, sent = closed_after(sock)
    assert sent == b"" and KEEP_ALIVE - 0.2 < waited < KEEP_ALIVE + 2, waited


def test_an_idle_keep_alive_connection_is_closed(server: tuple[str, int]) -> None:
    with connection(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.3)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        waited, sent = closed_after(sock)
    assert sent == b"" and waited < KEEP_ALIVE + 2, waited


def test_a_request_head_that_trickles_in_is_cut_off(server: tuple[str, int]) -> None:
    """Slowloris: a header line every half second, forever; the server closes at --header-timeout."""
    with connection(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for index in range(40):
                sock.sendall(f"X-Slow-{index}: y\r\n".encode())
                time.sleep(0.5)
        sock.settimeout(1)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            assert sock.recv(65536) == b""
        assert time.monotonic() - started < HEAD + 3


def test_a_slow_but_timely_head_is_served(server: tuple[str, int]) -> None:
    with connection(server) as sock:
        for piece in (b"GET /health HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(HEAD / 4)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_body_that_trickles_in_is_cut_off(server: tuple[str, int]) -> None:
    """The body's deadline is the app's (--body-timeout): an answer or a close, not a wait."""
    with connection(server) as sock:
        sock.sendall(request("POST", "/v1/chat/completions", auth=True, body=CHAT)[:-len(CHAT)])
        sock.sendall(CHAT[:5])
        waited, sent = closed_after(sock, limit=BODY + 8)
    assert waited < BODY + 3, waited
    assert sent == b"" or sent.startswith(b"HTTP/1.1 4"), sent[:100]


# -- items 1 and 2 through a real HTTP parser -----------------------------------------------------

@pytest.mark.parametrize("target", [
    "//v1/models", "///v1/models", "/v1//models", "/v1%2Fmodels", "/%2F%2Fv1/models", "%2F%2Fv1/models",
    "/./v1/models", "/v1/../v1/models", "/v1/models/gemma", "//v1/models/gemma",
    "/v1/models/mlx-community%2Fgemma-3-4b-it-4bit", "//metrics", "/metrics", "/v1%2Fchat%2Fcompletions",
    "http://127.0.0.1/v1/models", "//127.0.0.1/v1/models", "*"])
def test_no_target_reaches_a_protected_route_without_the_key(server: tuple[str, int],
                                                              target: str) -> None:
    for method in ("GET", "POST"):
        status, body = exchange(server, request(method, target, body=CHAT))
        assert status in (400, 401, 404), (method, target, status, body[:200])


def test_the_key_still_opens_the_routes(server: tuple[str, int]) -> None:
    assert exchange(server, request("GET", "/v1/models", auth=True))[0] == 200
    assert exchange(server, request("GET", "/v1/models/mlx-community%2Fgemma-3-4b-it-4bit",
                                    auth=True))[0] == 200
    assert exchange(server, request("POST", "/v1/chat/completions", auth=True, body=CHAT))[0] == 200
    assert exchange(server, request("GET", "/health"))[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:1234", "localhost.evil.example"])
def test_a_rebinding_host_is_refused(server: tuple[str, int], host: str) -> None:
    status, body = exchange(server, request("GET", "/health", host=host))
    assert status == 421 and b"--allowed-hosts" in body


def test_a_missing_or_doubled_host_is_400(server: tuple[str, int]) -> None:
    assert exchange(server, request("GET", "/health", host=None))[0] == 400
    doubled = request("GET", "/health").replace(b"Host: 127.0.0.1\r\n",
                                                b"Host: 127.0.0.1\r\nHost: evil.example\r\n")
    assert exchange(server, doubled)[0] == 400


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_body_a_web_page_could_send_is_415(server: tuple[str, int], content_type: str | None) -> None:
    status, body = exchange(server, request("POST", "/v1/chat/completions", auth=True,
                                            content_type=content_type, body=CHAT))
    assert status == 415 and b"unsupported_media_type" in body


# -- found by a red-team pass: Expect: 100-continue and HTTP versions ---------------------------

@pytest.mark.parametrize(("auth", "content_type", "status"), [
    (False, "application/json", 401), (True, "text/plain", 415), (True, "application/json", 408)])
def test_expect_100_continue_gets_the_answer_not_a_wait(server: tuple[str, int], auth: bool,
                                                        content_type: str, status: int) -> None:
    """uvicorn sends `100 Continue` when the app first asks for the body; Falcon used to ask
    before any check ran, and a client that then sent nothing held the request forever. Now the
    header checks answer without a 100, and a body that never comes is 408 (--body-timeout)."""
    head = request("POST", "/v1/chat/completions", auth=auth, content_type=content_type,
                   body=CHAT)[:-len(CHAT)].replace(b"Connection: close", b"Expect: 100-continue")
    with connection(server) as sock:
        sock.sendall(head)
        waited, sent = closed_after(sock, limit=BODY + 8)
    final = sent.split(b"\r\n\r\n", 1)[-1] if sent.startswith(b"HTTP/1.1 100") else sent
    if status != 408:
        assert not sent.startswith(b"HTTP/1.1 100"), sent[:100]
    assert final.startswith(f"HTTP/1.1 {status}".encode()), sent[:200]
    assert waited < BODY + 3, waited


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
def test_a_request_line_with_another_http_version_is_400_json(server: tuple[str, int],
                                                              version: str) -> None:
    status, body = exchange(server, request("GET", "/health").replace(b"HTTP/1.1", version.encode(), 1))
    assert status == 400 and b'"code": "unsupported_http_version"' in body, body

"""gunicorn started the README way, on the fake engine: serves the openai SDK, and on SIGTERM lets a
running stream finish, refuses new work and exits within the graceful timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import free_port

GUNICORN = Path(sys.executable).parent / "gunicorn"
WORDS = " ".join(f"w{i}" for i in range(30))  # the fake engine echoes it: ~33 tokens
DELAY = 0.05  # seconds per token: the stream runs ~1.7 s
GRACEFUL_TIMEOUT = 10  # as in gunicorn_conf (importing that here would run its setup)
IDLE = 2  # seconds: keep-alive and request-head timeouts


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "MLX_SERVER_ENGINE": "fake", "MLX_SERVER_HOST": "127.0.0.1",
           "MLX_SERVER_PORT": str(port), "MLX_SERVER_MODEL": "gemma",
           "MLX_SERVER_FAKE_DELAY": str(DELAY), "MLX_SERVER_KEEP_ALIVE_TIMEOUT": str(IDLE),
           "MLX_SERVER_HEADER_TIMEOUT": str(IDLE)}
    process = subprocess.Popen([str(GUNICORN), "-c", "python:mlx_server.app.gunicorn_conf",
                                "mlx_server.app.asgi:create()"],
                               env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, base, log)
        yield process, base, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_healthy(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).json().get("model"):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not start:\n{log.read_text()}")


def test_serves_and_drains_on_sigterm(
    gunicorn: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    process, base, log = gunicorn
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    done = client.chat.completions.create(model="gemma", messages=messages)  # type: ignore[arg-type]
    assert done.choices[0].message.content == "You said: hi"

    stream = client.chat.completions.create(  # type: ignore[call-overload]
        model="gemma", messages=[{"role": "user", "content": WORDS}], stream=True)
    chunks = iter(stream)
    first = next(chunks)
    process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    rest = list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert text == f"You said: {WORDS}"
    assert rest[-1].choices[0].finish_reason == "stop"
    assert time.monotonic() - stopped > 1.0  # the stream really was running when the signal came

    try:  # the listener is closed (refused) or, in the instant before, the app answers 503
        late = httpx.post(f"{base}/v1/chat/completions", timeout=2,
                          json={"model": "gemma", "messages": messages})
        assert late.status_code == 503 and late.json()["error"]["code"] == "server_shutting_down"
    except httpx.TransportError:
        pass

    process.wait(timeout=GRACEFUL_TIMEOUT + 5)
    assert time.monotonic() - stopped < GRACEFUL_TIMEOUT
    output = log.read_text()
    assert "route=/v1/chat/completions status=200" in output  # the access log reaches gunicorn's
    assert "shutting down: refusing new work" in output


def test_idle_and_slow_connections_are_closed(
    gunicorn: tuple[subprocess.Popen[bytes], str, Path],
) -> None:
    """The worker runs mlx-server's protocol: a silent connection and a trickled request head are
    closed after the configured seconds, as under `mlx-server` itself (tests/e2e/test_timeouts.py)."""
    _, base, _ = gunicorn
    address = ("127.0.0.1", int(base.rsplit(":", 1)[1]))
    for opening in (b"", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
        with socket.create_connection(address, timeout=IDLE + 5) as sock:
            sock.sendall(opening)
            started = time.monotonic()
            assert sock.recv(1) == b""  # closed, not timed out (TimeoutError) on our side
            assert time.monotonic() - started < IDLE + 3
    evil = httpx.get(f"{base}/health", headers={"Host": "evil.example"})
    assert evil.status_code == 421  # bound to loopback: DNS rebinding is refused

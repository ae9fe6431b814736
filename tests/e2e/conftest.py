from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_log(base: str) -> Path:
    """Where start_server sends the output of the server at `base`."""
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"mlx-server-{base.rsplit(':', 1)[1]}.log"


def start_server(args: list[str], timeout: float = 120.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m mlx_server ARGS` on a free loopback port; wait until /health answers."""
    port = free_port()
    log = server_log(f"http://127.0.0.1:{port}")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlx_server", "--port", str(port), *args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start in {timeout}s:\n{log.read_text()}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def sdk_client(args: list[str]) -> Iterator[openai.OpenAI]:
    """A server started with `args`, and the official SDK pointed at it; stopped afterwards."""
    process, base = start_server(args)
    try:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    finally:
        stop_server(process)


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    replies = tmp_path_factory.mktemp("fake") / "replies.json"
    replies.write_text('["Hello from the fake engine.", "Second reply."]')
    process, base = start_server(["--engine", "fake", "--model", "gemma",
                                  "--fake-replies", str(replies)])
    try:
        yield base
    finally:
        stop_server(process)

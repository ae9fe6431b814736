"""The processes ``python -m bench`` measures: our server, the peer server, the raw in-process
baseline (bench/_raw.py), each one pausable (SIGSTOP) while another side is measured."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from ._common import CACHE, free_port, rss_mb
from ._fastpath import fast_env

if TYPE_CHECKING:
    import openai

LOG_DIR = Path(tempfile.gettempdir()) / "mlx-server-bench-logs"
REPO = Path(__file__).resolve().parent.parent
READY_S = 600


class Proc:
    """A child process that can be paused while another side is measured."""

    def __init__(self, name: str, process: subprocess.Popen[Any]) -> None:
        self.name, self.process = name, process

    def pause(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)

    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        self.resume()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class Server(Proc):
    """An OpenAI-compatible server on loopback and the ``openai`` SDK client talking to it."""

    def __init__(self, name: str, process: subprocess.Popen[Any], base: str, model: str) -> None:
        super().__init__(name, process)
        self.base, self.model = base, model
        import openai

        self.client: openai.OpenAI = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=900,
                                                   max_retries=0)


class Raw(Proc):
    """``mlx_vlm.stream_generate`` in a subprocess (bench/_raw.py): one JSON line each way."""

    def __init__(self, model_dir: Path) -> None:
        process = subprocess.Popen([sys.executable, "-m", "bench._raw", str(model_dir)], env=fast_env(),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   stderr=(LOG_DIR / "raw.log").open("w"), cwd=REPO)
        super().__init__("raw", process)
        self.info = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise SystemExit(f"raw worker died; log: {LOG_DIR / 'raw.log'}")
            if line.startswith("{"):
                return dict(json.loads(line))

    def _send(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def generate(self, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        self._send({"messages": messages, "max_tokens": max_tokens})
        return self._read()

    def stop(self) -> None:
        self.resume()
        with contextlib.suppress(Exception):
            self._send({"op": "quit"})
            self.process.wait(timeout=10)
        super().stop()


def _wait_ready(process: subprocess.Popen[Any], url: str, key: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited ({process.returncode}); log: {log}\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).json().get(key):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit(f"{url} not ready after {timeout:.0f} s; log: {log}")


def _popen(cmd: list[str], env: dict[str, str] | None, log: Path) -> subprocess.Popen[Any]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    handle = log.open("w")
    return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_ours(name: str, model: str, *extra: str) -> Server:
    """``python -m mlx_server`` on a free port, ready (its /health names a model)."""
    port = free_port()
    log = LOG_DIR / f"{name}.log"
    process = _popen([sys.executable, "-m", "mlx_server", "--model", model, "--port", str(port),
                      "--cache-dir", str(CACHE), "--log-level", "warning", *extra], None, log)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(process, f"{base}/health", "model", READY_S, log)
    return Server(name, process, base, model if not Path(model).exists() else str(Path(model)))


def start_peer(model_dir: Path, log_level: str = "WARNING", log_name: str = "peer",
               fast_path: bool = True) -> Server:
    """``python -m mlx_vlm.server`` with its Automatic Prefix Cache on (disk tier off), ready; its
    log in ``LOG_DIR/<log_name>.log``; the CPU loader environment unless ``fast_path`` is False (GPU)."""
    port = free_port()
    log = LOG_DIR / f"{log_name}.log"
    apc = {"APC_ENABLED": "1", "APC_DISK_ENABLED": "0"}
    env = fast_env(apc) if fast_path else {**os.environ, **apc}
    process = _popen([sys.executable, "-m", "mlx_vlm.server", "--model", str(model_dir),
                      "--host", "127.0.0.1",
                      "--port", str(port), "--log-level", log_level], env, log)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(process, f"{base}/health", "loaded_model", READY_S, log)
    return Server("peer", process, base, str(model_dir))


def float_copy_for_peer(model_dir: Path) -> Path:
    """The float32 copy of ``model_dir`` the peer runs on (bench._raw --float-copy), made once."""
    peer_dir = CACHE / f"{model_dir.name}-float32-for-peer"
    if not (peer_dir / "model.safetensors").exists():
        subprocess.run([sys.executable, "-m", "bench._raw", "--float-copy", str(model_dir), str(peer_dir)],
                       check=True, capture_output=True, cwd=REPO)
    return peer_dir


@contextlib.contextmanager
def only(active: Proc, everyone: list[Proc]) -> Iterator[None]:
    """``active`` running, every other process paused, for the duration of the block."""
    for proc in everyone:
        if proc is not active:
            proc.pause()
    active.resume()
    try:
        yield
    finally:
        for proc in everyone:
            proc.resume()

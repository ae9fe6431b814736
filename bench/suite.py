"""One ``python -m bench`` run: the machine, the processes each requested row needs (started one by
one, the others paused), the warm-up, then the rows in order; the swap row last, on its own server."""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from mlx_server.adapters.host import Host

from ._common import resolve_model_dir
from .cache_rows import row_interleaved, row_multiturn
from .client import long_document
from .harness import Proc, Raw, Server, float_copy_for_peer, only, start_ours, start_peer
from .results import Bench, Options
from .rows import row_decode_ttft, row_health, run_generation
from .swap_row import row_swap

P = TypeVar("P", bound=Proc)
SERVER_ROWS = {"decode", "ttft", "health", "multiturn", "interleaved"}
RAW_ROWS = {"decode", "ttft"}
LONG_DOC_ROWS = {"ttft", "multiturn"}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()


def _versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    for dist in ("mlx", "mlx-vlm", "openai"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    versions["mlx-server"] = _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    return versions


def machine() -> dict[str, Any]:
    host = Host()
    return {"cpu": host.cpu_model() or "unknown", "cores": os.cpu_count(), "usable_cpus": host.usable_cpus(),
            "platform": platform.platform(), "python": platform.python_version(), "versions": _versions(),
            "load_avg_start": os.getloadavg()[0]}


def prefix_cache_available() -> bool:
    """Whether this build of the server has a prefix cache (it then has --no-prefix-cache)."""
    help_text = subprocess.run([sys.executable, "-m", "mlx_server", "--help"], capture_output=True,
                               text=True).stdout
    return "--no-prefix-cache" in help_text


@dataclass
class Suite:
    bench: Bench
    info: dict[str, Any]  # machine(), plus the backends the servers and the raw worker report
    model_dir: Path
    has_cache: bool
    long_doc: str = ""
    ours: Server | None = None
    raw: Raw | None = None
    peer: Server | None = None
    ours_cold: Server | None = None

    @property
    def rows(self) -> set[str]:
        return set(self.bench.opts.rows)

    def add(self, start: Callable[[], P]) -> P:
        """Start one more process with every other one paused (they must not share the cores)."""
        for proc in self.bench.procs:
            proc.pause()
        proc = start()
        self.bench.procs.append(proc)
        return proc

    def start(self) -> None:
        opts = self.bench.opts
        if SERVER_ROWS & self.rows:
            self.ours = self.add(lambda: start_ours("ours", opts.model))
            health = httpx.get(f"{self.ours.base}/health", timeout=10).json()
            self.info["ours_backend"] = health.get("backend")
        if RAW_ROWS & self.rows:
            self.raw = self.add(lambda: Raw(self.model_dir))
            self.info["raw_backend"] = self.raw.info
        if SERVER_ROWS & self.rows and not opts.no_peer:
            self.peer = self.add(lambda: start_peer(float_copy_for_peer(self.model_dir)))
        if "multiturn" in self.rows and self.has_cache:
            self.ours_cold = self.add(lambda: start_ours("ours-nocache", opts.model, "--no-prefix-cache"))

    def warm_up(self) -> None:
        """One short request per process, excluded from every figure."""
        for proc in self.bench.procs:
            with only(proc, self.bench.procs):
                run_generation(proc, [{"role": "user", "content": "Hi"}], 4)

    def stop(self, proc: Proc) -> None:
        proc.stop()
        self.bench.procs.remove(proc)

    def measure(self) -> None:
        bench, rows, ours = self.bench, self.rows, self.ours
        if RAW_ROWS & rows and ours and self.raw:
            row_decode_ttft(bench, self.raw, ours, self.peer, self.long_doc)
        if self.raw:
            self.stop(self.raw)
        if "health" in rows and ours:
            row_health(bench, ours, self.peer)
        if "multiturn" in rows and ours:
            row_multiturn(bench, ours, self.ours_cold, self.peer, self.long_doc, self.has_cache)
        if "interleaved" in rows and ours:
            row_interleaved(bench, ours, self.peer, self.model_dir)
        for proc in list(bench.procs):
            self.stop(proc)
        if "swap" in rows:
            row_swap(bench, bench.opts.model, bench.opts.swaps)


def run(opts: Options) -> tuple[Bench, dict[str, Any]]:
    """Every requested row measured into a Bench; the machine's description beside it."""
    bench = Bench(opts)
    info = machine()
    suite = Suite(bench, info, resolve_model_dir(opts.model), prefix_cache_available())
    cache_note = "on (--no-prefix-cache for the cold side)" if suite.has_cache else "absent in this build"
    bench.notes.append(f"our prefix cache: {cache_note}")
    if LONG_DOC_ROWS & suite.rows:
        suite.long_doc = long_document(suite.model_dir, opts.long_tokens)
    try:
        suite.start()
        suite.warm_up()
        suite.measure()
    finally:
        for proc in bench.procs:
            proc.stop()
    return bench, suite.info

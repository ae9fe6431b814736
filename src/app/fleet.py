"""`mlx-server fleet`: N servers on consecutive ports behind sglang-router, on one machine, kept
running (README "Fleet").

The router is sglang-router (`pip install 'mlx-server[fleet]'`), a Rust binary in a wheel: it routes
each request by an approximate prefix tree of its text, so a conversation's turns keep landing on
the server whose KV prefix cache holds it. This module only starts processes and watches them:
servers first (the router registers only workers that answer /health), then the router; a
server that exits is started again on its port (the router marks it unhealthy meanwhile and
routes its conversations elsewhere, then back once it answers); the router exiting, or SIGINT /
SIGTERM, stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import attrs

log = logging.getLogger("mlx_server.fleet")

POLICIES = ("cache_aware", "round_robin", "power_of_two", "random", "manual")
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds before each next restart of one server
HEALTHY_FOR = 60.0  # seconds up after which a server's restart backoff starts over


@attrs.frozen
class FleetPlan:
    """What to run: `servers` local servers on the ports after `port` (the router's), any
    `remote` workers (other machines' servers), and the router in front of them all."""

    servers: int
    port: int
    host: str = "127.0.0.1"
    policy: str = "cache_aware"
    remote: tuple[str, ...] = ()
    server_args: tuple[str, ...] = ()
    router_args: tuple[str, ...] = ()
    balance_threshold: int = 8  # in-flight requests one server may have beyond another's
    cuda_devices: tuple[str, ...] = ()  # server i sees device i (mod the count); () leaves it be

    @property
    def server_ports(self) -> list[int]:
        return [self.port + 1 + index for index in range(self.servers)]

    @property
    def worker_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.server_ports] + list(self.remote)

    def server_command(self, port: int) -> list[str]:
        # the servers listen on loopback: clients reach them through the router
        return [sys.executable, "-m", "mlx_server", *self.server_args, "--host", "127.0.0.1",
                "--port", str(port)]

    def server_env(self, index: int, environ: dict[str, str]) -> dict[str, str]:
        """The environment of server `index`: its own GPU where devices are given."""
        if not self.cuda_devices:
            return environ
        return {**environ, "CUDA_VISIBLE_DEVICES": self.cuda_devices[index % len(self.cuda_devices)]}

    def router_command(self, metrics_port: int) -> list[str]:
        """sglang-router's launcher, with what a fleet of these servers needs: a dead server
        noticed within seconds and tried again soon after it is back (its circuit breaker
        half-opens after 5 s, not 60), and conversations kept on their server until it holds
        `balance_threshold` more requests than another (the router's default, 64, would pile
        every conversation on one server long after it stops batching them)."""
        return [sys.executable, "-m", "sglang_router.launch_router",
                "--host", self.host, "--port", str(self.port), "--policy", self.policy,
                "--worker-urls", *self.worker_urls,
                "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
                "--health-check-interval-secs", "2", "--health-failure-threshold", "2",
                "--health-success-threshold", "1", "--cb-timeout-duration-secs", "5",
                "--balance-abs-threshold", str(self.balance_threshold),
                "--log-level", "warn", *self.router_args]


def add_fleet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--servers", type=int, default=2,
                        help="servers to start on this machine, on the ports after --port")
    parser.add_argument("--host", default="127.0.0.1", help="address the router listens on")
    parser.add_argument("--port", type=int, default=1234, help="the router's port")
    parser.add_argument("--policy", choices=POLICIES, default="cache_aware",
                        help="how the router picks a server (cache_aware: by prompt prefix)")
    parser.add_argument("--worker-url", action="append", default=[], metavar="URL",
                        help="a server on another machine to route to as well (repeatable)")
    parser.add_argument("--balance-threshold", type=int, default=8,
                        help="in-flight requests one server may hold beyond another's before "
                             "the router stops keeping conversations on it")
    parser.add_argument("--cuda-devices", default="", metavar="LIST",
                        help="NVIDIA GPUs, e.g. 0,1: server i sees only the i-th (one model per GPU)")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="write each server's log and the router's there (default: this "
                             "terminal)")
    parser.add_argument("--router-arg", action="append", default=[], metavar="ARG",
                        help="an extra argument for sglang-router (repeatable: "
                             "--router-arg=--api-key --router-arg=KEY)")


def main(argv: Sequence[str]) -> int:
    """`mlx-server fleet [fleet options] [-- server options]`."""
    args = list(argv)
    server_args = args[args.index("--") + 1:] if "--" in args else []
    own = args[:args.index("--")] if "--" in args else args
    parser = argparse.ArgumentParser(
        prog="mlx-server fleet",
        description="N servers on consecutive ports behind sglang-router's cache-aware routing",
        epilog="everything after '--' goes to each server, e.g. "
               "mlx-server fleet --servers 2 -- --model gemma")
    add_fleet_arguments(parser)
    options = parser.parse_args(own)
    if options.servers < 0 or (options.servers == 0 and not options.worker_url):
        parser.error("--servers must be at least 1, or 0 with --worker-url")
    if any(flag in server_args for flag in ("--port", "--host")):
        parser.error("the fleet chooses each server's --host and --port; leave them out after '--'")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not router_installed():
        log.error("sglang-router is not installed: pip install 'mlx-server[fleet]'")
        return 2
    plan = FleetPlan(servers=options.servers, port=options.port, host=options.host,
                     policy=options.policy, remote=tuple(options.worker_url),
                     server_args=tuple(server_args), router_args=tuple(options.router_arg),
                     balance_threshold=options.balance_threshold,
                     cuda_devices=tuple(d.strip() for d in options.cuda_devices.split(",") if d.strip()))
    return Fleet(plan, options.log_dir).run()


def router_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("sglang_router") is not None


class Fleet:
    """The processes of one plan, started, watched and stopped."""

    def __init__(self, plan: FleetPlan, log_dir: Path | None = None) -> None:
        self.plan, self.log_dir = plan, log_dir
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.router: subprocess.Popen[bytes] | None = None
        self._restarts: dict[int, int] = {}
        self._started: dict[int, float] = {}
        self._due: dict[int, float] = {}  # port -> when its next restart may run
        self._stopping = False
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            for port in self.plan.server_ports:
                self._start_server(port)
            for port in self.plan.server_ports:
                if not self._wait_healthy(port):
                    log.error("server on port %d did not come up; stopping", port)
                    return 1
            self.router = self._spawn(self.plan.router_command(free_port()), "router")
            log.info("router on http://%s:%d -> %s (policy %s)", self.plan.host, self.plan.port,
                     " ".join(self.plan.worker_urls), self.plan.policy)
            return self._watch()
        finally:
            self.stop()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True

    def _watch(self) -> int:
        while not self._stopping:
            if self.router is not None and (code := self.router.poll()) is not None:
                log.error("the router exited (%d); stopping the fleet", code)
                return code or 1
            now = time.monotonic()
            for port, process in list(self.servers.items()):
                if process.poll() is None:
                    continue
                if port not in self._due:
                    self._due[port] = now + self._backoff(port, now)
                    log.warning("server on port %d exited (%d); starting it again in %.0f s",
                                port, process.returncode, self._due[port] - now)
                elif now >= self._due[port]:
                    del self._due[port]
                    self._start_server(port)
            time.sleep(0.2)
        return 0

    def _backoff(self, port: int, now: float) -> float:
        if now - self._started.get(port, now) >= HEALTHY_FOR:
            self._restarts[port] = 0  # it ran a good while: a fresh failure, no long wait
        count = self._restarts.get(port, 0)
        self._restarts[port] = count + 1
        return RESTART_BACKOFF[min(count, len(RESTART_BACKOFF) - 1)]

    def _start_server(self, port: int) -> None:
        env = self.plan.server_env(self.plan.server_ports.index(port), dict(os.environ))
        self.servers[port] = process = self._spawn(self.plan.server_command(port), f"server-{port}",
                                                   env)
        self._started[port] = time.monotonic()
        log.info("server on port %d started (pid %d)", port, process.pid)

    def _spawn(self, command: list[str], name: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        output: IO[bytes] | None = None
        if self.log_dir is not None:
            output = (self.log_dir / f"{name}.log").open("ab")
        try:  # its own process group: a signal to it reaches what it starts, and none of ours
            return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT if output else None,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        finally:
            if output is not None:
                output.close()

    def _wait_healthy(self, port: int, timeout: float = 900.0) -> bool:
        """Until the server on `port` answers /health (a model may take minutes to fetch and
        load), or it exits, or the fleet is told to stop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping:
            if self.servers[port].poll() is not None:
                return False
            if healthy(f"http://127.0.0.1:{port}"):
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        processes = [p for p in (self.router, *self.servers.values()) if p is not None]
        for process in processes:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return int(answer.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)

"""A fleet on loopback (README "Fleet"): `mlx-server fleet` starts 3 servers (fake engine: cheap)
and sglang-router in front; 12 conversations interleave, 6 turns each. Every turn of a
conversation reaches the same server; one server is killed mid-turn: only requests in flight on
it may fail, its conversations move, and it rejoins once the fleet has started it again.
Bounded (each phase has a deadline) and it stops everything it started."""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlx_server.app.fleet import router_installed

CONVERSATIONS, SERVERS = 12, 3
WORDS = ["apple", "river", "stone", "cloud", "mango", "violet", "tiger", "piano", "laser", "cactus",
         "harbor", "quartz", "lemon", "falcon", "maple", "orbit", "candle", "meadow", "glacier",
         "copper"]


def free_base(count: int) -> int:
    """A port with the `count` after it free too (the router's, then the servers')."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count < 65535 and all(_free(base + i) for i in range(count + 1)):
            return base
    raise RuntimeError("no free run of ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    assert router_installed(), "the test extra installs sglang-router (wheels for every platform)"
    port = free_base(SERVERS)
    out = (tmp_path / "fleet.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlx_server", "fleet", "--servers", str(SERVERS), "--port", str(port),
         "--log-dir", str(tmp_path), "--", "--engine", "fake", "--fake-delay", "0.05"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        until(lambda: _get(f"http://127.0.0.1:{port}/v1/models") == 200, 90, "the router answers")
        yield port, tmp_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the fleet stops its servers and router
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            out.close()
        pids = re.findall(r"started \(pid (\d+)\)", (tmp_path / "fleet.log").read_text())
        assert pids and not any(_alive(int(pid)) for pid in pids), "a server outlived the fleet"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


class Conversations:
    """12 multi-turn chats through the router, each request tagged `c{i}-t{turn}` (X-Request-ID,
    which each server's access log records), so the test knows which server answered it."""

    def __init__(self, port: int, logs: Path, first: int = 0) -> None:
        self.url, self.logs = f"http://127.0.0.1:{port}", logs
        self.history = {i: [{"role": "system", "content": f"chat {i}: " + " ".join(
            WORDS[(i * 7 + k * k) % len(WORDS)] for k in range(40))}]
            for i in range(first, first + CONVERSATIONS)}
        self.status: dict[str, int] = {}

    def turn(self, turn: int, during: Callable[[], None] | None = None) -> None:
        """Turn `turn` of every conversation at once; `during` runs while they are in flight."""
        threads = [threading.Thread(target=self._say, args=(i, turn)) for i in self.history]
        for thread in threads:
            thread.start()
        if during is not None:
            during()
        for thread in threads:
            thread.join(60)

    def _say(self, i: int, turn: int) -> None:
        tag = f"c{i}-t{turn}"
        self.history[i].append({"role": "user", "content": f"turn {turn}: {WORDS[(i + turn) % 20]}"})
        try:
            answer = httpx.post(f"{self.url}/v1/chat/completions", timeout=30,
                                headers={"X-Request-ID": tag},
                                json={"model": "gemma", "messages": self.history[i]})
            self.status[tag] = answer.status_code
            text = answer.json()["choices"][0]["message"]["content"] if answer.is_success else "-"
        except httpx.HTTPError:
            self.status[tag], text = 0, "-"
        self.history[i].append({"role": "assistant", "content": text})

    def served_by(self) -> dict[str, int]:
        """Request tag -> the port of the server whose access log has it answered (200)."""
        where: dict[str, int] = {}
        for path in self.logs.glob("server-*.log"):
            port = int(path.stem.split("-")[1])
            for tag in re.findall(r"id=(c\d+-t\d+) method=POST route=\S+ status=200",
                                  path.read_text(errors="replace")):
                where[tag] = port
        return where


def test_conversations_stay_on_their_server_and_move_when_it_dies(
        fleet: tuple[int, Path]) -> None:
    port, logs = fleet
    chats = Conversations(port, logs)
    for turn in range(3):
        chats.turn(turn)
    assert set(chats.status.values()) == {200}, chats.status
    where = chats.served_by()
    home = {i: {where[f"c{i}-t{t}"] for t in range(3)} for i in range(CONVERSATIONS)}
    assert all(len(ports) == 1 for ports in home.values()), home  # every turn on one server
    counts = collections.Counter(next(iter(ports)) for ports in home.values())
    assert len(counts) >= 2, counts  # the router spread the conversations

    victim = counts.most_common(1)[0][0]
    pid = int(re.findall(rf"server on port {victim} started \(pid (\d+)\)",
                         (logs / "fleet.log").read_text())[-1])
    moved = [i for i, ports in home.items() if victim in ports]

    def kill() -> None:
        time.sleep(0.3)  # mid-answer: each reply streams for ~0.5 s
        os.killpg(pid, signal.SIGKILL)

    chats.turn(3, during=kill)
    failed = {tag for tag, status in chats.status.items() if status != 200}
    assert failed <= {f"c{i}-t3" for i in moved}, failed  # only requests in flight on the victim
    for turn in (4, 5):  # the next turns: no error at all; the victim's conversations moved
        chats.turn(turn)
    assert all(chats.status[f"c{i}-t{t}"] == 200 for i in range(CONVERSATIONS) for t in (4, 5)), \
        chats.status
    where = chats.served_by()
    assert all(where[f"c{i}-t5"] != victim for i in moved)
    assert all(where[f"c{i}-t5"] == next(iter(home[i])) for i in home if i not in moved)

    until(lambda: _get(f"http://127.0.0.1:{victim}/health") == 200, 30, "the victim restarted")
    until(lambda: any(w["url"].endswith(f":{victim}") and w["is_healthy"] for w in httpx.get(
        f"http://127.0.0.1:{port}/workers", timeout=5).json()["workers"]), 30,
          "the router sees it healthy again")
    batches: list[Conversations] = []

    def new_conversations_reach_it() -> bool:  # its circuit breaker closes again within seconds
        fresh = Conversations(port, logs, first=CONVERSATIONS * (2 + len(batches)))
        batches.append(fresh)
        fresh.turn(0)
        time.sleep(0.5)
        return victim in {fresh.served_by().get(f"c{i}-t0") for i in fresh.history}

    until(new_conversations_reach_it, 40, "new conversations reach the restarted server")
    assert all(set(batch.status.values()) == {200} for batch in batches)

"""Fleet rows (issue 19): mlx-server behind an existing router, on this machine's CPU.

Three sections, each optional (--sections):

  hit       the fleet-wide prefix-cache hit ratio per routing policy, on real MLX (SmolLM2 by
            default): --conversations (7: odd, so round robin really alternates) conversations of
            --turns (3) turns each, a system prompt unique per conversation (no two share a prefix
            beyond the chat template's first tokens), a user message of a few dozen words per turn,
            max_tokens --max-tokens (16), temperature 0, non-streamed, one request at a time, turns
            interleaved (turn 1 of every conversation, then turn 2 of every conversation, ...).
            Every policy gets its own fresh servers (empty prefix caches): --servers (2) for a
            router, one for ``direct`` (no router, every conversation on one server).
            hit ratio = Σ cached_tokens / Σ prompt_tokens (``usage.prompt_tokens_details``), per turn
            and over turns 2.. (turn 1 cannot reuse its own conversation: only the template's first
            tokens, shared with other conversations, can be cached there).
            of reachable = Σ cached_tokens / Σ (the most cached_tokens any policy of this run got
            for the same request; prompts and greedy replies are the same under every policy), over
            turns 2.., so 1.000 means "as good as the best placement seen".
            sticky = conversations whose turns all ran on one server (each request's X-Request-Id,
            which every router forwards on chat completions, found in our servers' access logs).
            --concurrent: each turn's requests all at once instead of one at a time (a router that
            balances on load sees load).
  overhead  the latency a router adds: one fake-engine server (--engine fake, no model), the same
            small chat request direct and through each router (that server its only worker),
            --requests (200) of each, interleaved (direct, router A, router B, ... in a rotating order)
            so that noise hits every side; p50/p90 of (router − direct) paired per round, for a
            non-streamed request's total time and a streamed request's first SSE event and first
            content chunk (one kept-alive connection per side, as SDK clients do).
  capture   what each router does to requests: a recording proxy (this process) between the router
            and a fake-engine server sees the exact paths, headers and bodies the router sends;
            probes for /v1/chat/completions (plain, streamed), /v1/completions, /v1/messages
            (Anthropic; plain, streamed), /v1/responses and /v1/models. Reported: the status the
            client got, whether the request reached the worker and under which path, the body
            fields added / removed / changed and the headers added, and every request the router
            made on its own (health checks, probes) with the status our server gave it.

Policies (--policies, comma-separated):
  sglang:cache_aware, sglang:round_robin, sglang:manual   sglang-router's ``smg launch``
      (manual: sticky on the client's ``X-SMG-Routing-Key`` header)
  vllm:cache_aware, vllm:round_robin, vllm:consistent_hash   ``vllm-router`` (consistent_hash: on
      the client's ``X-Session-Id`` header; without one every request hashes the same key)
  nginx:hash   nginx ``hash $http_x_session_id consistent`` (the client sends ``X-Session-Id``)
  direct       no router, one server (hit section only)
Default: sglang:cache_aware, sglang:round_robin, vllm:cache_aware, vllm:consistent_hash, nginx:hash.
A router that is not installed is reported "n/a". Each router gets its own free ports (sglang-router's
and vllm-router's Prometheus port included: their default 29000 collides).

Run:  python -m bench.fleet [--sections hit,overhead,capture] [--policies ...] [--concurrent]
                           [--vllm-router PATH] [--json PATH]
      python -m bench.fleet --smoke     (fake engine, sglang-router only, a few requests: CI)
The hit section dominates the time: per policy two SmolLM2 starts and 21 generations (3 to 6 minutes
per policy measured on 2 cores that other test runs were sharing; less on idle cores).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from ._common import free_port
from .harness import LOG_DIR, Server, start_ours

SECTIONS = ("hit", "overhead", "capture")
DEFAULT_POLICIES = ("sglang:cache_aware", "sglang:round_robin", "vllm:cache_aware", "vllm:consistent_hash",
                    "nginx:hash")
OVERHEAD_ROUTERS = ("sglang:cache_aware", "vllm:cache_aware", "nginx:hash")
CAPTURE_ROUTERS = ("sglang:cache_aware", "vllm:cache_aware", "nginx:hash")
# the header a policy routes on: what clients must send (None: nothing)
SESSION_HEADER = {"sglang:manual": "X-SMG-Routing-Key", "vllm:consistent_hash": "X-Session-Id",
                  "nginx:hash": "X-Session-Id"}
TOPICS = ("rivers", "bridges", "forests", "engines", "harbours", "gardens", "comets", "glaciers",
          "lighthouses", "orchards", "volcanoes")
READY_S = 90.0
Json = dict[str, Any]


# ------------------------------------------------------------------------------------ processes


class Child:
    """A process in its own process group (a router, nginx), stopped with its children."""

    def __init__(self, name: str, cmd: list[str], log: Path) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name, self.log = name, log
        self.process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def problems(self) -> list[str]:
        """Warning and error lines of its log, colour codes removed (at most 5, and a count)."""
        if not self.log.exists():
            return []
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))
        lines = [line.strip() for line in text.splitlines()
                 if re.search(r"\b(WARN|WARNING|ERROR|error|panicked|emerg|crit)\b", line)]
        return lines[:5] + ([f"... {len(lines) - 5} more"] if len(lines) > 5 else [])


class Router:
    """A router in front of ``workers``: sglang-router, vllm-router or nginx (``kind:policy``)."""

    def __init__(self, policy: str, workers: list[str], tools: dict[str, str | None], tag: str,
                 nginx_host_header: bool = True) -> None:
        self.policy = policy
        kind, _, name = policy.partition(":")
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        log = LOG_DIR / f"fleet-{tag}-{kind}-{name}.log"
        if kind == "sglang":
            cmd = [str(tools["sglang"]), "launch", "--host", "127.0.0.1", "--port", str(port),
                   "--worker-urls", *workers, "--policy", name, "--prometheus-port", str(free_port()),
                   "--log-level", "warn"]
        elif kind == "vllm":
            cmd = [str(tools["vllm"]), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *workers,
                   "--policy", name, "--prometheus-port", str(free_port()), "--log-level", "warning"]
        elif kind == "nginx":
            self.conf_dir = Path(tempfile.mkdtemp(prefix="fleet-nginx-"))
            self.conf_dir.chmod(0o777)
            conf = nginx_conf(self.conf_dir, port, workers, nginx_host_header)
            cmd = [str(tools["nginx"]), "-p", str(self.conf_dir), "-c", str(conf)]
        else:
            raise ValueError(policy)
        self.child = Child(policy, cmd, log)
        try:
            self._wait_ready(kind, len(workers))
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, kind: str, workers: int) -> None:
        """Until the router lists every worker healthy (nginx: until it answers)."""
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if self.child.process.poll() is not None:
                raise SystemExit(f"{self.policy} exited ({self.child.process.returncode}); log: "
                                 f"{self.child.log}\n{self.child.log.read_text(errors='replace')[-1500:]}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if kind == "nginx":  # up when it answers (our server may refuse its Host: 421)
                    httpx.get(f"{self.base}/health", timeout=2)
                    return
                else:
                    listed = httpx.get(f"{self.base}/workers", timeout=2).json().get("workers", [])
                    if (sum(1 for w in listed if w.get("is_healthy")) == workers
                            and httpx.get(f"{self.base}/v1/models", timeout=2).status_code == 200):
                        return
            time.sleep(0.25)
        raise SystemExit(f"{self.policy} not ready after {READY_S:.0f} s; log: {self.child.log}")

    def stop(self) -> None:
        self.child.stop()
        if hasattr(self, "conf_dir"):
            shutil.rmtree(self.conf_dir, ignore_errors=True)


def nginx_conf(directory: Path, port: int, workers: list[str], host_header: bool) -> Path:
    """nginx: one worker process, an upstream hashed (consistent) on the X-Session-Id header,
    HTTP/1.1 keep-alive to the servers, no buffering (streams pass through); ``host_header``:
    forward the client's Host (else nginx sends the upstream's name, ``fleet``)."""
    servers = "".join(f"    server {w.removeprefix('http://')};\n" for w in workers)
    host = "      proxy_set_header Host $http_host;\n" if host_header else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        "worker_processes 1;\ndaemon off;\n"
        f"pid {directory}/nginx.pid;\nerror_log {directory}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        "http {\n  access_log off;\n"
        f"  client_body_temp_path {directory}/body;\n  proxy_temp_path {directory}/proxy;\n"
        f"  fastcgi_temp_path {directory}/fcgi;\n  uwsgi_temp_path {directory}/uwsgi;\n"
        f"  scgi_temp_path {directory}/scgi;\n  client_body_buffer_size 1m;\n  client_max_body_size 64m;\n"
        f"  upstream fleet {{\n    hash $http_x_session_id consistent;\n{servers}    keepalive 16;\n  }}\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n"
        "    location / {\n      proxy_pass http://fleet;\n      proxy_http_version 1.1;\n"
        f"      proxy_set_header Connection \"\";\n{host}"
        "      proxy_buffering off;\n      proxy_request_buffering off;\n      proxy_read_timeout 600s;\n"
        "    }\n  }\n}\n")
    return conf


def find_tools(opts: argparse.Namespace) -> dict[str, str | None]:
    """The router executables: given, beside this Python, or on PATH; None where absent."""
    def look(given: str | None, name: str, *extra: str) -> str | None:
        for candidate in (given, str(Path(sys.executable).parent / name), shutil.which(name), *extra):
            if candidate and Path(candidate).exists():
                return candidate
        return None

    return {"sglang": look(opts.smg, "smg"), "vllm": look(opts.vllm_router, "vllm-router"),
            "nginx": look(opts.nginx, "nginx", "/usr/sbin/nginx")}


def missing(policy: str, tools: dict[str, str | None]) -> str | None:
    kind = policy.partition(":")[0]
    if kind == "direct":
        return None
    return None if tools.get(kind) else f"n/a: {kind} not installed"


def start_servers(tag: str, n: int, model: str, extra: list[str]) -> list[Server]:
    """``n`` of our servers at once (each ready), logging at info (the access log says what each
    router asked of them)."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(start_ours, f"fleet-{tag}-{i}", model, "--log-level", "info", *extra)
                   for i in range(n)]
        started, failure = [], None
        for future in futures:
            try:
                started.append(future.result())
            except BaseException as error:
                failure = error
    if failure is not None:
        for server in started:
            server.stop()
        raise failure
    return started


@contextlib.contextmanager
def servers_up(tag: str, n: int, model: str, extra: list[str]) -> Iterator[list[Server]]:
    servers = start_servers(tag, n, model, extra)
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


ACCESS = re.compile(r'"([A-Z]+|PRI) (\S+) HTTP/[\d.]+" (\d{3})')


def server_report(name: str) -> Json:
    """From our server's log: the requests it answered outside 2xx (method, path, status, count)
    and its warning/error lines other than uvicorn's access lines."""
    log = LOG_DIR / f"{name}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    for line in text.splitlines():
        match = ACCESS.search(line)
        if match and not match.group(3).startswith("2"):
            statuses[f"{match.group(1)} {match.group(2)} {match.group(3)}"] += 1
        elif not match and re.search(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b", line):
            problems.append(line.strip()[:200])
    return {"non_2xx": dict(statuses), "problems": dict(Counter(problems))}


# ------------------------------------------------------------------------------------ hit ratio


def system_prompt(conv: int) -> str:
    # the conversation's number first: no two conversations share a token after the template's own
    return (f"Desk {conv} ({TOPICS[conv % len(TOPICS)]}): you are the assistant of this desk. "
            f"Answer in one short sentence.")


def user_message(conv: int, turn: int) -> str:
    topic = TOPICS[(conv + turn) % len(TOPICS)]
    words = " ".join(f"{TOPICS[(conv * 3 + turn + i) % len(TOPICS)]}" for i in range(18))
    return (f"Question {turn + 1} of desk {conv}: tell me one fact about {topic}. For context, here are "
            f"some words I noted today, in order: {words}.")


def served_by(tag: str, n: int) -> dict[str, int]:
    """Request id -> index of the server whose access log has it (the client's X-Request-Id, which
    the routers forward on /v1/chat/completions)."""
    found: dict[str, int] = {}
    for i in range(n):
        log = LOG_DIR / f"fleet-{tag}-{i}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        for rid in re.findall(r"mlx_server\.access: id=(\S+) method=POST route=/v1/chat/completions", text):
            found[rid] = i
    return found


def conversations(target: str, header: str | None, opts: argparse.Namespace, tag: str) -> list[Json]:
    """The interleaved multi-turn workload against ``target``: one record per request. Turn by turn;
    within a turn one conversation after the other, or all at once with --concurrent."""
    records: list[Json] = []
    histories: list[list[Json]] = [[{"role": "system", "content": system_prompt(c)}]
                                   for c in range(opts.conversations)]

    def ask(client: httpx.Client, conv: int, turn: int) -> Json:
        rid = f"fleet-{tag}-c{conv}-t{turn + 1}"
        headers = {"X-Request-Id": rid, **({header: f"conversation-{conv}"} if header else {})}
        start = time.perf_counter()
        response = client.post(f"{target}/v1/chat/completions", headers=headers, json={
            "model": opts.model, "messages": histories[conv], "max_tokens": opts.max_tokens,
            "temperature": 0})
        record: Json = {"conv": conv, "turn": turn + 1, "id": rid, "status": response.status_code,
                        "seconds": round(time.perf_counter() - start, 3)}
        if response.status_code == 200:
            body = response.json()
            usage = body.get("usage") or {}
            record["prompt_tokens"] = usage.get("prompt_tokens", 0)
            record["cached_tokens"] = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            record["text"] = body["choices"][0]["message"].get("content") or ""
        else:
            record["error"] = response.text[:300]
        return record

    with httpx.Client(timeout=600) as client, \
            concurrent.futures.ThreadPoolExecutor(opts.conversations) as pool:
        for turn in range(opts.turns):
            for conv, history in enumerate(histories):
                history.append({"role": "user", "content": user_message(conv, turn)})
            convs = range(opts.conversations)
            if opts.concurrent:
                done = list(pool.map(lambda c, t=turn: ask(client, c, t), convs))
            else:
                done = [ask(client, c, turn) for c in convs]
            for record in done:
                reply = record.get("text") or "OK."
                histories[record["conv"]].append({"role": "assistant", "content": reply})
            records.extend(done)
    return records


def hit_run(policy: str, opts: argparse.Namespace, tools: dict[str, str | None]) -> Json:
    if (why := missing(policy, tools)) is not None:
        return {"policy": policy, "skipped": why}
    tag = policy.replace(":", "-") + ("-conc" if opts.concurrent else "")
    n = 1 if policy == "direct" else opts.servers
    extra = ["--engine", "fake"] if opts.engine == "fake" else []
    started = time.perf_counter()
    with servers_up(tag, n, opts.model, extra) as servers:
        router = None if policy == "direct" else Router(policy, [s.base for s in servers], tools, "hit")
        try:
            target = router.base if router else servers[0].base
            records = conversations(target, SESSION_HEADER.get(policy), opts, tag)
        finally:
            if router:
                router.stop()
    where = served_by(tag, n)
    for record in records:
        record["server"] = where.get(record["id"])
    return {"policy": policy, "client_header": SESSION_HEADER.get(policy), "servers": n,
            "records": records, "wall_s": round(time.perf_counter() - started, 1),
            "router_problems": router.child.problems() if router else [],
            "server_logs": {f"fleet-{tag}-{i}": server_report(f"fleet-{tag}-{i}") for i in range(n)}}


def summarize_hits(runs: list[Json]) -> None:
    """Per run: per-turn ratios, turns 2.. ratio, of reachable (best cached of any run per request),
    sticky conversations, requests per server, non-200 count (in place)."""
    best: dict[tuple[int, int], int] = {}
    for run in runs:
        for r in run.get("records", []):
            key = (r["conv"], r["turn"])
            best[key] = max(best.get(key, 0), r.get("cached_tokens", 0))
    for run in runs:
        records = run.get("records")
        if records is None:
            continue
        ok = [r for r in records if r["status"] == 200]
        turns = sorted({r["turn"] for r in records})

        def ratio(rows: list[Json]) -> float | None:
            prompt = sum(r["prompt_tokens"] for r in rows)
            return sum(r["cached_tokens"] for r in rows) / prompt if prompt else None

        run["per_turn"] = {t: ratio([r for r in ok if r["turn"] == t]) for t in turns}
        later = [r for r in ok if r["turn"] >= 2]
        run["hit_ratio"] = ratio(later)
        run["cached_tokens"] = sum(r["cached_tokens"] for r in later)
        run["prompt_tokens"] = sum(r["prompt_tokens"] for r in later)
        reachable = sum(best[(r["conv"], r["turn"])] for r in later)
        run["of_reachable"] = run["cached_tokens"] / reachable if reachable else None
        by_conv: dict[int, set[int | None]] = {}
        for r in ok:
            by_conv.setdefault(r["conv"], set()).add(r.get("server"))
        run["sticky"] = f"{sum(1 for s in by_conv.values() if len(s) == 1)}/{len(by_conv)}"
        run["per_server"] = dict(sorted(Counter(str(r.get("server")) for r in ok).items()))
        run["non_200"] = len(records) - len(ok)


# ------------------------------------------------------------------------------------ overhead


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed_chat(client: httpx.Client, base: str, i: int, stream: bool) -> tuple[float | None, float | None]:
    """Non-streamed: (seconds to the whole answer, None); streamed: (seconds to the first SSE event,
    to the first content chunk); None where the status is not 200."""
    body = {"model": "smollm", "messages": [{"role": "user", "content": f"Say hello to number {i}."}],
            "max_tokens": 8, "temperature": 0, "stream": stream}
    start = time.perf_counter()
    if not stream:
        response = client.post(f"{base}/v1/chat/completions", json=body)
        return (time.perf_counter() - start if response.status_code == 200 else None), None
    event = content = None
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            return None, None
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = event or time.perf_counter() - start
                if content is None and '"content"' in line:
                    with contextlib.suppress(ValueError, KeyError, IndexError):
                        if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                            content = time.perf_counter() - start
    return event, content


def overhead(opts: argparse.Namespace, tools: dict[str, str | None]) -> Json:
    routers = [p for p in opts.overhead_routers if missing(p, tools) is None]
    result: Json = {"requests": opts.requests, "skipped": {p: missing(p, tools) for p in opts.overhead_routers
                                                          if missing(p, tools)}}
    with servers_up("overhead", 1, "smollm", ["--engine", "fake"]) as (server,):
        started: dict[str, Router] = {}
        try:
            for policy in routers:
                started[policy] = Router(policy, [server.base], tools, "overhead")
            targets = {"direct": server.base, **{p: r.base for p, r in started.items()}}
            clients = {name: httpx.Client(timeout=60) for name in targets}
            times: dict[str, dict[str, list[float | None]]] = {
                name: {"total": [], "event": [], "ttft": []} for name in targets}
            names = list(targets)
            try:
                for name in names:  # warm-up: connections, the routers' first request
                    for stream in (False, True):
                        timed_chat(clients[name], targets[name], -1, stream)
                for i in range(opts.requests):
                    order = names[i % len(names):] + names[:i % len(names)]
                    for name in order:
                        times[name]["total"].append(timed_chat(clients[name], targets[name], i, False)[0])
                    for name in order:
                        event, content = timed_chat(clients[name], targets[name], i, True)
                        times[name]["event"].append(event)
                        times[name]["ttft"].append(content)
            finally:
                for client in clients.values():
                    client.close()
        finally:
            for router in started.values():
                router.stop()
    result["direct"] = {kind: _stats([t for t in times["direct"][kind] if t is not None])
                        for kind in ("total", "event", "ttft")}
    result["routers"] = {}
    for policy in routers:
        row: Json = {"problems": started[policy].child.problems()}
        for kind in ("total", "event", "ttft"):
            pairs = [(r, d) for r, d in zip(times[policy][kind], times["direct"][kind], strict=True)
                     if r is not None and d is not None]
            diffs = [r - d for r, d in pairs]
            row[kind] = {**_stats([r for r, _ in pairs]), "added_p50": percentile(diffs, 0.5),
                         "added_p90": percentile(diffs, 0.9),
                         "failed": sum(1 for t in times[policy][kind] if t is None)}
        result["routers"][policy] = row
    result["server_log"] = server_report("fleet-overhead-0")
    return result


def _stats(values: list[float]) -> Json:
    return {"n": len(values), "p50": percentile(values, 0.5), "p90": percentile(values, 0.9)}


# ------------------------------------------------------------------------------------ capture


HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
       "content-length", "host"}


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.records: list[Json] = []
        self.lock = threading.Lock()
        self.client = httpx.Client(timeout=120)

    def add(self, record: Json) -> None:
        with self.lock:
            self.records.append(record)


class _Forward(BaseHTTPRequestHandler):
    """Records a request (line, headers, body) and forwards it to the upstream, streaming back."""

    protocol_version = "HTTP/1.1"
    server: _Recorder

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        self.server.add({"requestline": getattr(self, "requestline", ""), "status": code, "rejected": True})
        super().send_error(code, message, explain)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self) -> None:
        body = self._body()
        record: Json = {"method": self.command, "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode(errors="replace")[:100_000]}
        self.server.add(record)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        try:
            with self.server.client.stream(self.command, self.server.upstream + self.path, headers=headers,
                                           content=body) as response:
                record["status"] = response.status_code
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() not in HOP:
                        self.send_header(key, value)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in response.iter_raw():
                    if chunk:
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
        except (httpx.HTTPError, OSError) as error:  # the router hung up after the status line: its choice
            record.setdefault("status", f"proxy error: {error}")
            record["write_error"] = str(error)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _forward


@contextlib.contextmanager
def recorder(upstream: str) -> Iterator[_Recorder]:
    server = _Recorder(upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        server.client.close()


def probes(tag: str) -> list[tuple[str, str, str, Json | None, dict[str, str]]]:
    """(name, method, path, body, headers); each body carries its probe's marker ``tag-name``."""
    anthropic = {"anthropic-version": "2023-06-01"}
    filler = " please repeat these words back to me one by one in the same order"  # > 8 tokens back

    def chat(name: str, stream: bool) -> Json:
        return {"model": "smollm", "messages": [{"role": "user", "content": f"probe {tag}-{name}{filler}"}],
                "max_tokens": 8, "temperature": 0, "stream": stream}

    def messages(name: str, stream: bool) -> Json:
        return {"model": "smollm", "max_tokens": 8, "stream": stream,
                "messages": [{"role": "user", "content": f"probe {tag}-{name}{filler}"}]}

    return [("chat", "POST", "/v1/chat/completions", chat("chat", False), {}),
            ("chat stream", "POST", "/v1/chat/completions", chat("chat stream", True), {}),
            ("completions", "POST", "/v1/completions",
             {"model": "smollm", "prompt": f"probe {tag}-completions{filler}", "max_tokens": 8}, {}),
            ("messages", "POST", "/v1/messages", messages("messages", False), anthropic),
            ("messages stream", "POST", "/v1/messages", messages("messages stream", True), anthropic),
            ("responses", "POST", "/v1/responses",
             {"model": "smollm", "input": f"probe {tag}-responses{filler}", "max_output_tokens": 8}, {}),
            ("models", "GET", "/v1/models", None, {})]


def _diff(sent: Any, got: Any, where: str = "") -> list[str]:
    """Fields added (+), removed (-) and changed (~) from ``sent`` to ``got``, dotted paths."""
    if isinstance(sent, dict) and isinstance(got, dict):
        out = [f"+{where}{k}={json.dumps(got[k])[:60]}" for k in got if k not in sent]
        out += [f"-{where}{k}" for k in sent if k not in got]
        for key in sent:
            if key in got:
                out += _diff(sent[key], got[key], f"{where}{key}.")
        return out
    if isinstance(sent, list) and isinstance(got, list) and len(sent) == len(got):
        pairs = enumerate(zip(sent, got, strict=True))
        return [d for i, (a, b) in pairs for d in _diff(a, b, f"{where}{i}.")]
    return [] if sent == got else [f"~{where.rstrip('.')}: {json.dumps(sent)[:40]} -> {json.dumps(got)[:60]}"]


CLIENT_HEADERS = {"authorization": "Bearer fleet-key", "x-api-key": "fleet-key",
                  "x-session-id": "fleet-session", "x-fleet-probe": "1"}


def capture_one(policy: str, upstream: str, tools: dict[str, str | None]) -> Json:
    """Every probe through ``policy`` into a recording proxy in front of ``upstream``: per probe, the
    client's status, each request the worker got while it ran (path, status; those that carry the
    probe's marker are the probe's), the body changes, and which client headers arrived."""
    with recorder(upstream) as rec:
        proxy = f"http://127.0.0.1:{rec.server_address[1]}"
        router = Router(policy, [proxy], tools, "capture")
        results: Json = {}
        probe_records: set[int] = set()
        try:
            with httpx.Client(timeout=60) as client:
                tag = f"p{os.getpid()}-{policy.replace(':', '-')}"
                for name, method, path, body, extra in probes(tag):
                    marker = f"{tag}-{name}"
                    sent_headers = {**CLIENT_HEADERS, "x-request-id": marker, **extra}
                    count = len(rec.records)
                    response = client.request(method, f"{router.base}{path}", json=body, headers=sent_headers)
                    time.sleep(0.05)
                    with rec.lock:
                        window = list(enumerate(rec.records))[count:]
                    mine = [(i, r) for i, r in window
                            if marker in r.get("body", "")
                            or r.get("headers", {}).get("x-request-id") == marker
                            or (body is None and r.get("path") == path)]
                    probe_records.update(i for i, _ in mine)
                    row: Json = {"status": response.status_code, "reached_worker": bool(mine),
                                 "worker_requests": [f"{r.get('method')} {r.get('path')} -> {r.get('status')}"
                                                     for _, r in mine]}
                    if response.status_code >= 400:
                        row["error"] = response.text[:200]
                    with contextlib.suppress(ValueError):
                        usage = response.json().get("usage") if body and not body.get("stream") else None
                        if usage:
                            row["completion_tokens"] = usage.get("completion_tokens",
                                                                 usage.get("output_tokens"))
                    main = [r for _, r in mine if r.get("path") == path] or [r for _, r in mine]
                    if main:
                        got = main[-1]
                        row["worker_path"] = got["path"]
                        if body is not None:
                            with contextlib.suppress(ValueError):
                                row["body_diff"] = _diff(body, json.loads(got["body"]))
                        headers = got["headers"]
                        row["client_headers_dropped"] = sorted(k for k in sent_headers
                                                               if k.lower() not in headers)
                        row["headers_added"] = {k: v[:60] for k, v in headers.items()
                                                if k not in {h.lower() for h in sent_headers} | ROUTINE}
                        row["host_seen"] = headers.get("host")
                    results[name] = row
        finally:
            router.stop()
        time.sleep(0.1)
        with rec.lock:
            own = Counter(f"{r.get('method', '?')} {r.get('path', r.get('requestline'))} -> {r.get('status')}"
                          for i, r in enumerate(rec.records) if i not in probe_records)
    return {"probes": results, "router_requests": dict(own), "router_problems": router.child.problems()}


# headers every HTTP client sends: not reported as added
ROUTINE = {"host", "content-type", "content-length", "accept", "user-agent", "accept-encoding", "connection"}


def nginx_default_host(server: Server, tools: dict[str, str | None]) -> Json:
    """nginx without ``proxy_set_header Host`` straight in front of our (loopback-bound) server."""
    router = Router("nginx:hash", [server.base], tools, "capture-default-host", nginx_host_header=False)
    try:
        response = httpx.post(f"{router.base}/v1/chat/completions", headers={"X-Session-Id": "s"}, json={
            "model": "smollm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        return {"status": response.status_code, "body": response.text[:200]}
    finally:
        router.stop()


def capture(opts: argparse.Namespace, tools: dict[str, str | None]) -> Json:
    out: Json = {}
    with servers_up("capture", 1, "smollm", ["--engine", "fake"]) as (server,):
        for policy in opts.capture_routers:
            if (why := missing(policy, tools)) is not None:
                out[policy] = {"skipped": why}
                continue
            out[policy] = capture_one(policy, server.base, tools)
        if "nginx:hash" in opts.capture_routers and missing("nginx:hash", tools) is None:
            out["nginx_default_host"] = nginx_default_host(server, tools)
    out["server_log"] = server_report("fleet-capture-0")
    return out


# ------------------------------------------------------------------------------------ report


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.2f}"


def hit_table(runs: list[Json], opts: argparse.Namespace) -> str:
    turns = range(1, opts.turns + 1)
    head = ("| policy | client sends | " + " | ".join(f"turn {t}" for t in turns)
            + f" | turns 2–{opts.turns} | of reachable | sticky | requests per server | non-200 "
            "| wall s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for run in runs:
        if "skipped" in run:
            lines.append(f"| {run['policy']} | {run['skipped']} |" + " |" * (head.count("|") - 3))
            continue
        per_turn = " | ".join(_f(run["per_turn"].get(t)) for t in turns)
        lines.append(f"| {run['policy']} | {run['client_header'] or '–'} | {per_turn} | "
                     f"**{_f(run['hit_ratio'])}** ({run['cached_tokens']}/{run['prompt_tokens']}) | "
                     f"{_f(run['of_reachable'])} | {run['sticky']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in run['per_server'].items())} | {run['non_200']} | "
                     f"{run['wall_s']} |")
    return "\n".join(lines)


def overhead_table(result: Json) -> str:
    d = result["direct"]
    lines = [f"{result['requests']} rounds, one request per side each (paired: added = router − direct of "
             f"the same round). Direct: total p50 {_ms(d['total']['p50'])} ms "
             f"(p90 {_ms(d['total']['p90'])}); "
             f"streamed first SSE event p50 {_ms(d['event']['p50'])} ms; first content p50 "
             f"{_ms(d['ttft']['p50'])} ms (p90 {_ms(d['ttft']['p90'])})",
             "",
             "| router | total p50 ms | added p50 | added p90 | first event added p50 | TTFT p50 ms | "
             "added TTFT p50 | added TTFT p90 | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for policy, row in result["routers"].items():
        t, e, s = row["total"], row["event"], row["ttft"]
        lines.append(f"| {policy} | {_ms(t['p50'])} | {_ms(t['added_p50'])} | {_ms(t['added_p90'])} | "
                     f"{_ms(e['added_p50'])} | {_ms(s['p50'])} | {_ms(s['added_p50'])} | "
                     f"{_ms(s['added_p90'])} | "
                     f"{t['failed'] + s['failed']} |")
    for policy, why in result["skipped"].items():
        lines.append(f"| {policy} | {why} |" + " |" * 7)
    log = result.get("server_log", {})
    lines.append(f"\nour server's log: non-2xx {log.get('non_2xx')}; warnings/errors {log.get('problems')}")
    return "\n".join(lines)


def capture_table(result: Json) -> str:
    paths = {p[0]: p[2] for p in probes("x")}
    lines = ["| router | " + " | ".join(paths) + " |", "|---|" + "---|" * len(paths)]
    notes = []
    for policy, row in result.items():
        if policy in ("server_log", "nginx_default_host"):
            continue
        if "skipped" in row:
            lines.append(f"| {policy} | {row['skipped']} |" + " |" * (len(paths) - 1))
            continue
        cells = []
        for name, path in paths.items():
            probe = row["probes"].get(name, {})
            forwarded = probe.get("worker_path") == path
            cells.append(f"{probe.get('status')} {'forwarded' if forwarded else 'NOT forwarded'}")
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
        notes.append(f"- **{policy}**")
        by_diff: dict[str, list[str]] = {}
        for name, probe in row["probes"].items():
            if probe.get("body_diff"):
                by_diff.setdefault("; ".join(probe["body_diff"]), []).append(name)
        for diff, names in by_diff.items():
            notes.append(f"  - body changed ({', '.join(names)}): {diff}")
        reached = [p for p in row["probes"].values() if p.get("worker_path")]
        by_dropped: dict[str, list[str]] = {}
        for name, probe in row["probes"].items():
            if probe.get("worker_path"):
                by_dropped.setdefault(", ".join(probe.get("client_headers_dropped", [])) or "none",
                                      []).append(name)
        added = sorted({f"{k}: {v}" for p in reached for k, v in p.get("headers_added", {}).items()})
        hosts = sorted({str(p.get("host_seen")) for p in reached})
        notes.append("  - client headers dropped (of " + ", ".join(CLIENT_HEADERS) + ", x-request-id, "
                     "anthropic-version): " + "; ".join(f"{', '.join(names)}: {dropped}"
                                                        for dropped, names in by_dropped.items()))
        notes.append(f"  - headers added: {'; '.join(added) or 'none'}; "
                     f"Host at the worker: {', '.join(hosts)}")
        for name, probe in row["probes"].items():
            own = f"{'GET' if name == 'models' else 'POST'} {paths[name]} "
            side = [w for w in probe.get("worker_requests", []) if not w.startswith(own)]
            if side:
                notes.append(f"  - {name}: the worker also got {', '.join(side)}")
            if probe.get("error"):
                notes.append(f"  - {name}: client got {probe['status']} {probe['error'][:120]}")
            if probe.get("completion_tokens") is not None and probe["completion_tokens"] != 8:
                notes.append(f"  - {name}: {probe['completion_tokens']} tokens generated for a limit of 8 "
                             "(the fake engine's reply is longer)")
        notes.append("  - the router's own requests (status our server gave): "
                     + ("; ".join(f"{k} ×{v}" for k, v in row["router_requests"].items()) or "none"))
        if row.get("router_problems"):
            notes.append(f"  - router log: {' | '.join(row['router_problems'])[:700]}")
    if "nginx_default_host" in result:
        d = result["nginx_default_host"]
        notes.append(f"- **nginx without `proxy_set_header Host`** in front of our loopback-bound server: "
                     f"{d['status']} {d['body'][:120]}")
    log = result.get("server_log", {})
    notes.append(f"- our server's log (fake engine, all routers above): non-2xx {log.get('non_2xx')}; "
                 f"warnings/errors {log.get('problems')}")
    return "\n".join([*lines, "", *notes])


# ------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                        help="hit section: routing policies")
    parser.add_argument("--overhead-routers", default=",".join(OVERHEAD_ROUTERS))
    parser.add_argument("--capture-routers", default=",".join(CAPTURE_ROUTERS))
    parser.add_argument("--model", default="smollm", help="hit section: the model (real MLX)")
    parser.add_argument("--engine", default="mlx", choices=("mlx", "fake"), help="hit section: the engine")
    parser.add_argument("--servers", type=int, default=2, help="hit section: servers behind a router")
    parser.add_argument("--conversations", type=int, default=7)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrent", action="store_true",
                        help="hit section: each turn's requests all at once (default: one at a time)")
    parser.add_argument("--requests", type=int, default=200,
                        help="overhead: rounds (one request per side each)")
    parser.add_argument("--smg", default=None, help="sglang-router's smg (default: beside python, PATH)")
    parser.add_argument("--vllm-router", default=None, help="vllm-router (default: beside python, PATH)")
    parser.add_argument("--nginx", default=None, help="nginx (default: PATH, /usr/sbin/nginx)")
    parser.add_argument("--smoke", action="store_true",
                        help="CI: fake engine, sglang-router only, 3 conversations x 2 turns, 5 rounds")
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.engine, opts.conversations, opts.turns, opts.requests = "fake", 3, 2, 5
        opts.policies = "sglang:cache_aware,sglang:round_robin"
        opts.overhead_routers = opts.capture_routers = "sglang:cache_aware"
    opts.sections = [s for s in opts.sections.split(",") if s]
    for key in ("policies", "overhead_routers", "capture_routers"):
        setattr(opts, key, [p for p in getattr(opts, key).split(",") if p])
    return opts


def _section(name: str, run: Callable[[], str]) -> str:
    started = time.perf_counter()
    text = run()
    return f"### {name} ({time.perf_counter() - started:.0f} s)\n\n{text}\n"


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    # SIGTERM (timeout, kill) unwinds like Ctrl-C: every finally stops its servers and routers
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    tools = find_tools(opts)
    payload: Json = {"tools": tools, "options": {k: v for k, v in vars(opts).items() if k != "json"}}
    print(f"routers: {json.dumps(tools)}; logs: {LOG_DIR}/fleet-*.log", flush=True)
    out: list[str] = []
    if "hit" in opts.sections:
        def hits() -> str:
            runs = []
            for policy in opts.policies:
                print(f"hit ratio: {policy} ...", flush=True)
                runs.append(hit_run(policy, opts, tools))
            summarize_hits(runs)
            payload["hit"] = runs
            return hit_table(runs, opts)
        mode = "each turn's requests at once" if opts.concurrent else "one request at a time"
        out.append(_section(f"Fleet prefix-cache hit ratio ({opts.engine} {opts.model}, {opts.servers} "
                            f"servers, {opts.conversations} conversations x {opts.turns} turns, interleaved, "
                            f"{mode})", hits))
        print(out[-1], flush=True)
    if "overhead" in opts.sections:
        def added() -> str:
            payload["overhead"] = overhead(opts, tools)
            return overhead_table(payload["overhead"])
        out.append(_section("Router overhead (fake engine, one worker)", added))
        print(out[-1], flush=True)
    if "capture" in opts.sections:
        def captured() -> str:
            payload["capture"] = capture(opts, tools)
            return capture_table(payload["capture"])
        out.append(_section("What each router forwards (recording proxy before a fake-engine server)",
                            captured))
        print(out[-1], flush=True)
    if opts.json:
        opts.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

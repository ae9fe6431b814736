"""One command for every benchmark row: ``python -m bench`` prints one table "ours / peer / raw".

  ours  this server, ``python -m mlx_server`` (Linux CPU fast path: OpenBLAS preloaded by re-exec,
        quantized layers dequantized to float32), the ``openai`` SDK as client over HTTP SSE
  peer  ``python -m mlx_vlm.server`` (shipped with mlx-vlm), same client workload, started with the
        same loader environment (``activation_env()``: OpenBLAS preloaded) and, since it cannot
        dequantize by itself, on a float32 copy of the same checkpoint (``bench._raw --float-copy``:
        the very weights our server computes with); its Automatic Prefix Cache on (APC_ENABLED=1,
        disk tier off)
  raw   ``mlx_vlm.stream_generate`` in-process, in a subprocess started like the server
        (``ensure_fast_blas()`` re-exec, then ``dequantize_for_cpu(model, "auto")``; bench/_raw.py)

Every figure is the median of --runs runs with min–max; one warm-up request per process is excluded.
While one side is measured, the other processes are stopped (SIGSTOP) so they do not share the cores;
runs alternate between sides so drift on a noisy machine hits all of them. Every loop is bounded in
count and in time (--row-budget seconds per row, at least one run). Loopback traffic only.

Run: python -m bench [--model smollm] [--runs 3] [--tokens 64] [--json PATH] [--quick] [--no-peer]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ._common import CACHE, smollm_dir

STORY = "Write a long story about a robot who learns to paint."
SHORT = "What is the capital of France? Answer in one sentence."
FILLER = ("The history of computing spans centuries, from mechanical calculators and punched "
          "cards to transistors, integrated circuits and the networked machines of today. ")
QUESTIONS = ["Summarize the text above in one sentence.", "Name one machine mentioned above.",
             "What came after punched cards?", "Give the text a title.", "Is the text about cooking?",
             "What is the main topic of the text?"]
ROWS = ("decode", "ttft", "health", "multiturn", "interleaved", "swap")
QUICK_ROWS = ("decode",)
LOG_DIR = Path(tempfile.gettempdir()) / "mlx-server-bench-logs"


# ----------------------------------------------------------------------------- statistics


def summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": values}


def fmt(stat: dict[str, Any] | None, scale: float = 1.0, digits: int = 2) -> str:
    if not stat:
        return "-"
    med, low, high = (stat[k] * scale for k in ("median", "min", "max"))
    if stat["n"] == 1:
        return f"{med:.{digits}f} (n=1)"
    return f"{med:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if not a or not b or not b["median"]:
        return None
    return float(a["median"] / b["median"])


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    from .cpu_fastpath import _env

    try:
        env = _env(True)
    except SystemExit:  # not Linux or OpenBLAS missing: everything runs as shipped, said in the notes
        env = dict(os.environ)
    return {**env, **(extra or {})}


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
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

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
    def __init__(self, name: str, process: subprocess.Popen[Any], base: str, model: str) -> None:
        super().__init__(name, process)
        self.base, self.model = base, model
        import openai

        self.client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=900, max_retries=0)


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
    port = free_port()
    log = LOG_DIR / f"{name}.log"
    process = _popen([sys.executable, "-m", "mlx_server", "--model", model, "--port", str(port),
                      "--cache-dir", str(CACHE), "--log-level", "warning", *extra], None, log)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(process, f"{base}/health", "model", 600, log)
    return Server(name, process, base, model if not Path(model).exists() else str(Path(model)))


def start_peer(model_dir: Path) -> Server:
    port = free_port()
    log = LOG_DIR / "peer.log"
    env = fast_env({"APC_ENABLED": "1", "APC_DISK_ENABLED": "0"})
    process = _popen([sys.executable, "-m", "mlx_vlm.server", "--model", str(model_dir),
                      "--host", "127.0.0.1",
                      "--port", str(port), "--log-level", "WARNING"], env, log)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(process, f"{base}/health", "loaded_model", 600, log)
    return Server("peer", process, base, str(model_dir))


class Raw(Proc):
    def __init__(self, model_dir: Path) -> None:
        process = subprocess.Popen([sys.executable, "-m", "bench._raw", str(model_dir)], env=fast_env(),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   stderr=(LOG_DIR / "raw.log").open("w"), cwd=Path(__file__).parent.parent)
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

    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"messages": messages, "max_tokens": max_tokens}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def stop(self) -> None:
        self.resume()
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.write('{"op": "quit"}\n')
            self.process.stdin.flush()
            self.process.wait(timeout=10)
        super().stop()


@contextlib.contextmanager
def only(active: Proc, everyone: list[Proc]) -> Iterator[None]:
    for proc in everyone:
        if proc is not active:
            proc.pause()
    active.resume()
    try:
        yield
    finally:
        for proc in everyone:
            proc.resume()


# ----------------------------------------------------------------------------- client side


def stream_once(server: Server, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    start = time.perf_counter()
    stream = server.client.chat.completions.create(
        model=server.model, messages=messages, temperature=0, max_tokens=max_tokens,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True})
    first = last = 0.0
    chunks = 0
    text = ""
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
            chunks += 1
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    generated = usage.completion_tokens if usage else chunks
    details = getattr(usage, "prompt_tokens_details", None) if usage else None
    cached = getattr(details, "cached_tokens", None) if details else None
    return {"ttft_s": first - start if first else None,
            # tokens after the first one over the time they took: mlx_vlm's generation_tps definition
            "decode_tps": (generated - 1) / (last - first) if generated > 1 and last > first else None,
            "generated": generated, "prompt_tokens": usage.prompt_tokens if usage else None,
            "cached_tokens": cached, "text": text}


def sysmsg(nonce: str) -> dict[str, str]:
    # A unique system message first: no prefix cache (ours, the peer's) can reuse an earlier run's
    # prompt beyond the template's first few tokens, so TTFT rows measure a cold prefill on every side.
    return {"role": "system", "content": f"Session {nonce}. You are a helpful assistant."}


def long_document(model_dir: Path, tokens: int) -> str:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    text = ""
    while len(tokenizer.encode(text).ids) < tokens:
        text += FILLER
    return text


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def bounded_runs(runs: int, budget: float) -> Iterator[int]:
    start = time.monotonic()
    for index in range(runs):
        if index and time.monotonic() - start > budget:
            return
        yield index


def health_p99(server: Server, messages: list[dict[str, Any]], tokens: int) -> float | None:
    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set() and len(latencies) < 3000:
                start = time.perf_counter()
                client.get(f"{server.base}/health")
                latencies.append(time.perf_counter() - start)
                time.sleep(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    stream = server.client.chat.completions.create(model=server.model, messages=messages,  # type: ignore
                                                   temperature=0, max_tokens=tokens, stream=True)
    started = False
    for chunk in stream:
        if not started and chunk.choices and chunk.choices[0].delta.content:
            thread.start()  # polling during decode: the generation is streaming
            started = True
    done.set()
    if started:
        thread.join(timeout=15)
    if len(latencies) < 5:
        return None
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


# ----------------------------------------------------------------------------- rows


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.procs: list[Proc] = []

    def put(self, row: str, side: str, values: list[float], **extra: Any) -> None:
        self.results.setdefault(row, {})[side] = {**(summary([v for v in values if v is not None]) or {}),
                                                  **extra} if values else None

    def get(self, row: str, side: str) -> dict[str, Any] | None:
        stat = self.results.get(row, {}).get(side)
        return stat if stat and "median" in stat else None


def sides_for(bench: Bench, raw: Raw | None, ours: Server, peer: Server | None) -> list[tuple[str, Any]]:
    sides: list[tuple[str, Any]] = [("ours", ours)]
    if peer:
        sides.append(("peer", peer))
    if raw:
        sides.append(("raw", raw))
    return sides


def run_generation(side: Any, messages: list[dict[str, Any]], tokens: int) -> dict[str, Any]:
    if isinstance(side, Raw):
        return side.generate(messages, tokens)
    return stream_once(side, messages, tokens)


def row_decode_ttft(bench: Bench, raw: Raw, ours: Server, peer: Server | None, long_doc: str) -> None:
    args = bench.args
    sides = sides_for(bench, raw, ours, peer)
    cases = [("decode", STORY, args.tokens)]
    if "ttft" in args.rows:
        cases += [("ttft_short", SHORT, 2), ("ttft_long", long_doc + "\n\nSummarize the text above.", 2)]
    for row, user, tokens in cases:
        collected: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in sides}
        progress(f"row {row}")
        for _ in bounded_runs(args.runs, args.row_budget):
            for name, side in sides:
                nonce = uuid.uuid4().hex[:12]
                messages = [sysmsg(nonce), {"role": "user", "content": user}]
                with only(side, bench.procs):
                    collected[name].append(run_generation(side, messages, tokens))
        key = "decode_tps" if row == "decode" else "ttft_s"
        for name, results in collected.items():
            bench.put(row, name, [r[key] for r in results],
                      prompt_tokens=results[0].get("prompt_tokens") if results else None,
                      generated=[r.get("generated") for r in results],
                      sample=(results[0].get("text") or "")[:60] if results else None)


def row_health(bench: Bench, ours: Server, peer: Server | None) -> None:
    progress("row health")
    for name, side in [("ours", ours), ("peer", peer)]:
        if side is None:
            continue
        values = []
        for _ in bounded_runs(bench.args.runs, bench.args.row_budget):
            with only(side, bench.procs):
                values.append(health_p99(side, [sysmsg(uuid.uuid4().hex[:12]),
                                                {"role": "user", "content": STORY}], bench.args.tokens))
        bench.put("health_p99", name, [v * 1000 for v in values if v is not None])


def conversation(side: Server, long_doc: str, turns: int, tokens: int) -> tuple[list[dict[str, Any]], dict]:
    nonce = uuid.uuid4().hex[:12]
    messages: list[dict[str, Any]] = [sysmsg(nonce)]
    last: dict[str, Any] = {}
    for turn in range(turns):
        content = QUESTIONS[turn % len(QUESTIONS)]
        if turn == 0:
            content = long_doc + "\n\n" + content
        messages.append({"role": "user", "content": content})
        last = stream_once(side, messages, tokens)
        messages.append({"role": "assistant", "content": last["text"] or "OK."})
    return messages[:-1], last


def row_multiturn(bench: Bench, ours: Server, ours_nocache: Server | None, peer: Server | None,
                  long_doc: str, ours_has_cache: bool) -> None:
    args = bench.args
    with_c: dict[str, list[float]] = {"ours": [], "peer": []}
    without: dict[str, list[float]] = {"ours": [], "peer": []}
    history = 0
    progress("row multiturn")
    for _ in bounded_runs(args.runs, args.row_budget):
        for name, side in [("ours", ours), ("peer", peer)]:
            if side is None:
                continue
            with only(side, bench.procs):
                messages, turn6 = conversation(side, long_doc, 6, 12)
            history = turn6.get("prompt_tokens") or history
            if name == "ours" and not ours_has_cache:
                without["ours"].append(turn6["ttft_s"])  # this build has no prefix cache: turn 6 is cold
                continue
            with_c[name].append(turn6["ttft_s"])
            cold_side = ours_nocache if name == "ours" else side
            if cold_side is None:
                continue
            if name == "peer":
                httpx.post(f"{side.base}/v1/cache/reset", timeout=30)
            with only(cold_side, bench.procs):
                without[name].append(stream_once(cold_side, messages, 12)["ttft_s"])
    for name in ("ours", "peer"):
        bench.put("multiturn_cached", name, with_c[name])
        bench.put("multiturn_cold", name, without[name])
    bench.results.setdefault("multiturn_cached", {})["history_tokens"] = history


def row_interleaved(bench: Bench, ours: Server, peer: Server | None, model_dir: Path) -> None:
    docs = [long_document(model_dir, 300) + f"\nDocument {i}." for i in range(4)]
    progress("row interleaved")
    for name, side in [("ours", ours), ("peer", peer)]:
        if side is None:
            continue
        convs: list[list[dict[str, Any]]] = [[sysmsg(uuid.uuid4().hex[:12])] for _ in docs]
        previous: list[int | None] = [None] * 4
        cached = cacheable = 0
        reported = True
        deadline = time.monotonic() + bench.args.row_budget
        with only(side, bench.procs):
            for turn in range(3):
                for index, conv in enumerate(convs):
                    if time.monotonic() > deadline:
                        break
                    content = QUESTIONS[turn] if turn else docs[index] + "\n\n" + QUESTIONS[turn]
                    conv.append({"role": "user", "content": content})
                    result = stream_once(side, conv, 8)
                    conv.append({"role": "assistant", "content": result["text"] or "OK."})
                    if result["cached_tokens"] is None:
                        reported = False
                    if previous[index] is not None:
                        # cacheable: the prompt this conversation already sent (the previous request's
                        # prompt tokens), a prefix of this one; generated tokens are not counted
                        cacheable += previous[index] or 0
                        cached += min(result["cached_tokens"] or 0, previous[index] or 0)
                    previous[index] = result["prompt_tokens"]
        bench.put("interleaved_hit", name, [cached / cacheable] if cacheable and reported else [],
                  cached=cached, cacheable=cacheable, usage_reports_cached=reported)


def row_swap(bench: Bench, model: str, swaps: int) -> None:
    from tests.support.tiny_models import build_gemma3

    progress("row swap")
    tiny = build_gemma3(Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "gemma3")
    server = start_ours("swap", str(tiny), "--fallback-model", "")
    bench.procs.append(server)
    tiny_id = str(tiny)
    hi = [{"role": "user", "content": "Hi"}]

    def ask(model_id: str) -> float:
        start = time.perf_counter()
        server.client.chat.completions.create(model=model_id, messages=hi, temperature=0,  # type: ignore
                                              max_tokens=1)
        return time.perf_counter() - start

    try:
        with only(server, bench.procs):
            cold = ask(model)  # first load of A in this process (B, the tiny VLM, was preloaded)
            back: list[float] = []  # B -> A: the time to have A serving again after a swap
            away: list[float] = []  # A -> B (the tiny VLM: its processor load dominates)
            rss_first = rss_last = float("nan")
            deadline = time.monotonic() + bench.args.row_budget * 2
            for index in range(swaps // 2):
                if index and time.monotonic() > deadline:
                    break
                away.append(ask(tiny_id))
                back.append(ask(model))
                if index == 0:
                    rss_first = server.rss_mb()
                rss_last = server.rss_mb()
        rounds = [x + y for x, y in zip(away, back, strict=True)]
        bench.put("swap_time", "ours", back, cold_load_s=cold, a_to_b=summary(away),
                  round_trip=summary(rounds))
        bench.put("swap_rss", "ours", [rss_last / rss_first] if rounds else [],
                  rss_first_mb=rss_first, rss_last_mb=rss_last, swaps=2 * len(rounds))
    finally:
        server.stop()
        bench.procs.remove(server)


# ----------------------------------------------------------------------------- table


def table(bench: Bench) -> tuple[str, list[dict[str, Any]]]:
    r = bench.results
    out: list[dict[str, Any]] = []

    def line(label: str, key: str, target: str, ok: Any, scale: float = 1.0, digits: int = 2,
             ratio_of: tuple[str, str] | None = None, ratio_target: Any = None) -> None:
        ours, peer, raw = (bench.get(key, s) for s in ("ours", "peer", "raw"))
        if not (ours or peer or raw):
            return
        ours_ratio = peer_ratio = None
        if ratio_of:
            ours_ratio = ratio(bench.get(ratio_of[0], "ours"), bench.get(ratio_of[1], "ours"))
            peer_ratio = ratio(bench.get(ratio_of[0], "peer"), bench.get(ratio_of[1], "peer"))
        else:
            ours_ratio, peer_ratio = ratio(ours, raw), ratio(peer, raw)
        check = ratio_target if ratio_target else ok
        value = ours_ratio if ratio_target else (ours["median"] if ours else None)
        meets = None if check is None or value is None else bool(check(value))
        out.append({"row": label, "key": key, "ours": ours, "peer": peer, "raw": raw,
                    "ours_ratio": ours_ratio, "peer_ratio": peer_ratio, "target": target, "meets": meets,
                    "cells": [fmt(ours, scale, digits), fmt(peer, scale, digits), fmt(raw, scale, digits)]})

    line("decode tok/s (SSE vs stream_generate)", "decode", "ours/raw ≥ 0.97", None,
         ratio_target=lambda v: v >= 0.97)
    line("TTFT short prompt, s", "ttft_short", "ours/raw (report)", None, digits=3)
    long_row = r.get("ttft_long", {})
    long_tokens = (long_row.get("raw") or long_row.get("ours") or {}).get("prompt_tokens")
    line(f"TTFT long prompt ({long_tokens or '?'} tokens), s", "ttft_long", "ours/raw (report)", None)
    history = r.get("multiturn_cached", {}).get("history_tokens")
    line(f"turn-6 TTFT ({history} tok history), prefix cache on, s", "multiturn_cached",
         "cached/cold ≤ 0.1", None, digits=3,
         ratio_of=("multiturn_cached", "multiturn_cold"), ratio_target=lambda v: v <= 0.1)
    line("turn-6 TTFT, cold (no cache), s", "multiturn_cold", "(denominator)", None)
    line("interleaved ×4: cache hit ratio", "interleaved_hit", "≥ 0.9", lambda v: v >= 0.9, digits=3,
         ratio_of=("interleaved_hit", "interleaved_hit"))
    swap_ratio = None
    if bench.get("swap_time", "ours"):
        stat = r["swap_time"]["ours"]
        swap_ratio = stat["median"] / stat["cold_load_s"]
    line("A→B→A: the B→A leg (1-token request), s", "swap_time", "swap/cold ≤ 1.1", None, digits=3)
    if out and out[-1]["key"] == "swap_time":
        out[-1]["ours_ratio"], out[-1]["peer_ratio"] = swap_ratio, None
        out[-1]["meets"] = None if swap_ratio is None else swap_ratio <= 1.1
    swaps = (r.get("swap_rss", {}).get("ours") or {}).get("swaps")
    line(f"RSS after {swaps} swaps ÷ after first A→B→A", "swap_rss", "≤ 1.1", lambda v: v <= 1.1, digits=3,
         ratio_of=("swap_rss", "swap_rss"))
    for row in out:
        if row["key"] in ("interleaved_hit", "swap_rss"):
            row["ours_ratio"] = row["ours"]["median"] if row["ours"] else None
            row["peer_ratio"] = row["peer"]["median"] if row["peer"] else None
    line("/health p99 during a stream, ms", "health_p99", "≤ 20 ms", lambda v: v <= 20, digits=1)
    for row in out:
        if row["key"] == "health_p99":
            row["ours_ratio"] = row["peer_ratio"] = None
        if row["key"] == "multiturn_cold":
            row["ours_ratio"] = row["peer_ratio"] = None

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    header = ["row", "ours", "peer", "raw", "ratio ours", "ratio peer", "target", "ours meets"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in out:
        meets = {True: "yes", False: "**no**", None: "-"}[row["meets"]]
        lines.append("| " + " | ".join([row["row"], *row["cells"], num(row["ours_ratio"]),
                                        num(row["peer_ratio"]), row["target"], meets]) + " |")
    return "\n".join(lines), out


# ----------------------------------------------------------------------------- main


def resolve_model_dir(model: str) -> Path:
    if model == "smollm":
        return smollm_dir()
    if Path(model).exists():
        return Path(model).resolve()
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, local_files_only=True))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                cpu = text_line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    import importlib.metadata as md

    for dist in ("mlx", "mlx-vlm", "openai"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[dist] = md.version(dist)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True, cwd=Path(__file__).parent).stdout.strip()
    versions["mlx-server"] = commit + ("+dirty" if dirty else "")
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "load_avg_start": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--long-tokens", type=int, default=1960, help="tokens of the long document")
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--row-budget", type=float, default=300, help="seconds per row before runs stop")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="CI smoke: decode row, 1 run, 4 tokens, no peer")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.runs, args.tokens = ",".join(QUICK_ROWS), 1, 4
        args.no_peer, args.row_budget = True, 30
    args.rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    started = time.time()
    bench = Bench(args)
    info = machine()
    model_dir = resolve_model_dir(args.model)
    help_text = subprocess.run([sys.executable, "-m", "mlx_server", "--help"], capture_output=True,
                               text=True).stdout
    has_cache = "--no-prefix-cache" in help_text
    cache_note = "on (--no-prefix-cache for the cold side)" if has_cache else "absent in this build"
    bench.notes.append(f"our prefix cache: {cache_note}")
    long_doc = long_document(model_dir, args.long_tokens) if {"ttft", "multiturn"} & set(args.rows) else ""
    raw = ours = peer = ours_cold = None
    try:
        need_main = {"decode", "ttft", "health", "multiturn", "interleaved"} & set(args.rows)
        if need_main:
            ours = start_ours("ours", args.model)
            bench.procs.append(ours)
            backend = httpx.get(f"{ours.base}/health", timeout=10).json().get("backend")
            info["ours_backend"] = backend
        if {"decode", "ttft"} & set(args.rows):
            for proc in bench.procs:
                proc.pause()
            raw = Raw(model_dir)
            bench.procs.append(raw)
            info["raw_backend"] = raw.info
        if need_main and not args.no_peer:
            for proc in bench.procs:
                proc.pause()
            peer_dir = CACHE / f"{model_dir.name}-float32-for-peer"
            if not (peer_dir / "model.safetensors").exists():
                subprocess.run([sys.executable, "-m", "bench._raw", "--float-copy", str(model_dir),
                                str(peer_dir)],
                               check=True, capture_output=True, cwd=Path(__file__).parent.parent)
            peer = start_peer(peer_dir)
            bench.procs.append(peer)
        if "multiturn" in args.rows and has_cache:
            for proc in bench.procs:
                proc.pause()
            ours_cold = start_ours("ours-nocache", args.model, "--no-prefix-cache")
            bench.procs.append(ours_cold)
        # warm-up, excluded: one short request per process
        for proc in bench.procs:
            with only(proc, bench.procs):
                run_generation(proc, [{"role": "user", "content": "Hi"}], 4)
        if {"decode", "ttft"} & set(args.rows) and ours and raw:
            row_decode_ttft(bench, raw, ours, peer, long_doc)
        if raw:
            raw.stop()
            bench.procs.remove(raw)
        if "health" in args.rows and ours:
            row_health(bench, ours, peer)
        if "multiturn" in args.rows and ours:
            row_multiturn(bench, ours, ours_cold, peer, long_doc, has_cache)
        if "interleaved" in args.rows and ours:
            row_interleaved(bench, ours, peer, model_dir)
        for proc in list(bench.procs):
            proc.stop()
            bench.procs.remove(proc)
        if "swap" in args.rows:
            row_swap(bench, args.model, args.swaps)
    finally:
        for proc in bench.procs:
            proc.stop()
    swap = bench.get("swap_time", "ours")
    if swap:
        legs = ", ".join(f"{label} {fmt(swap.get(key), 1, 3)} s" for label, key in
                         (("A→B leg", "a_to_b"), ("A→B→A round trip", "round_trip")) if swap.get(key))
        bench.notes.append(f"swap: cold load of A (first 1-token request for A, B preloaded) "
                           f"{swap['cold_load_s']:.3f} s; {legs}")
    text, rows = table(bench)
    elapsed = time.time() - started
    print(f"\nmlx-server bench: model {args.model}, {args.runs} runs per figure (median, min–max), "
          f"{args.tokens} decode tokens; warm-up excluded")
    print(f"cpu: {info['cpu']} ({info['usable_cpus']} usable); {info['versions']}; {elapsed:.0f} s")
    print(text)
    for note in bench.notes:
        print(f"note: {note}")
    if args.json:
        payload = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "machine": info,
                   "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "elapsed_s": elapsed, "table": rows, "results": bench.results, "notes": bench.notes,
                   "markdown": text}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

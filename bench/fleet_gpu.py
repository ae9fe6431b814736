"""Fleet row (issue 19) on a 2-GPU machine: two servers, one per GPU, behind sglang-router, against
one server alone. ``python -m bench.fleet_gpu --model DIR`` (bench/GPU.md, "Fleet").

Servers: ``python -m mlx_server --model DIR --max-batch B`` (B = --max-batch, 8 by default), server A
with ``CUDA_VISIBLE_DEVICES`` = the first of --gpus, server B with the second (its own
``MLX_PTX_CACHE_DIR``, so that the two cold starts, run side by side, never read a kernel file the
other is still writing). Both start at once and are ready before anything is measured. The router:
``python -m sglang_router.launch_router --worker-urls A B --policy P`` (sglang-router 0.3.2).

For each N in --ns (clients per server), three modes, each a warm-up round (4 tokens) and --runs
measured rounds of streams started together (a barrier), unique prompts (bench.concurrency's: a
fresh system message each), ``max_tokens`` = --tokens, temperature 0:

  one     N clients on server A alone (server B paused, SIGSTOP)
  direct  N clients on A and N on B at once, no router (the ceiling of two servers)
  router  2N clients on the router, which spreads them over A and B
  router-rr  the same through a second router with ``--policy round_robin``: measured at an N where
          a round of ``router`` sent over 60 % of its requests to one server (unless --no-fallback),
          or at every N when named in --modes

Figures per round are bench.concurrency's (aggregate decode tok/s = Σ tokens after each stream's
first ÷ (last token of any stream − first first-token of any stream)); the median over rounds. The
row's ratio: aggregate(router, 2N) ÷ aggregate(one, N). Per-server split of each router round: the
difference of each server's /metrics (``mlx_server_generations_total``, completion tokens, mean
``mlx_server_batch_size``) before and after it. Where nvidia-smi exists, the GPUs' utilization is
sampled every second and summarized per mode, and the compute processes per GPU are recorded once
both servers are up (the check that each server runs on its own GPU).

CPU check (no GPU): python -m bench.fleet_gpu --model gemma --ours-args "--engine fake
--fake-delay 0.005" --ns 1,2 --tokens 16 --runs 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ._common import CACHE, free_port
from .concurrency import _f, figures, median_of, server_round, spread_round
from .harness import LOG_DIR, Proc, Server, _popen, _wait_ready, only

MODES = ("one", "direct", "router", "router-rr")


# ------------------------------------------------------------------------------------ processes


def start_server(name: str, model: str, gpu: str | None, extra: list[str],
                 env_extra: dict[str, str]) -> tuple[subprocess.Popen[Any], str, Path]:
    """``python -m mlx_server`` on a free port, pinned to ``gpu`` (not waited for)."""
    port = free_port()
    log = LOG_DIR / f"{name}.log"
    env = {**os.environ, **env_extra, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
    process = _popen([sys.executable, "-m", "mlx_server", "--model", model, "--port", str(port),
                      "--cache-dir", str(CACHE), "--log-level", "warning", *extra], env, log)
    return process, f"http://127.0.0.1:{port}", log


def wait_loaded(process: subprocess.Popen[Any], base: str, log: Path) -> None:
    """/health names the model and no longer says ``loading`` (the warm-up is part of the load)."""
    _wait_ready(process, f"{base}/health", "model", 900, log)
    deadline = time.monotonic() + 900
    while httpx.get(f"{base}/health", timeout=5).json().get("state") == "loading":
        if time.monotonic() > deadline:
            raise SystemExit(f"{base} still loading; log: {log}")
        time.sleep(0.25)


def start_router(name: str, workers: list[str], model: str, policy: str,
                 extra: list[str]) -> tuple[Server, str]:
    """sglang-router on a free port over ``workers``; ready once it lists a model; its metrics URL."""
    port, prom = free_port(), free_port()
    log = LOG_DIR / f"{name}.log"
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port),
           "--worker-urls", *workers, "--policy", policy, "--prometheus-host", "127.0.0.1",
           "--prometheus-port", str(prom), "--log-level", "warn", *extra]
    process = _popen(cmd, None, log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise SystemExit(f"router exited ({process.returncode}); log: {log}\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).json().get("data"):
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"router not ready after 120 s; log: {log}")
        time.sleep(0.25)
    return Server(name, process, base, model), f"http://127.0.0.1:{prom}/metrics"


# ------------------------------------------------------------------------------------ observing


def scrape(base: str) -> dict[str, float]:
    """The server's counters this row reads (summed over their labels)."""
    wanted = {"mlx_server_generations_total": "generations", "mlx_server_completion_tokens_total": "tokens",
              "mlx_server_batch_size_sum": "batch_sum", "mlx_server_batch_size_count": "batch_count"}
    totals = dict.fromkeys(wanted.values(), 0.0)
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            totals[wanted[name]] += float(line.rsplit(" ", 1)[1])
    return totals


def split(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per server: requests and tokens it served between two scrapes, its mean rows per step."""
    result: dict[str, Any] = {}
    for name in after:
        d = {k: after[name][k] - before[name][k] for k in after[name]}
        result[name] = {"requests": int(d["generations"]), "tokens": int(d["tokens"]),
                        "mean_batch": d["batch_sum"] / d["batch_count"] if d["batch_count"] else None}
    return result


class GpuSampler:
    """nvidia-smi every second: (mode, GPU index, utilization %, memory MiB); nothing without it."""

    def __init__(self) -> None:
        self.mode = "idle"
        self.samples: list[tuple[str, int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.available = shutil.which("nvidia-smi") is not None

    def start(self) -> None:
        if self.available:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            mode = self.mode
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            for line in out.strip().splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 3 and all(p.replace(".", "").isdigit() for p in parts):
                    self.samples.append((mode, int(parts[0]), float(parts[1]), float(parts[2])))

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per mode and GPU: mean utilization %, max memory MiB, samples."""
        by: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for mode, gpu, util, mem in self.samples:
            by.setdefault(mode, {}).setdefault(f"gpu{gpu}", []).append((util, mem))
        return {mode: {gpu: {"util_mean": round(statistics.fmean(u for u, _ in s), 1),
                             "mem_max_mib": max(m for _, m in s), "samples": len(s)}
                       for gpu, s in gpus.items()} for mode, gpus in by.items()}


def gpu_processes(pids: dict[int, str]) -> list[str]:
    """nvidia-smi's compute processes, each with its GPU index and, where known, which server."""
    if shutil.which("nvidia-smi") is None:
        return ["nvidia-smi not found"]
    try:
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout
        apps = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return [f"nvidia-smi failed: {error}"]
    index = {u.strip(): i.strip() for i, u in (line.split(",", 1) for line in gpus.strip().splitlines())}
    lines = []
    for line in apps.strip().splitlines():
        pid, uuid, mem = (p.strip() for p in line.split(","))
        who = pids.get(int(pid)) if pid.isdigit() else None
        lines.append(f"pid {pid} ({who or 'other'}) on GPU {index.get(uuid, uuid)}: {mem}")
    return lines or ["no compute processes listed"]


# ------------------------------------------------------------------------------------ rounds


def lopsided(splits: list[dict[str, Any]]) -> bool:
    """A round where one server got over 60 % of the requests (or every one of them)."""
    for s in splits:
        counts = [d["requests"] for d in s.values()]
        if sum(counts) and max(counts) > 0.6 * sum(counts):
            return True
    return False


def measure(mode: str, n: int, servers: dict[str, Server], routers: dict[str, Server],
            opts: argparse.Namespace) -> dict[str, Any]:
    """Warm-up round, then --runs measured rounds of ``mode`` with N clients per server."""
    a, b = servers["A"], servers["B"]

    def one_round(tokens: int) -> list[dict[str, Any]]:
        if mode == "one":
            return server_round(a, n, tokens)
        if mode == "direct":
            return spread_round([(a, i) for i in range(n)] + [(b, n + i) for i in range(n)], tokens)
        return server_round(routers[mode], 2 * n, tokens)

    runs, splits = [], []
    watched = {"A": a} if mode == "one" else servers  # B is paused (SIGSTOP) in "one": not scraped
    with only(a, [a, b]) if mode == "one" else contextlib.nullcontext():
        one_round(4)  # warm-up at this N, excluded
        for _ in range(opts.runs):
            before = {name: scrape(s.base) for name, s in watched.items()}
            figs = figures(one_round(opts.tokens))
            after = {name: scrape(s.base) for name, s in watched.items()}
            figs["split"] = split(before, after)
            splits.append(figs["split"])
            runs.append(figs)
    merged = median_of(runs)
    merged["splits"] = splits
    return merged


# ------------------------------------------------------------------------------------ report


def split_text(splits: list[dict[str, Any]]) -> str:
    """``A 8 / B 8`` requests per measured round (``; `` between rounds), mean rows per step."""
    cells = []
    for s in splits:
        parts = []
        for name, d in s.items():
            if d["requests"]:
                mean = f" ×{d['mean_batch']:.1f}" if d.get("mean_batch") else ""
                parts.append(f"{name} {d['requests']}{mean}")
        cells.append(" / ".join(parts) or "-")
    return "; ".join(cells)


def table(results: dict[str, dict[int, Any]], ns: list[int]) -> str:
    lines = ["| mode | servers | clients | aggregate decode tok/s (min–max) | × one server | "
             "TTFT p50 / p99 s | per-stream tok/s | overlap | requests per server (×mean rows/step) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in ns:
        base = results.get("one", {}).get(n, {}).get("aggregate_tps")
        for mode in MODES:
            figs = results.get(mode, {}).get(n)
            if figs is None:
                continue
            servers, clients = (1, n) if mode == "one" else (2, 2 * n)
            if figs.get("aggregate_tps") is None:
                why = figs.get("error") or "; ".join(figs.get("errors", [])) or "no tokens"
                why = why.strip().splitlines()[-1] if why.strip() else why
                lines.append(f"| {mode} | {servers} | {clients} | failed ({why[:80]}) | | | | | |")
                continue
            agg = figs["aggregate_tps"]
            lo, hi = figs.get("aggregate_tps_range", [agg, agg])
            lines.append(f"| {mode} | {servers} | {clients} | {agg:.1f} ({lo:.1f}–{hi:.1f}) | "
                         f"{_f(agg / base if base else None)} | {_f(figs.get('ttft_p50'), 3)} / "
                         f"{_f(figs.get('ttft_p99'), 3)} | {_f(figs.get('per_stream_tps'))} | "
                         f"{_f(figs.get('overlap'))} | {split_text(figs.get('splits', []))} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def run(opts: argparse.Namespace, save: Any) -> dict[str, Any]:
    model = opts.model if not Path(opts.model).exists() else str(Path(opts.model).resolve())
    extra = ["--max-batch", str(opts.max_batch), *opts.ours_args.split()]
    gpus = [g.strip() for g in opts.gpus.split(",")] if opts.gpus else [None, None]
    payload: dict[str, Any] = {"results": {m: {} for m in opts.modes}, "notes": []}
    procs: list[Proc] = []
    sampler = GpuSampler()
    sampler.start()
    try:
        started = time.monotonic()
        ptx_b = {"MLX_PTX_CACHE_DIR": opts.ptx_cache_b} if opts.ptx_cache_b else {}
        pa, base_a, log_a = start_server("fleet-A", model, gpus[0], extra, {})
        pb, base_b, log_b = start_server("fleet-B", model, gpus[1], extra, ptx_b)
        servers = {"A": Server("A", pa, base_a, model), "B": Server("B", pb, base_b, model)}
        procs.extend(servers.values())
        ready = {}
        for name, (p, base, log) in {"A": (pa, base_a, log_a), "B": (pb, base_b, log_b)}.items():
            wait_loaded(p, base, log)
            ready[name] = round(time.monotonic() - started, 1)
        payload["ready_s"] = ready
        payload["gpu_processes"] = gpu_processes({pa.pid: "A", pb.pid: "B"})
        print(f"servers ready {ready} (started together); GPU processes: {payload['gpu_processes']}",
              file=sys.stderr, flush=True)
        routers: dict[str, Server] = {}
        metrics_urls: dict[str, str] = {}

        def router(mode: str) -> None:
            if mode.startswith("router") and mode not in routers:
                policy = "round_robin" if mode == "router-rr" else opts.policy
                routers[mode], metrics_urls[mode] = start_router(mode, [base_a, base_b], model, policy,
                                                                 opts.router_args.split())
                procs.append(routers[mode])

        for mode in opts.modes:
            try:
                router(mode)
            except (Exception, SystemExit) as error:  # measured without it; the mode's row says why
                payload["notes"].append(f"{mode}: {error}")
        save(payload)
        for n in opts.ns:
            todo = list(opts.modes)
            while todo:
                mode = todo.pop(0)
                sampler.mode = f"{mode}-N{n}"
                t0 = time.time()
                try:
                    router(mode)
                    payload["results"].setdefault(mode, {})[n] = measure(mode, n, servers, routers, opts)
                except (Exception, SystemExit) as error:  # one mode failing keeps the others' figures
                    payload["results"].setdefault(mode, {})[n] = {"error": f"{type(error).__name__}: {error}"}
                sampler.mode = "idle"
                if (mode == "router" and opts.fallback and "router-rr" not in opts.modes
                        and lopsided(payload["results"][mode][n].get("splits", []))):
                    todo.append("router-rr")
                figs = payload["results"][mode][n]
                print(f"[{mode} N={n}] {time.time() - t0:.0f} s: aggregate {_f(figs.get('aggregate_tps'))} "
                      f"tok/s, overlap {_f(figs.get('overlap'))}, failed {figs.get('failed')}, "
                      f"split {split_text(figs.get('splits', []))} {figs.get('error', '')}",
                      file=sys.stderr, flush=True)
                payload["gpu_util"] = sampler.summary()
                save(payload)
        for mode, url in metrics_urls.items():
            try:
                text = httpx.get(url, timeout=10).text
                payload.setdefault("router_metrics", []).extend(
                    f"{mode}: {line}" for line in text.splitlines()
                    if not line.startswith("#") and "worker" in line and "_bucket" not in line)
            except httpx.HTTPError as error:
                payload.setdefault("router_metrics", []).append(f"{mode}: scrape failed: {error}")
    finally:
        sampler.stop()
        for proc in reversed(procs):
            proc.stop()
    payload["gpu_util"] = sampler.summary()
    return payload


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm", help="a local directory, an alias or a cached HF id")
    parser.add_argument("--ns", default="8,16", help="clients per server")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens of every stream")
    parser.add_argument("--runs", type=int, default=3, help="measured rounds per mode and N (median)")
    parser.add_argument("--max-batch", type=int, default=8, help="each server's --max-batch")
    parser.add_argument("--modes", default="one,direct,router")
    parser.add_argument("--no-fallback", dest="fallback", action="store_false",
                        help="no round_robin router where cache_aware's split is lopsided")
    parser.add_argument("--gpus", default="0,1", help="CUDA_VISIBLE_DEVICES of server A and B ('': unset)")
    parser.add_argument("--ptx-cache-b", default="/tmp/mlx-ptx-b",
                        help="server B's MLX_PTX_CACHE_DIR ('': the default, shared with A)")
    parser.add_argument("--policy", default="cache_aware", help="the router's --policy")
    parser.add_argument("--router-args", default="", help="more router arguments, one string")
    parser.add_argument("--ours-args", default="", help="more server arguments, one string")
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)
    opts.ns = [int(n) for n in opts.ns.split(",") if n.strip()]
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    if unknown := set(opts.modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}")
    if "one" not in opts.modes:
        parser.error("the row's ratio needs the 'one' mode")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    started = time.time()
    load_start = os.getloadavg()[0]

    def save(payload: dict[str, Any]) -> None:
        if opts.json:
            opts.json.parent.mkdir(parents=True, exist_ok=True)
            opts.json.write_text(json.dumps({
                "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
                "elapsed_s": time.time() - started,
                "markdown": table(payload["results"], opts.ns), **payload}, indent=2, default=str))

    payload = run(opts, save)
    payload["load_avg"] = [load_start, os.getloadavg()[0]]
    save(payload)
    text = table(payload["results"], opts.ns)
    print(f"\nfleet: one server vs two (one per GPU: {opts.gpus or 'unset'}) behind sglang-router "
          f"(--policy {opts.policy}), --max-batch {opts.max_batch}, max_tokens {opts.tokens}, "
          f"{opts.runs} run(s) per figure; model {opts.model}; {time.time() - started:.0f} s; servers ready "
          f"{payload.get('ready_s')} s; 1-min load average {load_start:.1f} → {payload['load_avg'][1]:.1f}"
          f"\n{text}")
    for n in opts.ns:
        one = payload["results"].get("one", {}).get(n, {}).get("aggregate_tps")
        for mode in ("router", "router-rr", "direct"):
            fleet = payload["results"].get(mode, {}).get(n, {}).get("aggregate_tps")
            if one and fleet:
                print(f"ratio {mode} {2 * n} clients ÷ one server {n} clients: {fleet / one:.2f}")
    for note in payload.get("notes", []):
        print(f"note: {note}")
    print(f"GPU processes: {payload.get('gpu_processes')}")
    print(f"GPU utilization by mode: {json.dumps(payload.get('gpu_util'))}")
    for line in payload.get("router_metrics", [])[:40]:
        print(f"router metric: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

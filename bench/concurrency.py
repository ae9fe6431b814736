"""Concurrency row (issue 16, docs/batching.md §6): N streaming clients at once, per side.

  ours  ``python -m mlx_server --max-batch N`` (one server per N; "n/a" where the server rejects the
        flag, i.e. before continuous batching is merged), the ``openai`` SDK over SSE
  peer  ``python -m mlx_vlm.server`` (mlx-vlm 0.7.10, continuous batching through its
        ``BatchGenerator``), started by bench/harness.py as the other rows do, logging at INFO so its
        "Prefill started ... backend=..." lines say which path served the requests
  raw   the ceiling: bench/_raw_batch.py, no server: N prompts prefilled alone, their KV caches merged
        into mlx_vlm's BatchKVCache, greedy batched decode

For N in --ns (1,2,4,8) the N clients start together (a barrier), each with a fresh prompt (a unique
system message: no prefix-cache hit), ``max_tokens`` fixed (--tokens), temperature 0. One warm-up
round at the same N (4 tokens) precedes the measured runs of each side. Figures per side and N:

  aggregate decode tok/s  Σ(tokens after each stream's first) ÷ (last token of any stream − first
                          first-token of any stream)
  TTFT p50 / p99          request start (the barrier) → the stream's first non-empty content
  per-stream tok/s        median over streams of (tokens − 1) ÷ (its last − its first token)
  overlap                 Σ(each stream's first→last time) ÷ the aggregate's wall time: how many
                          streams decoded at once on average (≈ N when batched, ≈ 1 when serial)

While one side is measured the other processes are paused (SIGSTOP), as in ``python -m bench``.

--join-gap instead: one stream decoding (--running-tokens, 200) while a request with a long prompt
(--join-prompt tokens, ~2,000; 8 tokens of answer) joins after the running stream's --join-after-th
token; the running stream's inter-token gaps (p50, max) before the join, while the joiner prefills
(join sent → joiner's first token) and after. Raw prefills the joiner in --chunk-token chunks with one
decode step of the running row between chunks (the design's bound: t_decode(B) + t_prefill(chunk)).

Run (CPU, SmolLM2):  python -m bench.concurrency [--sides ours,peer,raw] [--ns 1,2,4,8] [--tokens 64]
                     python -m bench.concurrency --join-gap [--join-prompt 2000] [--running-tokens 200]
Run (GPU device):    python -m bench.concurrency --gpu --model DIR ...   (bench/GPU.md)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

from ._common import resolve_model_dir
from .harness import LOG_DIR, REPO, Proc, Raw, Server, float_copy_for_peer, only, start_ours, start_peer

SIDES = ("ours", "peer", "raw")
PROMPTS = ("Write a long story about a robot who learns to paint.",
           "Describe a day in the life of a lighthouse keeper.",
           "Explain how a bicycle works to a child.",
           "Write a poem about the sea at night.",
           "Tell a story about a dragon who is afraid of heights.",
           "Describe the city of the future in detail.",
           "Write a letter from a cat to its owner.",
           "Explain why the sky is blue, step by step.")
Messages = list[dict[str, Any]]
Stream = dict[str, Any]  # start_s, first_s, last_s (None: no token), generated, times


def prompt(i: int) -> Messages:
    """A fresh conversation: a unique system message (no prefix-cache hit), then one of PROMPTS."""
    return [{"role": "system", "content": f"Session {uuid.uuid4().hex[:12]}. You are a helpful assistant."},
            {"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


# ------------------------------------------------------------------------------------ processes


class RawBatch(Raw):
    """bench/_raw_batch.py in a subprocess (one JSON line each way, like bench/_raw.py's Raw)."""

    def __init__(self, model_dir: Path, gpu: bool) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "bench._raw_batch", str(model_dir), *(["--gpu"] if gpu else [])]
        env = None
        if not gpu:
            from ._fastpath import fast_env

            env = fast_env()
        process = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   stderr=(LOG_DIR / "raw_batch.log").open("w"), cwd=REPO)
        Proc.__init__(self, "raw", process)
        self.info = self._read()

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        self._send(command)
        return self._read()


def start_ours_batch(model: str, n: int, extra: list[str], flag: str) -> tuple[Server | None, str]:
    """Our server with ``flag N``, or None and why (a build without continuous batching rejects it)."""
    try:
        return start_ours(f"ours-b{n}", model, flag, str(n), *extra), ""
    except SystemExit as error:
        log = (LOG_DIR / f"ours-b{n}.log")
        tail = log.read_text()[-300:] if log.exists() else str(error)
        return None, f"n/a: the server did not start with {flag} {n} ({tail.strip().splitlines()[-1:]})"


# ------------------------------------------------------------------------------------ clients


def _stream(server: Server, messages: Messages, max_tokens: int, barrier: threading.Barrier | None,
            out: Stream) -> None:
    if barrier is not None:
        barrier.wait()
    out["start_s"] = time.perf_counter()
    times: list[float] = out.setdefault("times", [])
    usage = None
    try:
        for chunk in server.client.chat.completions.create(
                model=server.model, messages=cast(Any, messages), temperature=0, max_tokens=max_tokens,
                stream=True, stream_options={"include_usage": True}):
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.perf_counter())
            if chunk.usage:
                usage = chunk.usage
    except Exception as error:  # a failed stream is reported, the others go on
        out["error"] = f"{type(error).__name__}: {error}"
    out["generated"] = usage.completion_tokens if usage else len(times)
    out["first_s"] = times[0] if times else None
    out["last_s"] = times[-1] if times else None


def server_round(server: Server, n: int, max_tokens: int) -> list[Stream]:
    """N streams started together (a barrier); their timings, relative to the common start."""
    return spread_round([(server, i) for i in range(n)], max_tokens)


def spread_round(targets: list[tuple[Server, int]], max_tokens: int) -> list[Stream]:
    """Streams started together (a barrier), stream k with prompt i on ``targets[k] = (server, i)``;
    their timings, relative to the common start."""
    barrier = threading.Barrier(len(targets) + 1)
    streams: list[Stream] = [{} for _ in targets]
    threads = [threading.Thread(target=_stream, args=(server, prompt(i), max_tokens, barrier, streams[k]),
                                daemon=True) for k, (server, i) in enumerate(targets)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join(timeout=1800)
    for s in streams:
        for key in ("first_s", "last_s"):
            if s.get(key) is not None:
                s[key] -= start
        s["times"] = [t - start for t in s.get("times", [])]
    return streams


def raw_round(raw: RawBatch, n: int, max_tokens: int, chunk: int) -> tuple[list[Stream], dict[str, Any]]:
    answer = raw.ask({"op": "batch", "prompts": [prompt(i) for i in range(n)], "max_tokens": max_tokens,
                      "chunk": chunk})
    return answer["rows"], {"batched_decode_tps": answer.get("batched_decode_tps")}


# ------------------------------------------------------------------------------------ figures


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(streams: list[Stream]) -> dict[str, Any]:
    """The row's figures from one round's streams (times relative to the common start)."""
    ok = [s for s in streams if s.get("first_s") is not None]
    result: dict[str, Any] = {"streams": len(streams), "failed": len(streams) - len(ok),
                              "errors": sorted({s["error"] for s in streams if s.get("error")})}
    if not ok:
        return result
    first, last = min(s["first_s"] for s in ok), max(s["last_s"] for s in ok)
    decoded = sum(max(0, s["generated"] - 1) for s in ok)
    wall = last - first
    per_stream = [(s["generated"] - 1) / (s["last_s"] - s["first_s"]) for s in ok
                  if s["generated"] > 1 and s["last_s"] > s["first_s"]]
    ttft = [s["first_s"] for s in ok]
    result.update({
        "aggregate_tps": decoded / wall if wall > 0 else None, "decoded": decoded, "wall_s": wall,
        "ttft_p50": percentile(ttft, 0.5), "ttft_p99": percentile(ttft, 0.99),
        "per_stream_tps": statistics.median(per_stream) if per_stream else None,
        "overlap": sum(s["last_s"] - s["first_s"] for s in ok) / wall if wall > 0 else None,
        "generated": [s["generated"] for s in ok]})
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key, the median over runs of the numeric figures (the first run's other values)."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float)) and r.get(key) is not None]
        if isinstance(value, (int, float)) and values:
            merged[key] = statistics.median(values)
            merged[f"{key}_range"] = [min(values), max(values)]
    merged["runs"] = len(runs)
    return merged


# ------------------------------------------------------------------------------------ peer log


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def peer_log_note(path: Path, since: int) -> str:
    """What the peer's log says about the requests since byte ``since``: its prefill backends."""
    if not path.exists():
        return ""
    with path.open("rb") as handle:
        handle.seek(since)
        text = handle.read().decode(errors="replace")
    backends: dict[str, int] = {}
    in_flight: list[int] = []
    for line in text.splitlines():
        if "Prefill started" in line and "backend=" in line:
            name = line.split("backend=", 1)[1].split()[0]
            backends[name] = backends.get(name, 0) + 1
        if "Request completed" in line and "in_flight=" in line:
            with contextlib.suppress(ValueError):
                in_flight.append(int(line.split("in_flight=", 1)[1].split()[0]))
    note = "prefill backends " + (", ".join(f"{k}×{v}" for k, v in backends.items()) or "not logged")
    if in_flight:  # requests still running when one completed: the batch it left
        note += f"; in_flight at each completion {sorted(in_flight, reverse=True)}"
    return note


# ------------------------------------------------------------------------------------ the row


def measure_side(side: str, proc: Proc, procs: list[Proc], n: int,
                 opts: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with only(proc, procs):
        if side == "raw":
            raw_round(cast(RawBatch, proc), n, 4, opts.chunk)  # warm-up at this N, excluded
            for _ in range(opts.runs):
                streams, extra = raw_round(cast(RawBatch, proc), n, opts.tokens, opts.chunk)
                runs.append({**figures(streams), **extra})
        else:
            server_round(cast(Server, proc), n, 4)  # warm-up at this N, excluded
            for _ in range(opts.runs):
                runs.append(figures(server_round(cast(Server, proc), n, opts.tokens)))
    return median_of(runs)


def start_sides(opts: argparse.Namespace, model_dir: Path,
                log_name: str = "peer-concurrency") -> dict[str, Proc]:
    """The peer and the raw worker (ours starts per N), each started with the others paused."""
    procs: dict[str, Proc] = {}

    def add(name: str, start: Any) -> None:
        for proc in procs.values():
            proc.pause()
        try:
            procs[name] = start()
        except SystemExit as error:
            print(f"{name}: did not start: {error}", file=sys.stderr)
        for proc in procs.values():
            proc.resume()

    if "peer" in opts.sides:
        peer_dir = model_dir if opts.gpu else float_copy_for_peer(model_dir)
        add("peer", lambda: start_peer(peer_dir, log_level="INFO", log_name=log_name,
                                       fast_path=not opts.gpu))
    if "raw" in opts.sides:
        add("raw", lambda: RawBatch(model_dir, opts.gpu))
    return procs


def concurrency(opts: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    procs = start_sides(opts, model_dir)
    everyone = list(procs.values())
    results: dict[str, dict[int, Any]] = {side: {} for side in opts.sides}
    notes: list[str] = []
    peer_log = LOG_DIR / "peer-concurrency.log"
    try:
        if "raw" in procs:
            notes.append(f"raw worker: {json.dumps(cast(RawBatch, procs['raw']).info)}")
        for n in opts.ns:
            for side in opts.sides:
                started = time.time()
                if side == "ours":
                    results[side][n] = measure_ours(opts, n, everyone)
                elif side in procs:
                    since = log_size(peer_log)
                    results[side][n] = measure_side(side, procs[side], everyone, n, opts)
                    if side == "peer":
                        results[side][n]["log"] = peer_log_note(peer_log, since)
                else:
                    results[side][n] = {"na": "n/a: did not start"}
                print(f"[{side} N={n}] {time.time() - started:.0f} s: "
                      f"{json.dumps(short(results[side][n]))}", file=sys.stderr, flush=True)
        if "raw" in procs and opts.single_runs > 0:
            single = single_stream(cast(RawBatch, procs["raw"]), everyone, opts)
            notes.append(f"raw stream_generate, batch 1: {single}")
    finally:
        for proc in everyone:
            proc.stop()
    return {"results": results, "notes": notes}


def single_stream(raw: RawBatch, everyone: list[Proc], opts: argparse.Namespace) -> str:
    """``mlx_vlm.stream_generate`` alone (bench/_raw.py's figure) on the same worker: decode tok/s."""
    with only(raw, everyone):
        raw.ask({"op": "single", "messages": prompt(0), "max_tokens": 4})  # warm-up, excluded
        runs = [raw.ask({"op": "single", "messages": prompt(i), "max_tokens": opts.tokens})
                for i in range(opts.single_runs)]
    tps = [r["decode_tps"] for r in runs]
    return (f"decode {statistics.median(tps):.2f} tok/s ({min(tps):.2f}–{max(tps):.2f}, n={len(tps)}), "
            f"TTFT {statistics.median(r['ttft_s'] for r in runs):.3f} s, {runs[0]['generated']} tokens")


def measure_ours(opts: argparse.Namespace, n: int, everyone: list[Proc]) -> dict[str, Any]:
    for proc in everyone:
        proc.pause()
    try:
        server, why = start_ours_batch(opts.ours_model or opts.model, n, opts.ours_args.split(), opts.flag)
        if server is None:
            return {"na": why}
        try:
            return measure_side("ours", server, [server, *everyone], n, opts)
        finally:
            server.stop()
    finally:
        for proc in everyone:
            proc.resume()


def short(figs: dict[str, Any]) -> dict[str, Any]:
    keys = ("na", "aggregate_tps", "ttft_p50", "ttft_p99", "per_stream_tps", "overlap", "failed",
            "batched_decode_tps", "log", "errors")
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figs.items() if k in keys and v}


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, dict[int, Any]], ns: list[int]) -> str:
    """Markdown: one line per side and N; ratios vs the side's N=1 and vs the peer at the same N."""
    lines = ["| side | N | aggregate decode tok/s | × N=1 | ÷ peer | TTFT p50 s | TTFT p99 s | "
             "per-stream tok/s | overlap |", "|---|---|---|---|---|---|---|---|---|"]
    for side, by_n in results.items():
        base = by_n.get(ns[0], {}).get("aggregate_tps")
        for n in ns:
            figs = by_n.get(n, {})
            if "na" in figs or figs.get("aggregate_tps") is None:
                why = figs.get("na") or f"no tokens ({'; '.join(figs.get('errors', [])) or 'failed'})"
                lines.append(f"| {side} | {n} | pending ({why[:80]}) | | | | | | |")
                continue
            agg = figs["aggregate_tps"]
            peer = results.get("peer", {}).get(n, {}).get("aggregate_tps")
            lines.append(f"| {side} | {n} | {_f(agg)} | {_f(agg / base if base else None)} | "
                         f"{_f(agg / peer if peer and side != 'peer' else None)} | "
                         f"{_f(figs.get('ttft_p50'), 3)} | "
                         f"{_f(figs.get('ttft_p99'), 3)} | {_f(figs.get('per_stream_tps'))} | "
                         f"{_f(figs.get('overlap'))} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ join gap


def gap_phases(times: list[float], sent: float | None, first: float | None) -> dict[str, Any]:
    """The running stream's inter-token gaps before the join was sent, while the joiner prefilled
    (a gap that overlaps [sent, joiner's first token]) and after."""
    phases: dict[str, list[float]] = {"before": [], "while": [], "after": []}
    for a, b in itertools.pairwise(times):
        if sent is None or b <= sent:
            phases["before"].append(b - a)
        elif first is None or a < first:
            phases["while"].append(b - a)
        else:
            phases["after"].append(b - a)
    return {name: {"n": len(g), "p50_ms": 1000 * (percentile(g, 0.5) or 0), "max_ms": 1000 * max(g)}
            for name, g in phases.items() if g}


def join_server(server: Server, opts: argparse.Namespace, document: str) -> dict[str, Any]:
    running: Stream = {}
    joiner: Stream = {}
    start = time.perf_counter()
    thread = threading.Thread(target=_stream, args=(server, prompt(0), opts.running_tokens, None, running),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 900
    while (len(running.get("times", [])) < opts.join_after and thread.is_alive()
           and time.monotonic() < deadline):
        time.sleep(0.002)
    sent = time.perf_counter()
    joined = threading.Thread(target=_stream, args=(server, [{"role": "system", "content": f"Session "
                              f"{uuid.uuid4().hex[:12]}."}, {"role": "user", "content": document +
                              "\nSummarize the text above."}], 8, None, joiner), daemon=True)
    joined.start()
    thread.join(timeout=1800)
    joined.join(timeout=1800)
    times = [t - start for t in running.get("times", [])]
    first = joiner["first_s"] - start if joiner.get("first_s") else None
    return {"gaps": gap_phases(times, sent - start, first), "join_sent_s": sent - start,
            "join_first_s": first,
            "running_tokens": len(times), "joiner_ttft_s": first - (sent - start) if first else None,
            "errors": [s["error"] for s in (running, joiner) if s.get("error")]}


def join_raw(raw: RawBatch, opts: argparse.Namespace, document: str) -> dict[str, Any]:
    answer = raw.ask({"op": "join", "running": prompt(0), "joiner": [{"role": "user", "content": document +
                      "\nSummarize the text above."}], "max_tokens": opts.running_tokens,
                      "join_after": opts.join_after, "joiner_tokens": 8, "chunk": opts.chunk})
    sent, first = answer.get("join_sent_s"), answer.get("join_first_s")
    return {"gaps": gap_phases(answer["times"], sent, first), "join_sent_s": sent, "join_first_s": first,
            "running_tokens": len(answer["times"]),
            "joiner_prompt_tokens": answer.get("joiner_prompt_tokens"),
            "joiner_ttft_s": first - sent if first is not None and sent is not None else None,
            "chunk": opts.chunk}


def join_gap(opts: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    from .client import long_document

    document = long_document(model_dir, opts.join_prompt)
    procs = start_sides(opts, model_dir, "peer-join")
    everyone = list(procs.values())
    results: dict[str, Any] = {}
    try:
        for side in opts.sides:
            if side == "ours":
                for proc in everyone:
                    proc.pause()
                server, why = start_ours_batch(opts.ours_model or opts.model, max(2, max(opts.ns)),
                                               opts.ours_args.split(), opts.flag)
                try:
                    if server is None:
                        results[side] = {"na": why}
                    else:
                        server_round(server, 1, 4)
                        results[side] = join_server(server, opts, document)
                finally:
                    if server is not None:
                        server.stop()
                    for proc in everyone:
                        proc.resume()
            elif side in procs:
                with only(procs[side], everyone):
                    if side == "raw":
                        raw_round(cast(RawBatch, procs[side]), 1, 4, opts.chunk)
                        results[side] = join_raw(cast(RawBatch, procs[side]), opts, document)
                    else:
                        server_round(cast(Server, procs[side]), 1, 4)
                        results[side] = join_server(cast(Server, procs[side]), opts, document)
            else:
                results[side] = {"na": "n/a: did not start"}
            print(f"[join {side}] {json.dumps(results[side])}", file=sys.stderr, flush=True)
    finally:
        for proc in everyone:
            proc.stop()
    return {"results": results}


def join_table(results: dict[str, Any]) -> str:
    lines = ["| side | gaps before: p50 / max ms | while the joiner prefills: p50 / max ms (n) | "
             "after: p50 / max ms | joiner TTFT s |", "|---|---|---|---|---|"]
    for side, r in results.items():
        if "na" in r:
            lines.append(f"| {side} | pending ({r['na'][:80]}) | | | |")
            continue
        cells = []
        for phase in ("before", "while", "after"):
            g = r["gaps"].get(phase)
            count = f" ({g['n']})" if g and phase == "while" else ""
            cells.append(f"{g['p50_ms']:.0f} / {g['max_ms']:.0f}{count}" if g else "-")
        lines.append(f"| {side} | {' | '.join(cells)} | {_f(r.get('joiner_ttft_s'))} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm", help="smollm, a local directory or a cached HF id")
    parser.add_argument("--ours-model", default=None, help="the --model given to ours (default: --model)")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--ns", default="1,2,4,8")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens of every stream")
    parser.add_argument("--runs", type=int, default=1, help="measured rounds per side and N (median)")
    parser.add_argument("--chunk", type=int, default=512, help="raw side: prefill chunk, tokens")
    parser.add_argument("--single-runs", type=int, default=3,
                        help="raw side: runs of stream_generate alone (batch 1), 0: none")
    parser.add_argument("--flag", default="--max-batch", help="ours: the batch-size flag")
    parser.add_argument("--ours-args", default="", help="ours: more server arguments, one string")
    parser.add_argument("--gpu", action="store_true",
                        help="device machine: the peer on the checkpoint itself (no float32 copy), raw "
                             "without the CPU fast path")
    parser.add_argument("--join-gap", action="store_true", help="the join-gap row instead")
    parser.add_argument("--join-prompt", type=int, default=2000, help="join gap: the joiner's prompt tokens")
    parser.add_argument("--running-tokens", type=int, default=200, help="join gap: the running stream's")
    parser.add_argument("--join-after", type=int, default=20, help="join gap: running tokens before the join")
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)
    opts.sides = [s.strip() for s in opts.sides.split(",") if s.strip()]
    opts.ns = [int(n) for n in opts.ns.split(",") if n.strip()]
    if unknown := set(opts.sides) - set(SIDES):
        parser.error(f"unknown sides {sorted(unknown)}")
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    model_dir = resolve_model_dir(opts.model)
    started = time.time()
    load_start = os.getloadavg()[0]
    if opts.join_gap:
        payload = join_gap(opts, model_dir)
        text = join_table(payload["results"])
        title = (f"join gap: {opts.running_tokens}-token stream, a ~{opts.join_prompt}-token prompt joins "
                 f"after token {opts.join_after}; raw prefill chunk {opts.chunk}")
    else:
        payload = concurrency(opts, model_dir)
        text = table(payload["results"], opts.ns)
        title = f"concurrency: N streams at once, max_tokens {opts.tokens}, {opts.runs} run(s) per figure"
        for side, by_n in payload["results"].items():
            for n, figs in by_n.items():
                if figs.get("log"):
                    payload["notes"].append(f"{side} N={n} log: {figs['log']}")
    elapsed = time.time() - started
    payload["load_avg"] = [load_start, os.getloadavg()[0]]
    print(f"\n{title}; model {opts.model}; {elapsed:.0f} s; 1-min load average {load_start:.1f} at the "
          f"start, {payload['load_avg'][1]:.1f} at the end\n{text}")
    for note in payload.get("notes", []):
        print(f"note: {note}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
                                         "args": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in vars(opts).items()},
                                         "elapsed_s": elapsed, "markdown": text, **payload}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One command for every benchmark row: ``python -m bench`` prints one table "ours / peer / raw".

  ours  this server, ``python -m mlx_server`` (Linux CPU fast path: OpenBLAS preloaded by re-exec,
        quantized layers dequantized to float32), the ``openai`` SDK as client over HTTP SSE
  peer  ``python -m mlx_vlm.server`` (shipped with mlx-vlm), same client workload, started with the
        same loader environment (``activation_env()``: OpenBLAS preloaded) and, since it cannot
        dequantize by itself, on a float32 copy of the same checkpoint (``bench._raw --float-copy``:
        the very weights our server computes with); its Automatic Prefix Cache on (APC_ENABLED=1,
        disk tier off)
  raw   ``mlx_vlm.stream_generate`` in-process, in a subprocess started like the server
        (``prepare_process()`` re-exec, then ``dequantize_for_cpu(model, "auto")``; bench/_raw.py)

Every figure is the median of --runs runs with min–max; one warm-up request per process is excluded.
While one side is measured, the other processes are stopped (SIGSTOP) so they do not share the cores;
runs alternate between sides so drift on a noisy machine hits all of them. Every loop is bounded in
count and in time (--row-budget seconds per row, at least one run). Loopback traffic only.

Run: python -m bench [--model smollm] [--runs 3] [--tokens 64] [--json PATH] [--quick] [--no-peer]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .report import table
from .results import QUICK_ROWS, ROWS, Bench, Options, fmt
from .suite import run

# the command line: (flags, argparse keywords), in the order --help and the --json "args" list them
ARGUMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--model", {"default": "smollm"}),
    ("--runs", {"type": int, "default": 3}),
    ("--tokens", {"type": int, "default": 64}),
    ("--long-tokens", {"type": int, "default": 1960, "help": "tokens of the long document"}),
    ("--swaps", {"type": int, "default": 20}),
    ("--row-budget", {"type": float, "default": 300, "help": "seconds per row before runs stop"}),
    ("--rows", {"default": ",".join(ROWS), "help": f"subset of {','.join(ROWS)}"}),
    ("--no-peer", {"action": "store_true"}),
    ("--json", {"type": Path, "default": None}),
    ("--quick", {"action": "store_true", "help": "CI smoke: decode row, 1 run, 4 tokens, no peer"}),
)


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, keywords in ARGUMENTS:
        parser.add_argument(flag, **keywords)
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.runs, args.tokens = ",".join(QUICK_ROWS), 1, 4
        args.no_peer, args.row_budget = True, 30
    args.rows = [row.strip() for row in args.rows.split(",") if row.strip()]
    return Options(**vars(args))


def swap_note(bench: Bench) -> None:
    swap = bench.get("swap_time", "ours")
    if not swap:
        return
    legs = ", ".join(f"{label} {fmt(swap.get(key), 1, 3)} s" for label, key in
                     (("A→B leg", "a_to_b"), ("A→B→A round trip", "round_trip")) if swap.get(key))
    bench.notes.append(f"swap: cold load of A (first 1-token request for A, B preloaded) "
                       f"{swap['cold_load_s']:.3f} s; {legs}")


def show(opts: Options, info: dict[str, Any], bench: Bench, text: str, elapsed: float) -> None:
    print(f"\nmlx-server bench: model {opts.model}, {opts.runs} runs per figure (median, min–max), "
          f"{opts.tokens} decode tokens; warm-up excluded")
    print(f"cpu: {info['cpu']} ({info['usable_cpus']} usable); {info['versions']}; {elapsed:.0f} s")
    print(text)
    for note in bench.notes:
        print(f"note: {note}")


def write_json(path: Path, started: float, elapsed: float, opts: Options, info: dict[str, Any],
               bench: Bench, rows: list[dict[str, Any]], text: str) -> None:
    payload = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)), "machine": info,
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
               "elapsed_s": elapsed, "table": rows, "results": bench.results, "notes": bench.notes,
               "markdown": text}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    started = time.time()
    bench, info = run(opts)
    swap_note(bench)
    text, rows = table(bench)
    elapsed = time.time() - started
    show(opts, info, bench, text, elapsed)
    if opts.json:
        write_json(opts.json, started, elapsed, opts, info, bench, rows, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

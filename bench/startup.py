"""Process start to first token, twice in a row on one machine: the first start with MLX's kernel
cache cold (a fresh machine), the second warm. `python -m bench.startup --model DIR [--runs 2]`.

For each start: seconds until /health names the model (it says `loading` while the model loads
and warms up), until it says it is no longer loading, and until the first streamed token of a
short chat request sent as soon as /health named the model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .harness import start_ours


def once(model: str, index: int, extra: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    server = start_ours(f"startup-{index}", model, *extra)
    named = time.monotonic() - started
    try:
        body = {"model": server.model, "stream": True, "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "Say hello."}]}
        first = None
        with httpx.stream("POST", f"{server.base}/v1/chat/completions", json=body,
                          timeout=900) as response:
            for line in response.iter_lines():
                if line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                    first = time.monotonic() - started
                    break
        ready = None
        while ready is None:
            state = httpx.get(f"{server.base}/health", timeout=5).json().get("state")
            if state != "loading":
                ready = time.monotonic() - started
        return {"health_names_model_s": round(named, 2), "first_token_s": round(first or -1, 2),
                "health_not_loading_by_s": round(ready, 2)}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--ours-args", default="", help="more server arguments, one string")
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args(argv)
    rows = []
    for index in range(opts.runs):
        row = {"start": "cold" if index == 0 else "warm", **once(opts.model, index,
                                                                  opts.ours_args.split())}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CI smoke test of the benchmark harness (bench/): one row, a few tokens, so it cannot rot.

The benchmark itself is not part of the test run; ``python -m bench --quick`` runs the decode row
once (server over SSE vs raw stream_generate, 4 tokens, no peer) and must print the table and write
valid JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_quick_prints_the_table_and_writes_json(tmp_path: Path, smollm_dir: Path) -> None:
    # smollm_dir: the built-in model is a required test dependency (fails loudly if missing)
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| row | ours | peer | raw |" in done.stdout
    assert "decode tok/s" in done.stdout
    payload = json.loads(out.read_text())
    (row,) = payload["table"]
    assert row["key"] == "decode"
    assert row["ours"]["median"] > 0 and row["raw"]["median"] > 0
    assert row["ours_ratio"] == pytest.approx(row["ours"]["median"] / row["raw"]["median"])
    assert payload["machine"]["versions"]["mlx"]


@pytest.mark.slow
def test_bench_concurrency_raw_side_batches(tmp_path: Path, smollm_dir: Path) -> None:
    # bench.concurrency's raw ceiling (bench/_raw_batch.py: prefill alone, merge into BatchKVCache,
    # decode together) on SmolLM2, 2 streams, 4 tokens: the table, the JSON, both rows' tokens
    out = tmp_path / "concurrency.json"
    done = subprocess.run([sys.executable, "-m", "bench.concurrency", "--sides", "raw", "--ns", "2",
                           "--tokens", "4", "--single-runs", "0", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| side | N | aggregate decode tok/s |" in done.stdout
    raw = json.loads(out.read_text())["results"]["raw"]
    assert raw["2"]["generated"] == [4, 4] and raw["2"]["failed"] == 0
    assert raw["2"]["aggregate_tps"] > 0 and raw["2"]["batched_decode_tps"] > 0


@pytest.mark.slow
def test_bench_fleet_smoke_behind_sglang_router(tmp_path: Path) -> None:
    # bench.fleet --smoke: fake-engine servers behind sglang-router (cache_aware, round_robin), the
    # overhead and capture sections (the test extra installs sglang-router)
    smg = Path(sys.executable).parent / "smg"
    assert smg.exists() or shutil.which("smg"), "sglang-router (smg) is not installed"
    out = tmp_path / "fleet.json"
    done = subprocess.run([sys.executable, "-m", "bench.fleet", "--smoke", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert "| policy | client sends | turn 1 | turn 2 |" in done.stdout
    assert "| router | total p50 ms |" in done.stdout
    payload = json.loads(out.read_text())
    runs = {run["policy"]: run for run in payload["hit"]}
    for policy in ("sglang:cache_aware", "sglang:round_robin"):
        records = runs[policy]["records"]
        assert len(records) == 6 and all(r["status"] == 200 for r in records)
        assert all(r["server"] in (0, 1) for r in records)  # every request found in a server's log
    assert runs["sglang:round_robin"]["sticky"] == "0/3"  # 3 conversations: round robin alternates
    row = payload["overhead"]["routers"]["sglang:cache_aware"]
    assert row["total"]["n"] == 5 and row["total"]["failed"] == 0
    chat = payload["capture"]["sglang:cache_aware"]["probes"]["chat"]
    assert chat["status"] == 200 and chat["worker_path"] == "/v1/chat/completions"

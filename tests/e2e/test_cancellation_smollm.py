"""Cancellation on real MLX: a client that leaves in the middle of its prefill or its decode frees
SmolLM2 at once; the next request starts within one prefill chunk or one decode step."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import server_log, start_server, stop_server

pytestmark = pytest.mark.slow
SMOLLM = "HuggingFaceTB/SmolLM2-135M-Instruct"
# ~4,000 prompt tokens: tens of seconds of prefill on a CPU, 63 chunks of 64 tokens
LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 400) + " Summarise this."
# SmolLM2's end tokens (<|endoftext|>, <|im_end|>) banned: the reply cannot finish before the client
# leaves (at temperature 1 a story once ended after 17 tokens, and there was nothing to cancel)
NO_END = {"0": -100, "2": -100}
SHORT = {"model": "smollm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cache = tmp_path_factory.mktemp("mlx-server-cache")
    process, base = start_server(["--model", "smollm", "--cache-dir", str(cache),
                                  "--prefill-chunk", "64"])
    try:
        yield base
    finally:
        stop_server(process)


def send_and_leave(base: str, body: dict[str, Any], after: float) -> None:
    """Send a chat request over a raw socket and hang up `after` seconds later, unread."""
    host, port = base.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + payload)
        time.sleep(after)


def next_answer_after_leaving(base: str) -> float:
    """Seconds from now until a short request has its whole answer."""
    left = time.monotonic()
    answer = httpx.post(f"{base}/v1/chat/completions", json=SHORT, timeout=120)
    assert answer.status_code == 200
    return time.monotonic() - left


def cancellations(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    return {s.labels["phase"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "mlx_server_cancellations_total" and s.labels["model"] == SMOLLM}


@pytest.mark.parametrize("stream", [True, False])
def test_leaving_mid_prefill_stops_between_chunks(server: str, stream: bool) -> None:
    before = cancellations(server).get("prefill", 0)
    send_and_leave(server, {"model": "smollm", "stream": stream, "max_tokens": 5,
                            "messages": [{"role": "user", "content": LONG}]}, after=1.0)
    waited = next_answer_after_leaving(server)
    print(f"\ncancel mid-prefill (stream={stream}) -> next answer: {waited:.2f} s")
    assert cancellations(server)["prefill"] == before + 1
    done, total = map(int, re.findall(r"cancelled during prefill after (\d+) of (\d+) prompt tokens",
                                      server_log(server).read_text())[-1])
    assert done < total and done % 64 == 0  # stopped part-way, on a chunk boundary
    print(f"prefilled {done} of {total} prompt tokens before stopping")


def seconds_to_first_token(base: str, body: dict[str, Any]) -> float:
    """How long `body`'s prefill takes on this machine now (streamed, one token)."""
    started = time.monotonic()
    with httpx.stream("POST", f"{base}/v1/chat/completions", timeout=120,
                      json={**body, "stream": True, "max_tokens": 1}) as response:
        next(response.iter_lines())
    return time.monotonic() - started


@pytest.mark.parametrize("stream", [True, False])
def test_leaving_mid_decode_stops_within_a_step(server: str, stream: bool) -> None:
    body = {"model": "smollm", "stream": stream, "max_tokens": 2000, "temperature": 0,
            "logit_bias": NO_END,
            "messages": [{"role": "user", "content": "Write a very long story about a fox."}]}
    # leave well after the prefill, however loaded the machine is (a fixed 2 s was once not
    # enough on a busy CI host: the cancel landed in the prefill); 2,000 tokens take minutes
    after = max(2.0, 4 * seconds_to_first_token(server, body))
    before = cancellations(server).get("decode", 0)
    send_and_leave(server, body, after=after)
    waited = next_answer_after_leaving(server)
    print(f"\ncancel mid-decode (stream={stream}) -> next answer: {waited:.2f} s")
    assert cancellations(server)["decode"] == before + 1

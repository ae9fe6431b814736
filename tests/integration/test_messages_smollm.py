"""Anthropic's /v1/messages on real MLX: the built-in SmolLM2, greedy, streamed and not agree."""

from __future__ import annotations

import json

import falcon.testing
import pytest

pytestmark = pytest.mark.slow
BODY = {"model": "smollm", "max_tokens": 12, "temperature": 0,
        "system": "You are a helpful assistant.",
        "messages": [{"role": "user", "content": "What is the capital of France?"}]}


@pytest.fixture(scope="module")
def client(smollm_client: falcon.testing.TestClient) -> falcon.testing.TestClient:
    return smollm_client


def test_smollm_answers_through_messages(client: falcon.testing.TestClient) -> None:
    done = client.simulate_post("/v1/messages", json=BODY)
    assert done.status_code == 200, done.text
    [block] = done.json["content"]
    assert "Paris" in block["text"]
    assert done.json["stop_reason"] in ("end_turn", "max_tokens")
    counted = client.simulate_post("/v1/messages/count_tokens", json={
        key: BODY[key] for key in ("model", "system", "messages")})
    assert counted.json["input_tokens"] == done.json["usage"]["input_tokens"] \
        + done.json["usage"]["cache_read_input_tokens"]

    streamed = client.simulate_post("/v1/messages", json={**BODY, "stream": True})
    deltas = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: ")]
    text = "".join(d["delta"]["text"] for d in deltas if d["type"] == "content_block_delta")
    assert text == block["text"]
    assert deltas[-2]["delta"]["stop_reason"] == done.json["stop_reason"]

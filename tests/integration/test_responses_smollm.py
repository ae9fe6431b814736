"""OpenAI's /v1/responses on real MLX: the built-in SmolLM2, greedy; streamed and not agree, and a
stored response is continued by previous_response_id."""

from __future__ import annotations

import json

import falcon.testing
import pytest

pytestmark = pytest.mark.slow
BODY = {"model": "smollm", "max_output_tokens": 12, "temperature": 0,
        "instructions": "You are a helpful assistant.", "input": "What is the capital of France?"}


@pytest.fixture(scope="module")
def client(smollm_client: falcon.testing.TestClient) -> falcon.testing.TestClient:
    return smollm_client


def test_smollm_answers_through_responses(client: falcon.testing.TestClient) -> None:
    done = client.simulate_post("/v1/responses", json=BODY)
    assert done.status_code == 200, done.text
    [message] = done.json["output"]
    text = message["content"][0]["text"]
    assert "Paris" in text
    assert done.json["status"] in ("completed", "incomplete")
    usage = done.json["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 12

    streamed = client.simulate_post("/v1/responses", json={**BODY, "stream": True})
    data = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    deltas = "".join(d["delta"] for d in data if d["type"] == "response.output_text.delta")
    assert deltas == text
    final = data[-1]["response"]
    assert final["status"] == done.json["status"]
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == usage["output_tokens"]


def test_smollm_continues_a_stored_response(client: falcon.testing.TestClient) -> None:
    first = client.simulate_post("/v1/responses", json={**BODY, "max_output_tokens": 6})
    second = client.simulate_post("/v1/responses", json={
        "model": "smollm", "max_output_tokens": 6, "temperature": 0,
        "input": "And of Italy?", "previous_response_id": first.json["id"]})
    assert second.status_code == 200, second.text
    # the whole first turn is in the prompt: more input than the new question alone
    assert second.json["usage"]["input_tokens"] > first.json["usage"]["input_tokens"]
    assert client.simulate_get(f"/v1/responses/{second.json['id']}").json == second.json

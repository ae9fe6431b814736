"""Hostile input on Anthropic's /v1/messages, generated as in test_hostile_input.py: never a 5xx,
every error in Anthropic's envelope, and the next ordinary request answered."""

from __future__ import annotations

import json
from typing import Any

import falcon.testing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.integration.test_hostile_input import any_json, bodies, headers
from tests.support.http import ConnectedTestClient

EXAMPLES = 300
FIELDS = ["model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
          "top_p", "top_k", "tools", "tool_choice", "metadata", "cache_control", "service_tier",
          "output_config", "thinking", "speed", "container", "mcp_servers"]
BLOCKS = ["text", "image", "tool_use", "tool_result", "document", "thinking"]


def ordinary(stream: bool = False) -> dict[str, Any]:
    return {"model": "qwen", "max_tokens": 3, "stream": stream,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "hello there"}]}


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """An ordinary request with one field (top level, in a message, in a block or its source)
    replaced by hostile JSON."""
    body = ordinary(draw(st.booleans()))
    value = draw(any_json)
    where = draw(st.sampled_from(["top", "message", "block", "source"]))
    if where == "top":
        body[draw(st.sampled_from(FIELDS))] = value
    elif where == "message":
        body["messages"][0][draw(st.sampled_from(["role", "content"]))] = value
    else:
        block: dict[str, Any] = {
            "type": draw(st.sampled_from(BLOCKS)), "text": "x", "id": "t1", "name": "f",
            "input": {}, "tool_use_id": "t1", "content": "r",
            "source": {"type": draw(st.sampled_from(["base64", "url"])),
                       "media_type": "image/png", "data": "AAAA", "url": "https://127.0.0.1/x.png"}}
        if where == "source":
            block["source"][draw(st.sampled_from(["type", "media_type", "data", "url"]))] = value
        else:
            block[draw(st.sampled_from(list(block)))] = value
        body["messages"][0]["content"] = [block]
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def client() -> falcon.testing.TestClient:
    # no image fetch may leave the process: every URL source is refused before a connection
    app = build(Settings(engine="fake", max_body_mb=1.0), engine=FakeEngine())
    return ConnectedTestClient(app)


def assert_anthropic_answer(result: falcon.testing.Result) -> None:
    assert result.status_code < 500, (result.status_code, result.text[:500])
    if result.status_code >= 400:
        answer = json.loads(result.text)
        assert set(answer) == {"type", "error"} and answer["type"] == "error", answer
        assert set(answer["error"]) == {"type", "message"} and answer["error"]["message"]
    elif result.headers.get("content-type", "").startswith("text/event-stream"):
        assert "event: error" not in result.text, result.text[:500]


def assert_still_serving(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/messages", json=ordinary(), host="localhost")
    assert result.status_code == 200, result.text[:500]


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=spliced() | bodies, path=st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"]),
       sent_headers=headers)
def test_hostile_messages_requests(client: falcon.testing.TestClient, body: bytes, path: str,
                                   sent_headers: dict[str, str]) -> None:
    result = client.simulate_post(path, body=body, host="localhost", headers=sent_headers)
    assert_anthropic_answer(result)
    assert_still_serving(client)

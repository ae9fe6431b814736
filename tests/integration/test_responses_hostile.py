"""Hostile input on OpenAI's /v1/responses, generated as in test_hostile_input.py: never a 5xx,
every error in OpenAI's envelope, and the next ordinary request answered. Plus the shapes a
generator rarely reaches: deep nesting, huge ids, wrong types, unknown item types."""

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
FIELDS = ["model", "input", "instructions", "previous_response_id", "tools", "tool_choice",
          "parallel_tool_calls", "max_output_tokens", "text", "temperature", "top_p", "stream",
          "store", "metadata", "include", "reasoning", "background", "truncation",
          "service_tier", "top_logprobs", "stream_options", "conversation", "prompt"]
ITEMS = ["message", "function_call", "function_call_output", "reasoning", "item_reference",
         "web_search_call", None]


def ordinary(stream: bool = False) -> dict[str, Any]:
    return {"model": "qwen", "max_output_tokens": 3, "stream": stream,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "input": [{"role": "user", "content": "hello there"}]}


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """An ordinary request with one field (top level, in an item, in a part or a tool) replaced
    by hostile JSON."""
    body = ordinary(draw(st.booleans()))
    value = draw(any_json)
    where = draw(st.sampled_from(["top", "item", "part", "tool"]))
    if where == "top":
        body[draw(st.sampled_from(FIELDS))] = value
    elif where == "tool":
        body["tools"][0][draw(st.sampled_from(["type", "name", "parameters", "strict",
                                               "description"]))] = value
    else:
        item: dict[str, Any] = {"type": draw(st.sampled_from(ITEMS)), "role": "user",
                                "content": [{"type": draw(st.sampled_from(
                                    ["input_text", "input_image", "output_text", "input_file"])),
                                    "text": "x", "image_url": "https://127.0.0.1/x.png"}],
                                "call_id": "c1", "name": "f", "arguments": "{}", "output": "r"}
        if where == "part":
            item["content"][0][draw(st.sampled_from(["type", "text", "image_url"]))] = value
        else:
            item[draw(st.sampled_from(list(item)))] = value
        body["input"] = [item]
    return json.dumps(body).encode()


@pytest.fixture(scope="module")
def client() -> falcon.testing.TestClient:
    # no image fetch may leave the process: every URL is refused before a connection
    app = build(Settings(engine="fake", max_body_mb=1.0), engine=FakeEngine())
    return ConnectedTestClient(app)


def assert_openai_answer(result: falcon.testing.Result) -> None:
    assert result.status_code < 500, (result.status_code, result.text[:500])
    if result.status_code >= 400:
        answer = json.loads(result.text)
        assert set(answer) == {"error"}, answer
        assert set(answer["error"]) == {"message", "type", "param", "code"}
    elif result.headers.get("content-type", "").startswith("text/event-stream"):
        assert "response.failed" not in result.text, result.text[:500]


def assert_still_serving(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/responses", json=ordinary(), host="localhost")
    assert result.status_code == 200, result.text[:500]


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=spliced() | bodies, sent_headers=headers)
def test_hostile_responses_requests(client: falcon.testing.TestClient, body: bytes,
                                    sent_headers: dict[str, str]) -> None:
    result = client.simulate_post("/v1/responses", body=body, host="localhost",
                                  headers=sent_headers)
    assert_openai_answer(result)
    assert_still_serving(client)


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"type": "reasoning", "summary": "x"}]}, None),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input"),  # nothing to answer
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, None),
    ({"input": [{"type": "message", "role": "tool", "content": "x"}]}, None),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, None),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, None),
    ({"input": [{"role": "user", "content": [{"type": "input_image",
                                              "image_url": "file:///etc/passwd"}]}]}, None),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 5}]}, None),
    ({"input": []}, "input"),
    ({"input": 7}, "input"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, None),
    ({"tools": {"type": "function", "name": "f"}}, "tools"),
    ({"metadata": {"k": 1}}, None),
    ({"text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, None),
    ({"max_output_tokens": 0}, None),
    ({"temperature": "hot"}, None),
    ({"previous_response_id": 12}, None),
    ({"input": [nested(80)]}, None),
    ({"tools": [{"type": "function", "name": "f", "parameters": nested(70)}]}, None)])
def test_bad_bodies_are_400_not_500(client: falcon.testing.TestClient, body: dict[str, Any],
                                    param: str | None) -> None:
    result = client.simulate_post("/v1/responses", json={"model": "qwen", "input": "hi", **body})
    assert result.status_code == 400, result.text[:500]
    assert_openai_answer(result)
    if param is not None:
        assert result.json["error"]["param"] == param


@pytest.mark.parametrize("size", [1_000, 200_000])
def test_huge_ids_are_404s_that_do_not_echo_them(client: falcon.testing.TestClient,
                                                 size: int) -> None:
    huge = "resp_" + "9" * size
    for result in (client.simulate_get(f"/v1/responses/{huge}"),
                   client.simulate_delete(f"/v1/responses/{huge}"),
                   client.simulate_post("/v1/responses", json={
                       "model": "qwen", "input": "hi", "previous_response_id": huge})):
        assert result.status_code == 404, result.text[:300]
        assert len(result.text) < 1000


def test_odd_response_ids(client: falcon.testing.TestClient) -> None:
    for rid in ("%00", "..", "resp_%2F..%2Fx", "😀", "a" * 64):
        result = client.simulate_get(f"/v1/responses/{rid}")
        assert result.status_code in (404,), (rid, result.status_code, result.text[:200])
        assert_openai_answer(result)

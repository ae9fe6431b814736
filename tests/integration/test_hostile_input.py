"""Hostile input, generated: whatever a client sends, the answer is never a 5xx, every error is
OpenAI's envelope, and the next ordinary request is answered.

The in-process app on the fake engine (the perimeter, parsing, validation, the domain and the SSE
renderer are all real; only inference is fake). Bodies are any JSON, JSON spliced into an ordinary
request at any field, raw bytes, and headers drawn from a small alphabet of nasty values.
"""

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
from tests.support.http import ConnectedTestClient

EXAMPLES = 400
PATHS = ["/v1/chat/completions", "//v1/chat/completions", "/v1/models", "/v1/models/gemma",
         "/v1/models/%00", "/health", "/metrics", "/v1/nope", "/v1/completions"]
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
NASTY_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "application/json; charset=latin-1", "", "application/jsonx", "*/*"]
NASTY_HEADERS = {
    "authorization": ["Bearer", "Bearer ", "Basic abc", "bearer x" * 200, "\u00e9", "Bearer \x7f"],
    "x-request-id": ["", "\u00ff" * 300, "../../etc/passwd", "a\tb"],
    "content-length": ["0", "-1", "99999999999999999999", "abc", "5"],
    "transfer-encoding": ["chunked", "gzip", "identity"],
    "origin": ["http://evil.example", "null"],
}
HOSTS = ["localhost", "127.0.0.1:1234", "[::1]:80", "evil.example", "localhost:99999999", "a" * 5000,
         "localhost.", "127.0.0.1@evil.example", "LOCALHOST", "127.0.0.1 ", "[::1"]
NASTY_STRINGS = ["", "\ud800", "\x00", "gemma\x00", "~nosuchuser", "../../../etc/passwd", "a" * 10000,
                 "/etc/passwd", "\u202e", "NaN", "Infinity", "-1", "1e999"]
NASTY_NUMBERS = [0, -1, 2**31, 2**63, 2**64 + 1, -(2**63) - 1, 1e308, -1e308, 0.5, 999999999, 100257]

scalars = (st.none() | st.booleans() | st.sampled_from(NASTY_NUMBERS)
           | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(NASTY_STRINGS) | st.text(max_size=20))
any_json = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(st.text(max_size=12) | st.sampled_from(
                            ["role", "content", "type", "text", "image_url", "url", "name",
                             "tool_calls", "function", "parameters", "$ref", "schema"]),
                            children, max_size=4), max_leaves=20)
FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
          "temperature", "top_p", "top_k", "min_p", "seed", "n", "stop", "logit_bias", "logprobs",
          "top_logprobs", "response_format", "tools", "tool_choice", "parallel_tool_calls",
          "presence_penalty", "frequency_penalty", "repetition_penalty", "user", "metadata"]


def ordinary(stream: bool = False) -> dict[str, Any]:
    return {"model": "gemma", "max_tokens": 3, "stream": stream,
            "messages": [{"role": "user", "content": "hello there"}]}


@st.composite
def spliced(draw: st.DrawFn) -> bytes:
    """An ordinary request with one field (top level, in a message, or in a content part)
    replaced by hostile JSON."""
    body = ordinary(draw(st.booleans()))
    value = draw(any_json)
    where = draw(st.sampled_from(["top", "message", "part"]))
    if where == "top":
        body[draw(st.sampled_from(FIELDS))] = value
    elif where == "message":
        body["messages"][0][draw(st.sampled_from(["role", "content", "name", "tool_calls",
                                                   "tool_call_id"]))] = value
    else:
        part = {"type": draw(st.sampled_from(["text", "image_url", "input_audio"])), "text": "x",
                "image_url": {"url": value}}
        body["messages"][0]["content"] = [part]
    return json.dumps(body).encode()


bodies = (spliced()
          | any_json.map(lambda value: json.dumps(value).encode())
          | st.binary(max_size=200)
          | st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                             b'{"model": NaN}', b'{"model": "gemma", "messages": Infinity}',
                             b'{"model": "gemma", "messages": [{"role": "user", "content": "\\ud800"}]}',
                             b"\xff\xfe{}", b"", b"null"]))
headers = st.fixed_dictionaries({"content-type": st.sampled_from(JSON_TYPES)},
                                optional={name: st.sampled_from(values)
                                          for name, values in NASTY_HEADERS.items()})
nasty_type = st.fixed_dictionaries({"content-type": st.sampled_from(NASTY_TYPES)})


@pytest.fixture(scope="module")
def client() -> falcon.testing.TestClient:
    app = build(Settings(engine="fake", max_body_mb=1.0), engine=FakeEngine())
    return ConnectedTestClient(app)


def assert_not_a_server_fault(result: falcon.testing.Result) -> None:
    assert result.status_code < 500, (result.status_code, result.text[:500])
    if result.status_code >= 400:
        error = json.loads(result.text)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["type"] == "invalid_request_error" and error["message"]
    elif result.headers.get("content-type", "").startswith("text/event-stream"):
        assert "server_error" not in result.text, result.text[:500]


def assert_still_serving(client: falcon.testing.TestClient) -> None:
    result = client.simulate_post("/v1/chat/completions", json=ordinary(), host="localhost")
    assert result.status_code == 200, result.text[:500]


@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow,
                                                        HealthCheck.function_scoped_fixture])
@given(path=st.just(PATHS[0]) | st.sampled_from(PATHS),  # half of them reach the chat route
       method=st.just("POST") | st.sampled_from(["POST", "GET", "PUT", "OPTIONS"]),
       body=bodies, sent_headers=headers | nasty_type,
       host=st.just("localhost") | st.sampled_from(HOSTS))
def test_no_request_gets_a_server_fault(client: falcon.testing.TestClient, path: str, method: str,
                                        body: bytes, sent_headers: dict[str, str], host: str) -> None:
    result = client.simulate_request(method, path, body=body, headers=sent_headers, host=host)
    assert_not_a_server_fault(result)
    assert_still_serving(client)


@settings(max_examples=EXAMPLES // 2, suppress_health_check=[HealthCheck.too_slow,
                                                             HealthCheck.function_scoped_fixture])
@given(body=spliced())
def test_hostile_fields_in_a_chat_request(client: falcon.testing.TestClient, body: bytes) -> None:
    result = client.simulate_post("/v1/chat/completions", body=body, host="localhost",
                                  headers={"content-type": "application/json"})
    assert_not_a_server_fault(result)
    assert_still_serving(client)


COMPLETION_FIELDS = ["model", "prompt", "stream", "stream_options", "max_tokens", "temperature",
                     "top_p", "top_k", "min_p", "seed", "n", "best_of", "stop", "logit_bias",
                     "logprobs", "echo", "suffix", "presence_penalty", "frequency_penalty",
                     "repetition_penalty", "user"]


@st.composite
def spliced_completion(draw: st.DrawFn) -> bytes:
    """An ordinary legacy completion request with one or two fields replaced by hostile JSON."""
    body: dict[str, Any] = {"model": "gemma", "prompt": "hello there", "max_tokens": 3,
                            "stream": draw(st.booleans())}
    for field in draw(st.lists(st.sampled_from(COMPLETION_FIELDS), min_size=1, max_size=2)):
        body[field] = draw(any_json | st.sampled_from(NASTY_STRINGS))
    return json.dumps(body).encode()


@settings(max_examples=EXAMPLES // 4, suppress_health_check=[HealthCheck.too_slow,
                                                             HealthCheck.function_scoped_fixture])
@given(body=spliced_completion())
def test_hostile_fields_in_a_completion_request(client: falcon.testing.TestClient,
                                                body: bytes) -> None:
    result = client.simulate_post("/v1/completions", body=body, host="localhost",
                                  headers={"content-type": "application/json"})
    assert_not_a_server_fault(result)
    assert_still_serving(client)

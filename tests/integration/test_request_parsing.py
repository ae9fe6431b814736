"""Reading request bodies: strict JSON, bounded shape, bounded time, off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.adapters.http.json_body import MAX_DEPTH, read_json
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.integration.test_http_api import assert_error
from tests.support.http import ConnectedTestClient

USER = [{"role": "user", "content": "hi there"}]
JSON = {"content-type": "application/json"}


@pytest.fixture
def client(engine: FakeEngine) -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(engine="fake", max_body_mb=8), engine=engine))


def post(client: falcon.testing.TestClient, raw: bytes | str) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", body=raw, headers=JSON)


def body(**fields: Any) -> str:
    return json.dumps({"model": "gemma", "messages": USER, "max_tokens": 2, **fields})


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "presence_penalty",
                                   "frequency_penalty", "repetition_penalty"])
def test_non_finite_numbers_are_invalid_json(client: falcon.testing.TestClient, field: str,
                                             constant: str) -> None:
    raw = body()[:-1] + f', "{field}": {constant}}}'
    assert_error(post(client, raw), 400, "invalid_json")


def test_non_finite_logit_bias_values_are_refused(client: falcon.testing.TestClient) -> None:
    assert_error(post(client, body()[:-1] + ', "logit_bias": {"5": NaN}}'), 400, "invalid_json")


@pytest.mark.parametrize("number", ["1e999", "-1e999"])
def test_numbers_that_overflow_a_float_are_refused_naming_the_field(
        client: falcon.testing.TestClient, number: str) -> None:
    raw = body()[:-1] + f', "temperature": {number}}}'
    assert_error(post(client, raw), 400, "invalid_value", "temperature")
    raw = body()[:-1] + f', "logit_bias": {{"5": {number}}}}}'
    assert_error(post(client, raw), 400, "invalid_value", "logit_bias.5")


@pytest.mark.parametrize("raw", [
    b"[" * 1000 + b"]" * 1000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"[" * 100_000,  # unterminated, deeper than the decoder's recursion limit
])
def test_deeply_nested_bodies_are_400(client: falcon.testing.TestClient, raw: bytes) -> None:
    result = post(client, raw)
    assert result.status_code == 400, result.text
    assert result.json["error"]["code"] in ("invalid_value", "invalid_json")


def test_nesting_is_bounded_inside_a_tool_schema_default(client: falcon.testing.TestClient) -> None:
    nested: Any = 1
    for _ in range(600):
        nested = [nested]
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "array", "default": nested}}}}}
    result = post(client, body(tools=[tool]))
    assert_error(result, 400, "invalid_value", result.json["error"]["param"])
    assert result.json["error"]["param"].startswith("tools[0].function.parameters.properties.x")
    assert str(MAX_DEPTH) in result.json["error"]["message"]


def test_nesting_up_to_the_bound_is_accepted(client: falcon.testing.TestClient) -> None:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(20):  # 20 nested objects: 44 levels of JSON with the request around them
        schema = {"type": "object", "properties": {"x": schema}}
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    result = post(client, body(tools=[tool], tool_choice="none"))
    assert result.status_code == 200, result.text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("text", ["\\ud800", "a\\udfffb", "\\udc00\\ud800"])
def test_lone_surrogates_are_400_before_generation(client: falcon.testing.TestClient,
                                                   engine: FakeEngine, stream: bool,
                                                   text: str) -> None:
    raw = body(stream=stream).replace('"hi there"', f'"{text}"')
    assert_error(post(client, raw), 400, "invalid_value", "messages[0].content")
    assert engine.loads == []  # refused before anything was loaded or generated


def test_lone_surrogate_in_a_key_is_400(client: falcon.testing.TestClient) -> None:
    raw = body(metadata={"k": "v"}).replace('"k"', '"\\ud800"')
    assert_error(post(client, raw), 400, "invalid_value", "metadata")


def test_paired_surrogates_are_text(client: falcon.testing.TestClient) -> None:
    raw = body().replace('"hi there"', '"\\ud83d\\ude00"')  # U+1F600, written as a pair
    assert post(client, raw).status_code == 200


@pytest.mark.parametrize("stream", [False, None])
def test_stream_options_without_streaming_are_refused(client: falcon.testing.TestClient,
                                                      stream: bool | None) -> None:
    fields: dict[str, Any] = {"stream_options": {"include_usage": True}}
    if stream is not None:
        fields["stream"] = stream
    assert_error(post(client, body(**fields)), 400, "invalid_value", "stream_options")
    assert post(client, body(stream_options=None)).status_code == 200
    assert post(client, body(stream=True, stream_options={"include_usage": True})).status_code == 200


def test_a_body_that_never_finishes_arriving_is_408() -> None:
    app = build(Settings(engine="fake", body_timeout=0.2), engine=FakeEngine())

    async def run() -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []
        chunks = iter([{"type": "http.request", "body": b'{"model": "gem', "more_body": True}])

        async def receive() -> dict[str, Any]:
            chunk = next(chunks, None)
            if chunk is None:
                await asyncio.sleep(3600)  # the client trickles nothing more
            return chunk or {}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
                 "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"localhost"), (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 1234)}
        await asyncio.wait_for(app(scope, receive, send), 10)
        start = next(m for m in sent if m["type"] == "http.response.start")
        return start["status"], b"".join(m.get("body", b"") for m in sent
                                         if m["type"] == "http.response.body")

    status, answer = asyncio.run(run())
    assert status == 408
    assert json.loads(answer)["error"]["code"] == "request_timeout"


def test_bodies_are_decoded_and_checked_off_the_event_loop() -> None:
    """Decoding, the shape walk and the codec (`then`) are proportional to the body's size: they
    run in a worker thread, so a 100,000-message body does not stall other connections."""
    raw = json.dumps({"messages": USER * 1000}).encode()
    req = falcon.testing.create_asgi_req(body=raw, headers=JSON)

    async def run() -> tuple[int, int, int]:
        loop_thread = threading.get_ident()
        worker, count = await read_json(req, 1 << 20, 5.0,
                                        lambda value: (threading.get_ident(), len(value["messages"])))
        return loop_thread, worker, count

    loop_thread, worker, count = asyncio.run(run())
    assert count == 1000 and worker != loop_thread


@pytest.mark.parametrize(("stop", "param"), [("x" * 1001, "stop"), (["\n", "y" * 5000], "stop[1]")])
def test_a_stop_sequence_too_long_to_match_cheaply_is_400(client: falcon.testing.TestClient,
                                                          stop: Any, param: str) -> None:
    """Held-back text is matched against each stop's prefixes every token: a megabyte-long stop
    would stall generation, so each is bounded (the contract says so too)."""
    assert_error(post(client, body(stop=stop)), 400, "invalid_value", param)
    assert post(client, body(stop=["x" * 1000])).status_code == 200


TINY_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4"
            "z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC")


@pytest.mark.parametrize(("count", "status"), [(16, 200), (17, 400)])
def test_images_per_request_are_bounded(client: falcon.testing.TestClient, count: int,
                                        status: int) -> None:
    """Every image is fetched and decoded whole (up to 40 megapixels) before the request queues,
    so their number is bounded (--max-images, 16 by default)."""
    parts = [{"type": "image_url", "image_url": {"url": TINY_PNG}}] * count
    result = post(client, body(messages=[{"role": "user", "content": parts}]))
    if status == 200:
        assert result.status_code == 200, result.text
    else:
        assert_error(result, 400, "invalid_value", "messages[0].content[16].image_url.url")
        assert "at most 16" in result.json["error"]["message"]


@pytest.mark.parametrize("model", ["gemma", "qwen"])
@pytest.mark.parametrize("depth", [65, 500, 900, 5000])
def test_tool_call_arguments_nested_deep_inside_a_string_are_not_a_server_fault(
        client: falcon.testing.TestClient, model: str, depth: int) -> None:
    """Arguments are JSON inside a string, out of sight of the body's depth bound; parsed for the
    prompt, the same bound applies (Gemma's renderer recursed into 500-deep lists: a 500)."""
    arguments = '{"a": ' + "[" * depth + "]" * depth + "}"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = [*USER, {"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "1", "content": "ok"}]
    result = post(client, body(model=model, messages=messages, tools=tools))
    assert result.status_code == 200, result.text


@pytest.mark.parametrize("role", ["user", "system", "developer", "tool"])
def test_tool_calls_on_a_message_that_is_not_the_assistants_is_400(
        client: falcon.testing.TestClient, role: str) -> None:
    """Declared in openapi.yaml (the contract's generator once sent one: it was schema-valid and
    rejected by the converter). Only an assistant message carries calls; never silently dropped."""
    message: dict[str, Any] = {"role": role, "content": "hi", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    if role == "tool":
        message["tool_call_id"] = "c0"
    result = client.simulate_post("/v1/chat/completions",
                                  json={"model": "gemma", "messages": [message]})
    assert result.status_code == 400
    error = result.json["error"]
    assert (error["param"], error["code"]) == ("messages[0].tool_calls", "unsupported_parameter")

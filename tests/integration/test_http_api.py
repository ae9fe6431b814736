"""The HTTP adapter end to end in process, on the fake engine."""

from __future__ import annotations

import json
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from tests.support.http import ConnectedTestClient

GEMMA = "mlx-community/gemma-3-4b-it-4bit"
USER = [{"role": "user", "content": "hi there"}]


def chat(client: falcon.testing.TestClient, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={"model": "gemma", "messages": USER,
                                                             **body})


def events(result: falcon.testing.Result) -> list[Any]:
    assert result.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in result.text.split("\n\n") if b]
    assert all(b.startswith("data: ") for b in blocks)
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks]


def assert_error(result: falcon.testing.Result, status: int, code: str | None,
                 param: str | None = None) -> None:
    assert result.status_code == status, result.text
    error = result.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]


def test_health_reports_the_loaded_model(client: falcon.testing.TestClient) -> None:
    assert client.simulate_get("/health").json == {"status": "ok", "state": "idle", "model": None,
                                                    "queued": 0, "running": 0, "max_batch": 8,
                                                    "backend": {"engine": "FakeEngine"}}
    chat(client)
    assert client.simulate_get("/health").json["model"] == GEMMA


def test_models_list_and_retrieve_with_plain_and_encoded_slash(
        client: falcon.testing.TestClient) -> None:
    listed = client.simulate_get("/v1/models").json
    assert listed["object"] == "list"
    assert {m["id"] for m in listed["data"]} >= {GEMMA, "mlx-community/Qwen3-VL-4B-Instruct-4bit"}
    for path in (f"/v1/models/{GEMMA}", "/v1/models/mlx-community%2Fgemma-3-4b-it-4bit",
                 "/v1/models/gemma"):
        model = client.simulate_get(path).json
        assert (model["id"], model["object"], model["aliases"]) == (GEMMA, "model", ["gemma"])


def test_unknown_model_is_404_model_not_found(client: falcon.testing.TestClient) -> None:
    assert_error(client.simulate_get("/v1/models/nope/nope"), 404, "model_not_found", "model")
    assert_error(chat(client, model="nope"), 404, "model_not_found", "model")


def test_non_streaming_completion_shape(client: falcon.testing.TestClient) -> None:
    body = chat(client).json
    assert body["object"] == "chat.completion" and body["model"] == GEMMA
    assert body["choices"] == [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                "message": {"role": "assistant", "content": "You said: hi there",
                                            "refusal": None}}]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_stream_follows_openai_chunk_rules(client: falcon.testing.TestClient) -> None:
    chunks = events(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1] == "[DONE]"
    data = chunks[:-1]
    assert len({c["id"] for c in data}) == 1 and {c["object"] for c in data} == {
        "chat.completion.chunk"}
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("role" not in c["choices"][0]["delta"] for c in data[1:-1])
    finishing = [c for c in data if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finishing) == 1 and finishing[0] is data[-2]
    assert data[-1]["choices"] == [] and data[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in data[:-1])
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in data[:-1])
    assert text == chat(client).json["choices"][0]["message"]["content"]


def test_stream_without_usage_has_no_usage_chunk(client: falcon.testing.TestClient) -> None:
    chunks = events(chat(client, stream=True))
    assert all(c == "[DONE]" or ("usage" not in c and c["choices"]) for c in chunks)


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"model": "gemma"}, "messages", "missing_required_parameter"),
    ({"messages": USER}, "model", "missing_required_parameter"),
    ({"model": "gemma", "messages": []}, "messages", "invalid_value"),
    ({"model": "gemma", "messages": [{"role": "user"}]}, "messages[0].content",
     "missing_required_parameter"),
    ({"model": "gemma", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0]",
     "invalid_value"),
    ({"model": "gemma", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text", "missing_required_parameter"),
    ({"model": "gemma", "messages": USER, "temperature": "hot"}, "temperature", "invalid_type"),
    ({"model": "gemma", "messages": USER, "temperature": 3}, "temperature", "invalid_value"),
    ({"model": "gemma", "messages": USER, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"model": 5, "messages": USER}, "model", "invalid_type"),
    ({"model": "gemma", "messages": USER, "audio": {"voice": "alloy"}}, "audio",
     "unsupported_parameter"),
    ({"model": "gemma", "messages": USER, "service_tier": "flex"}, "service_tier",
     "unsupported_parameter"),
    ({"model": "gemma", "messages": USER, "logit_bias": {"abc": 1}}, "logit_bias", "invalid_value"),
    ({"model": "gemma", "messages": USER, "top_logprobs": 2}, "logprobs",
     "missing_required_parameter"),
    ({"model": "gemma", "messages": USER, "presence_penalty": 3}, "presence_penalty",
     "invalid_value"),
    ({"model": "gemma", "messages": USER, "tool_choice": "required"}, "tool_choice",
     "invalid_value"),
])
def test_bad_requests_are_400_naming_the_param(client: falcon.testing.TestClient,
                                               body: dict[str, Any], param: str, code: str) -> None:
    assert_error(client.simulate_post("/v1/chat/completions", json=body), 400, code, param)


def test_unknown_fields_and_no_op_values_are_tolerated(client: falcon.testing.TestClient) -> None:
    result = chat(client, some_future_field={"x": 1}, logprobs=False, presence_penalty=0,
                  user="u1", metadata={"k": "v"}, store=False, service_tier="auto")
    assert result.status_code == 200


def test_invalid_json_and_non_object_bodies(client: falcon.testing.TestClient) -> None:
    assert_error(client.simulate_post("/v1/chat/completions", body="{nope", content_type="application/json"),
                 400, "invalid_json")
    assert_error(client.simulate_post("/v1/chat/completions", json=[1]), 400, "invalid_type")


def test_oversized_body_is_413(client: falcon.testing.TestClient) -> None:
    result = chat(client, padding="x" * 5000)
    assert_error(result, 413, "request_too_large")


def test_unknown_route_and_wrong_method(client: falcon.testing.TestClient) -> None:
    assert_error(client.simulate_get("/v2/whatever"), 404, "unknown_url")
    result = client.simulate_delete("/v1/chat/completions")
    assert_error(result, 405, "method_not_allowed")
    assert "POST" in result.headers["allow"]


def test_serves_its_own_spec(client: falcon.testing.TestClient) -> None:
    result = client.simulate_get("/openapi.yaml")
    assert result.headers["content-type"] == "application/yaml"
    assert "/v1/chat/completions" in result.text


def test_fake_replies_are_emitted_raw_and_cycle() -> None:
    from mlx_server.app.bootstrap import build
    from mlx_server.app.config import Settings

    app = build(Settings(engine="fake"), engine=FakeEngine(["first", "second"]))
    client = ConnectedTestClient(app)
    texts = [chat(client).json["choices"][0]["message"]["content"] for _ in range(3)]
    assert texts == ["first", "second", "first"]


def test_engine_crash_midstream_is_reported_in_band(client: falcon.testing.TestClient) -> None:
    """The fake engine's fault markers: a row failing after its first token, and before it."""
    def says(text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": text}]

    chunks = events(chat(client, messages=says("x [[fail-row@2]]"), stream=True))
    assert chunks[-1]["error"]["type"] == "server_error"
    assert_error(chat(client, messages=says("x [[fail-row@2]]")), 500, "engine_failure")
    # before any byte: a status line of its own
    assert_error(chat(client, messages=says("x [[fail-prefill]]"), stream=True), 500,
                 "engine_failure")
    assert chat(client).status_code == 200

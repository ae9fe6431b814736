"""Tool calls through HTTP on the fake engine told to emit raw Gemma / Qwen output."""

from __future__ import annotations

import json
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.fakes import CountingIds
from tests.support.http import ConnectedTestClient

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "Weather in Paris and Rome?"}]
CALL = {"gemma": '```tool_code\nget_weather(city="Paris", days=3)\n```',
        "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
                '</tool_call>'}
TWO = {"gemma": '```tool_code\nget_weather(city="Paris")\nget_weather(city="Rome")\n```',
       "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'}
MALFORMED = {"gemma": '```tool_code\nget_weather(city="Paris"\n```',
             "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'}
UNKNOWN = {"gemma": '```tool_code\nbook_flight(to="Rome")\n```',
           "qwen": '<tool_call>\n{"name": "book_flight", "arguments": {"to": "Rome"}}\n</tool_call>'}


def client_for(*replies: str) -> falcon.testing.TestClient:
    app = build(Settings(engine="fake"), engine=FakeEngine(list(replies)), ids=CountingIds())
    return ConnectedTestClient(app)


def post(client: falcon.testing.TestClient, model: str, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={
        "model": model, "messages": ASK, "tools": [WEATHER], **body})


def streamed(result: falcon.testing.Result) -> tuple[str | None, list[dict[str, Any]], str, list[Any]]:
    chunks = [json.loads(b[6:]) for b in result.text.split("\n\n") if b.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    calls: dict[int, dict[str, Any]] = {}
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls") or []]
    for delta in deltas:
        call = calls.setdefault(delta["index"], {"id": None, "type": "function",
                                                 "function": {"name": None, "arguments": ""}})
        call["id"] = delta.get("id", call["id"])
        call["function"]["name"] = delta.get("function", {}).get("name", call["function"]["name"])
        call["function"]["arguments"] += delta.get("function", {}).get("arguments", "")
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    return text or None, [calls[i] for i in sorted(calls)], reasons[0], deltas


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_single_call_stream_and_not_agree(family: str) -> None:
    client = client_for(CALL[family], CALL[family])
    body = post(client, family).json
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "tool_calls" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "get_weather", {"city": "Paris", "days": 3})
    content, calls, reason, deltas = streamed(post(client, family, stream=True))
    assert (content, reason) == (None, "tool_calls")
    assert [c["function"] for c in calls] == [call["function"]]
    first = deltas[0]
    assert set(first) == {"index", "id", "type", "function"} and first["function"]["name"]
    assert all(set(d) == {"index", "function"} for d in deltas[1:])


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_two_calls_and_text_before_a_call(family: str) -> None:
    client = client_for(TWO[family], "Let me check.\n" + CALL[family])
    two = post(client, family).json["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in two] == ["Paris", "Rome"]
    assert len({c["id"] for c in two}) == 2
    message = post(client, family).json["choices"][0]["message"]
    assert message["content"] == "Let me check." and len(message["tool_calls"]) == 1


@pytest.mark.parametrize("family", ["gemma", "qwen"])
@pytest.mark.parametrize("bad", [MALFORMED, UNKNOWN], ids=["malformed", "unknown-tool"])
def test_a_bad_call_comes_back_as_raw_content(family: str, bad: dict[str, str]) -> None:
    client = client_for(bad[family], bad[family])
    choice = post(client, family).json["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == bad[family]
    assert "tool_calls" not in choice["message"]
    content, calls, reason, _ = streamed(post(client, family, stream=True))
    assert (content, calls, reason) == (bad[family], [], "stop")


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_tool_choice_none_parses_nothing(family: str) -> None:
    choice = post(client_for(CALL[family]), family, tool_choice="none").json["choices"][0]
    assert choice["message"]["content"] == CALL[family] and choice["finish_reason"] == "stop"


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_parallel_tool_calls_false_returns_one_call(family: str) -> None:
    client = client_for(TWO[family], TWO[family])
    message = post(client, family, parallel_tool_calls=False).json["choices"][0]["message"]
    assert len(message["tool_calls"]) == 1
    _, calls, reason, _ = streamed(post(client, family, parallel_tool_calls=False, stream=True))
    assert len(calls) == 1 and reason == "tool_calls"


@pytest.mark.parametrize(("family", "choice", "reply"), [
    ("gemma", "required", 'get_weather(city="Paris")\n```'),
    ("gemma", {"type": "function", "function": {"name": "get_weather"}},
     'get_weather(city="Paris")\n```'),
    ("qwen", "required", '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
    # a family with a call grammar forces only the opener for a named choice: the grammar writes
    # the name (domain/tool_plan.py)
    ("qwen", {"type": "function", "function": {"name": "get_weather"}},
     '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
])
def test_forced_tool_choice_starts_the_turn_with_the_call(family: str, choice: Any,
                                                          reply: str) -> None:
    # the fake engine emits only the continuation: the forced opener comes from the server
    message = post(client_for(reply), family, tool_choice=choice).json["choices"][0]["message"]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("family", ["gemma", "qwen"])
@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
def test_a_forced_choice_with_a_whole_call_reply_gives_exactly_one_call(family: str,
                                                                        choice: Any) -> None:
    # the fake's reply is a whole message, opener included: it continues after the forced start
    client = client_for(CALL[family])
    message = post(client, family, tool_choice=choice).json["choices"][0]["message"]
    assert message["content"] is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in message["tool_calls"]] == [("get_weather", {"city": "Paris", "days": 3})]
    text, calls, reason, _ = streamed(post(client, family, tool_choice=choice, stream=True))
    assert (text, len(calls), reason) == (None, 1, "tool_calls")


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_a_whole_tool_loop(family: str) -> None:
    client = client_for(CALL[family], "It is sunny in Paris.")
    call = post(client, family).json["choices"][0]["message"]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": call["tool_calls"]},
               {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"],
                "content": '{"temp": 21}'}]
    final = client.simulate_post("/v1/chat/completions", json={
        "model": family, "messages": history, "tools": [WEATHER]}).json["choices"][0]
    assert (final["message"]["content"], final["finish_reason"]) == ("It is sunny in Paris.", "stop")


def test_a_model_without_a_tool_format_refuses_tools() -> None:
    result = post(client_for("hi"), "smollm")
    assert result.status_code == 400 and result.json["error"]["param"] == "tools"
    assert post(client_for("hi"), "smollm", tool_choice="none").status_code == 200


@pytest.mark.parametrize("model", ["gemma", "qwen"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_a_model_writes_in_arguments_is_escaped_json(model: str,
                                                                      stream: bool) -> None:
    """`\\ud800` in a model's call parses to a string that UTF-8 cannot carry: the arguments
    string escapes it (it was a 500, or a server_error event mid-stream)."""
    raw = {"gemma": "```tool_code\nget_weather(city='\\ud800é')\n```",
           "qwen": '<tool_call>{"name": "get_weather", "arguments": {"city": "\\ud800é"}}</tool_call>'}
    result = post(client_for(raw[model]), model, stream=stream)
    assert result.status_code == 200, result.text
    assert "server_error" not in result.text
    if stream:
        _, calls, _, _ = streamed(result)
        arguments = calls[0]["function"]["arguments"]
    else:
        arguments = result.json["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"city": "\ud800é"}

"""Anthropic's Messages API (/v1/messages) in process on the fake engine: the answer's shape, the
streamed event sequence, tool use for both tool families, stops, errors, count_tokens, keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine, render
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import Role
from mlx_server.domain.ports import PreparedPrompt, PromptInput
from tests.support.fakes import CountingIds
from tests.support.http import ConnectedTestClient, named_events
from tests.support.images import data_uri, png_bytes

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"},
                                                             "days": {"type": "integer"}},
                            "required": ["city"]}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = {"gemma": '```tool_code\nget_weather(city="Paris", days=3)\n```',
        "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
                '</tool_call>'}
TWO = {"gemma": '```tool_code\nget_weather(city="Paris")\nget_weather(city="Rome")\n```',
       "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
               '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'}
USAGE = {"input_tokens": 6, "output_tokens": 5, "cache_read_input_tokens": 0,
         "cache_creation_input_tokens": 0}


class RecordingEngine(FakeEngine):
    """The fake engine, keeping every prompt it was asked to prepare."""

    def __init__(self, replies: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(replies)
        self.prompts: list[PromptInput] = []

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        self.prompts.append(prompt)
        return super().prepare(prompt)


def client_for(*replies: str, engine: FakeEngine | None = None,
               **settings: Any) -> falcon.testing.TestClient:
    app = build(Settings(engine="fake", **settings), engine=engine or FakeEngine(list(replies)),
                ids=CountingIds())
    return ConnectedTestClient(app)


def post(client: falcon.testing.TestClient, path: str = "/v1/messages",
         headers: dict[str, str] | None = None, **body: Any) -> falcon.testing.Result:
    return client.simulate_post(path, json={"model": "gemma", "max_tokens": 64, "messages": ASK,
                                            **body}, headers=headers)


def events(result: falcon.testing.Result) -> list[tuple[str, dict[str, Any]]]:
    return named_events(result.text)


def test_a_text_reply_is_an_anthropic_message() -> None:
    result = post(client_for("Hello from the fake."))
    assert result.status_code == 200, result.text
    assert result.json == {
        "id": "msg_1", "type": "message", "role": "assistant",
        "model": "mlx-community/gemma-3-4b-it-4bit",
        "content": [{"type": "text", "text": "Hello from the fake."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {**USAGE, "output_tokens": 4}}


def test_the_streamed_event_sequence_is_anthropics() -> None:
    result = post(client_for("Hello there."), stream=True)
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    usage_start = {**USAGE, "output_tokens": 0}
    assert events(result) == [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant",
            "model": "mlx-community/gemma-3-4b-it-4bit", "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": usage_start}}),
        ("ping", {"type": "ping"}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hello"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": " there."}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {**USAGE, "output_tokens": 2}}),
        ("message_stop", {"type": "message_stop"}),
    ]


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_tool_use_round_trip(family: str) -> None:
    engine = RecordingEngine([f"Let me look. {CALL[family]}", "It is sunny in Paris."])
    client = client_for(engine=engine)
    first = post(client, model=family, tools=[WEATHER])
    assert first.status_code == 200, first.text
    assert first.json["stop_reason"] == "tool_use"
    text, call = first.json["content"]
    assert text == {"type": "text", "text": "Let me look."}
    assert call == {"type": "tool_use", "id": "toolu_2", "name": "get_weather",  # of call_2
                    "input": {"city": "Paris", "days": 3}}
    second = post(client, model=family, tools=[WEATHER], messages=[
        *ASK, {"role": "assistant", "content": first.json["content"]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "18 C, sunny"},
            {"type": "text", "text": "Thanks!"}]}])
    assert second.status_code == 200, second.text
    assert second.json["content"] == [{"type": "text", "text": "It is sunny in Paris."}]
    assert second.json["stop_reason"] == "end_turn"
    turns = engine.prompts[-1].messages
    rendered = render(turns, engine.prompts[-1].tools)
    assert "get_weather" in rendered and "18 C, sunny" in rendered and "Thanks!" in rendered
    if family == "gemma":  # its profile rewrites calls and results into its own prompt text
        return
    assistant, tool, user = turns[-3:]
    assert assistant.role is Role.ASSISTANT and assistant.tool_calls[0].id == call["id"]
    assert json.loads(assistant.tool_calls[0].arguments) == {"city": "Paris", "days": 3}
    assert (tool.role, tool.text, tool.tool_call_id) == (Role.TOOL, "18 C, sunny", call["id"])
    assert (user.role, user.text) == (Role.USER, "Thanks!")


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_streamed_tool_use_sends_its_input_as_json_deltas(family: str) -> None:
    result = post(client_for(f"Let me look. {CALL[family]}"), model=family, tools=[WEATHER],
                  stream=True)
    sequence = events(result)
    names = [name for name, _ in sequence]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-2:] == ["message_delta", "message_stop"]
    starts = [data for name, data in sequence if name == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    assert [s["index"] for s in starts] == [0, 1]
    tool_block = starts[1]["content_block"]
    assert tool_block == {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}}
    partial = "".join(d["delta"]["partial_json"] for n, d in sequence
                      if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta")
    assert json.loads(partial) == {"city": "Paris", "days": 3}
    assert sequence[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    stops = [data["index"] for name, data in sequence if name == "content_block_stop"]
    assert stops == [0, 1]  # every block closed, in order


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_disable_parallel_tool_use_returns_one_call(family: str) -> None:
    result = post(client_for(TWO[family]), model=family, tools=[WEATHER],
                  tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [block["input"] for block in result.json["content"]] == [{"city": "Paris"}]


@pytest.mark.parametrize(("choice", "mode", "name"), [
    ({"type": "auto"}, "auto", None), ({"type": "any"}, "required", None),
    ({"type": "tool", "name": "get_weather"}, "function", "get_weather"),
    ({"type": "none"}, "none", None)])
def test_tool_choice_maps_onto_the_domains(choice: dict[str, Any], mode: str,
                                           name: str | None) -> None:
    from mlx_server.adapters.http.messages_codec import to_request
    request = to_request({"model": "qwen", "max_tokens": 5, "messages": ASK, "tools": [WEATHER],
                          "tool_choice": choice})
    assert (request.tool_choice.mode.value, request.tool_choice.function) == (mode, name)
    assert request.parallel_tool_calls


def test_a_named_tool_that_was_not_sent_is_400() -> None:
    result = post(client_for(), model="qwen", tools=[WEATHER],
                  tool_choice={"type": "tool", "name": "book_flight"})
    assert result.status_code == 400
    assert result.json["error"]["type"] == "invalid_request_error"


def test_a_stop_sequence_ends_the_reply_and_is_named() -> None:
    result = post(client_for("one two STOP three"), stop_sequences=["NEVER", "STOP"])
    assert result.json["content"] == [{"type": "text", "text": "one two "}]
    assert (result.json["stop_reason"], result.json["stop_sequence"]) == ("stop_sequence", "STOP")
    streamed = events(post(client_for("one two STOP three"), stop_sequences=["STOP"], stream=True))
    assert streamed[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "STOP"}


def test_max_tokens_cuts_the_reply() -> None:
    result = post(client_for("one two three four"), max_tokens=2)
    assert result.json["content"] == [{"type": "text", "text": "one two"}]
    assert (result.json["stop_reason"], result.json["stop_sequence"]) == ("max_tokens", None)
    assert result.json["usage"]["output_tokens"] == 2


def test_system_prompts_fold_in_order_and_beta_is_accepted() -> None:
    """What Claude Code sends: `?beta=true`, system blocks, `role: system` messages."""
    engine = RecordingEngine(["ok"])
    result = client_for(engine=engine).simulate_post(
        "/v1/messages", params={"beta": "true"}, json={
            "model": "gemma", "max_tokens": 10, "stream": True,
            "system": [{"type": "text", "text": "You are terse.",
                        "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "system", "content": "Answer in French."}, *ASK],
            "metadata": {"user_id": "u-1"}},
        headers={"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"})
    assert result.status_code == 200, result.text
    system, user = engine.prompts[-1].messages
    assert (system.role, system.text) == (Role.SYSTEM, "You are terse.\n\nAnswer in French.")
    assert user.role is Role.USER


@pytest.mark.parametrize("version", ["2023-06-01", "2026-10-21", None])
def test_any_anthropic_version_is_accepted(version: str | None) -> None:
    headers = {"anthropic-version": version} if version else None
    result = post(client_for("hi"), headers=headers, temperature=0.5, top_p=0.9, top_k=5)
    assert result.status_code == 200, result.text


def test_images_and_tool_errors_reach_the_model() -> None:
    engine = RecordingEngine(["ok"])
    png = data_uri(png_bytes())
    media_type, data = png[5:].split(";base64,")
    result = post(client_for(engine=engine), model="qwen", tools=[WEATHER], messages=[
        {"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": media_type,
                                         "data": data}},
            {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                           "name": "get_weather", "input": {"city": "X"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "is_error": True,
                                      "content": [{"type": "text", "text": "no such city"}]}]}])
    assert result.status_code == 200, result.text
    prompt = engine.prompts[-1]
    assert len(prompt.images) == 1
    assert [m.text for m in prompt.messages if m.role is Role.TOOL] == ["Error: no such city"]


def test_count_tokens_counts_the_prompt() -> None:
    client = client_for("hi")
    counted = client.simulate_post("/v1/messages/count_tokens",
                                   json={"model": "gemma", "messages": ASK})
    assert counted.status_code == 200 and counted.json == {"input_tokens": 6}
    answered = post(client)
    assert answered.json["usage"]["input_tokens"] == counted.json["input_tokens"]


def anthropic_error(result: falcon.testing.Result, status: int, kind: str) -> str:
    assert result.status_code == status, result.text
    assert set(result.json) == {"type", "error"} and result.json["type"] == "error"
    assert set(result.json["error"]) == {"type", "message"}
    assert result.json["error"]["type"] == kind
    message: str = result.json["error"]["message"]
    return message


def test_errors_have_anthropics_shape() -> None:
    client = client_for("hi")
    missing = client.simulate_post("/v1/messages", json={"model": "gemma", "messages": ASK})
    assert "max_tokens" in anthropic_error(missing, 400, "invalid_request_error")
    thinking = post(client, thinking={"type": "enabled", "budget_tokens": 1024})
    assert "thinking" in anthropic_error(thinking, 400, "invalid_request_error")
    anthropic_error(post(client, model="no-such-model"), 404, "not_found_error")
    anthropic_error(client.simulate_post("/v1/messages/nope", json={}), 404, "not_found_error")
    anthropic_error(client.simulate_get("/v1/messages"), 405, "invalid_request_error")
    bad = client.simulate_post("/v1/messages", body=b"{", headers={"content-type": "application/json"})
    anthropic_error(bad, 400, "invalid_request_error")
    big = client_for("hi", max_body_mb=0.001)
    anthropic_error(post(big, messages=[{"role": "user", "content": "x" * 5000}]), 413,
                    "request_too_large")
    # the chat endpoint keeps OpenAI's envelope
    assert client.simulate_post("/v1/chat/completions", json={}).json["error"]["code"] \
        == "missing_required_parameter"


def test_the_api_key_is_taken_as_x_api_key_or_bearer() -> None:
    client = client_for("hi", api_key="sekrit")
    denied = post(client)
    anthropic_error(denied, 401, "authentication_error")
    anthropic_error(post(client, headers={"x-api-key": "wrong"}), 401, "authentication_error")
    assert post(client, headers={"x-api-key": "sekrit"}).status_code == 200
    assert post(client, headers={"Authorization": "Bearer sekrit"}).status_code == 200
    # a wrong key is not excused by a right one beside it
    both = post(client, headers={"x-api-key": "wrong", "Authorization": "Bearer sekrit"})
    assert both.status_code == 401
    # on every route: an Anthropic client may list models with its header
    assert client.simulate_get("/v1/models", headers={"x-api-key": "sekrit"}).status_code == 200
    assert client.simulate_get("/v1/models").json["error"]["code"] == "invalid_api_key"


def test_a_family_stop_is_end_turn_not_a_stop_sequence() -> None:
    """Gemma's own stop (a tool_output block it starts writing) ends the turn unnamed."""
    result = post(client_for("Sure.\n```tool_output\n42\n```"), tools=[WEATHER],
                  stop_sequences=["NEVER"])
    assert result.json["content"] == [{"type": "text", "text": "Sure.\n"}]
    assert (result.json["stop_reason"], result.json["stop_sequence"]) == ("end_turn", None)


def test_a_busy_server_is_529_overloaded_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_server.domain.chat import ChatService
    from mlx_server.domain.errors import ServerBusy

    async def busy(self: ChatService, request: object) -> None:
        raise ServerBusy("The server is busy.")

    monkeypatch.setattr(ChatService, "complete", busy)
    client = client_for("hi")
    result = post(client)
    anthropic_error(result, 529, "overloaded_error")
    assert int(result.headers["retry-after"]) > 0
    chat = client.simulate_post("/v1/chat/completions", json={"model": "gemma", "messages": ASK})
    assert chat.status_code == 503 and chat.json["error"]["code"] == "server_busy"


@pytest.mark.parametrize("effort", ["low", "medium", "high", "xhigh", "max", None])
def test_every_effort_is_accepted_and_changes_nothing(effort: str | None) -> None:
    """The served models have no degrees of effort: the answer is the one without it."""
    engine = RecordingEngine(["<think>plan</think>Sunny."])
    client = client_for(engine=engine)
    plain = post(client, model="qwen")
    result = post(client, model="qwen", output_config={"effort": effort})
    assert result.status_code == 200, result.text
    assert result.json["content"] == plain.json["content"]
    assert engine.prompts[0] == engine.prompts[1]
    counted = client.simulate_post("/v1/messages/count_tokens", json={
        "model": "qwen", "messages": ASK, "output_config": {"effort": effort}})
    assert counted.status_code == 200, counted.text


def test_an_unknown_effort_is_400_naming_it() -> None:
    result = post(client_for("hi"), output_config={"effort": "extreme"})
    assert "'output_config.effort'" in anthropic_error(result, 400, "invalid_request_error")


CAPTURED = Path(__file__).parents[1] / "support" / "captured" / "claude_code_request.json"


@pytest.mark.parametrize("stream", [True, False])
def test_claude_codes_default_request_is_answered(stream: bool) -> None:
    """Claude Code 2.1.328's first request with every default (`claude -p "say hi"`, captured;
    long texts shortened): adaptive thinking with display omitted, output_config.effort,
    context_management, a role "system" message, defer_loading, cache_control, ?beta=true and
    its headers. Only the model is one served here (what ANTHROPIC_MODEL does; Claude Code then
    asks 32000 max_tokens, not the 128000 it asks an Opus), and `stream` is both."""
    captured = json.loads(CAPTURED.read_text())
    body = captured["body"]
    assert body["thinking"] == {"type": "adaptive", "display": "omitted"}
    assert body["output_config"] == {"effort": "medium"}
    for thinking, reply in (("none", "Hi!"), ("forced", "<think>greet</think>Hi!")):
        engine = FakeEngine([reply], thinking=thinking)  # type: ignore[arg-type]
        result = client_for(engine=engine).simulate_post(
            captured["path"], params={"beta": "true"}, headers=captured["headers"],
            json={**body, "model": "qwen", "max_tokens": 32000, "stream": stream})
        assert result.status_code == 200, result.text
        if stream:
            blocks = [data["content_block"] for name, data in events(result)
                      if name == "content_block_start"]
            deltas = [data["delta"]["type"] for name, data in events(result)
                      if name == "content_block_delta"]
            assert "thinking_delta" not in deltas
        else:
            blocks = result.json["content"]
        expected = ["text"] if thinking == "none" else ["thinking", "text"]
        assert [block["type"] for block in blocks] == expected
        assert all(block["thinking"] == "" for block in blocks if block["type"] == "thinking")


# -- context_management: clear_thinking ---------------------------------------------------------

def _thinking_turns(edits: Any) -> list[str | None]:
    engine = RecordingEngine(["Fine."])
    turns = [{"role": "user", "content": "One?"},
             {"role": "assistant", "content": [{"type": "thinking", "thinking": "first",
                                                "signature": ""}, {"type": "text", "text": "1"}]},
             {"role": "user", "content": "Two?"},
             {"role": "assistant", "content": [{"type": "thinking", "thinking": "second",
                                                "signature": ""}, {"type": "text", "text": "2"}]},
             {"role": "user", "content": "Three?"}]
    body: dict[str, Any] = {"messages": turns}
    if edits is not None:
        body["context_management"] = {"edits": edits}
    result = post(client_for(engine=engine), **body)
    assert result.status_code == 200, result.text
    return [m.reasoning for m in engine.prompts[-1].messages if m.role is Role.ASSISTANT]


def test_clear_thinking_keeps_the_reasoning_of_the_last_turns_only() -> None:
    edit = "clear_thinking_20251015"
    assert _thinking_turns(None) == ["first", "second"]
    assert _thinking_turns([{"type": edit, "keep": "all"}]) == ["first", "second"]
    assert _thinking_turns([{"type": edit, "keep": {"type": "all"}}]) == ["first", "second"]
    assert _thinking_turns([{"type": edit}]) == [None, "second"]  # Anthropic's default: 1
    assert _thinking_turns([{"type": edit, "keep": {"type": "thinking_turns", "value": 2}}]) \
        == ["first", "second"]


def test_other_context_edits_are_refused_by_name() -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        result = client_for("x").simulate_post(path, json={
            "model": "qwen", "max_tokens": 8, "messages": ASK, "context_management": {"edits": [
                {"type": "clear_thinking_20251015"}, {"type": "clear_tool_uses_20250919"}]}})
        assert result.status_code == 400, result.text
        assert "context_management.edits[1].type" in result.json["error"]["message"]
    counted = client_for("x").simulate_post("/v1/messages/count_tokens", json={
        "model": "qwen", "messages": ASK,
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}})
    assert counted.status_code == 200, counted.text

"""OpenAI's Responses API (/v1/responses) in process on the fake engine: the response object, the
streamed event sequence, function tools for both tool families (and Codex's namespaces), the
store (previous_response_id, store false, eviction, GET and DELETE), max_output_tokens, text
formats and the parameters refused."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
import falcon.testing
import pytest

from mlx_server.adapters.fake_engine import FakeEngine, render
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import ResponseFormat, Role, SamplingParams
from mlx_server.domain.errors import EngineFailure
from mlx_server.domain.ports import PreparedPrompt, PromptInput, RowId, StepReport
from tests.support.fakes import CountingIds
from tests.support.http import ConnectedTestClient, named_events
from tests.support.images import data_uri, png_bytes

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "strict": False,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                           "days": {"type": "integer"}},
                          "required": ["city"]}}
CALL = {"gemma": '```tool_code\nget_weather(city="Paris", days=3)\n```',
        "qwen": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
                '</tool_call>'}
USAGE = {"input_tokens": 4, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 4,
         "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}
GEMMA = "mlx-community/gemma-3-4b-it-4bit"


class RecordingEngine(FakeEngine):
    """The fake engine, keeping every prompt it prepared and the sampling of every generation."""

    def __init__(self, replies: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__(replies)
        self.prompts: list[PromptInput] = []
        self.sampling: list[SamplingParams] = []

    def prepare(self, prompt: PromptInput) -> PreparedPrompt:
        self.prompts.append(prompt)
        return super().prepare(prompt)

    def admit(self, prompt: PreparedPrompt, params: SamplingParams) -> RowId:
        self.sampling.append(params)
        return super().admit(prompt, params)


class FailingEngine(FakeEngine):
    """Fails after its first token: an error after the stream's status line."""

    def reply_tokens(self, payload: Any, params: SamplingParams) -> list[str]:
        return ["Hello", " world"]

    def step(self, prefill: Mapping[RowId, int]) -> StepReport:
        report = super().step(prefill)
        return StepReport(tuple(attrs.evolve(p, step=None, error=EngineFailure(
            "Inference failed: RuntimeError: the device fell over"))
            if p.step is not None and p.step.token == 2 else p for p in report.rows))


def client_for(*replies: str, engine: FakeEngine | None = None,
               **settings: Any) -> falcon.testing.TestClient:
    app = build(Settings(engine="fake", **settings), engine=engine or FakeEngine(list(replies)),
                ids=CountingIds())
    return ConnectedTestClient(app)


def post(client: falcon.testing.TestClient, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/responses", json={"model": "gemma", "input": "Weather in Paris?",
                                                       **body})


def events(result: falcon.testing.Result) -> list[dict[str, Any]]:
    """The stream's events, each checked: named by its `type`, numbered in order."""
    out = [payload for _, payload in named_events(result.text)]
    assert [event["sequence_number"] for event in out] == list(range(len(out)))
    return out


def error(result: falcon.testing.Result, status: int) -> dict[str, Any]:
    assert result.status_code == status, result.text
    assert set(result.json) == {"error"}
    assert set(result.json["error"]) == {"message", "type", "param", "code"}
    found: dict[str, Any] = result.json["error"]
    return found


def test_a_text_reply_is_a_response_object() -> None:
    result = post(client_for("Hello from the fake."), metadata={"k": "v"}, instructions="Be brief.",
                  temperature=0.5, top_p=0.9)
    assert result.status_code == 200, result.text
    body = result.json
    assert body["id"] == "resp_1" and body["object"] == "response"
    assert (body["status"], body["model"], body["error"], body["incomplete_details"]) == (
        "completed", GEMMA, None, None)
    assert body["output"] == [{"id": "msg_1_0", "type": "message", "status": "completed",
                               "role": "assistant", "content": [
                                   {"type": "output_text", "text": "Hello from the fake.",
                                    "annotations": [], "logprobs": []}]}]
    assert body["usage"] == {**USAGE, "input_tokens": 9, "total_tokens": 13}
    assert (body["instructions"], body["metadata"], body["temperature"], body["top_p"]) == (
        "Be brief.", {"k": "v"}, 0.5, 0.9)
    assert (body["tools"], body["tool_choice"], body["parallel_tool_calls"], body["store"]) == (
        [], "auto", True, True)
    assert body["text"]["format"] == {"type": "text"}
    assert isinstance(body["created_at"], int)


def test_instructions_and_items_become_the_conversation() -> None:
    engine = RecordingEngine(["ok"])
    png = data_uri(png_bytes())
    result = post(client_for(engine=engine), model="qwen", instructions="Be brief.", input=[
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "D"}]},
        {"role": "user", "content": [{"type": "input_image", "image_url": png, "detail": "low"},
                                     {"type": "input_text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "A pixel."}]},
        {"role": "user", "content": "Sure?"}])
    assert result.status_code == 200, result.text
    prompt = engine.prompts[-1]
    assert [(m.role, m.text) for m in prompt.messages] == [
        (Role.SYSTEM, "Be brief."), (Role.DEVELOPER, "D"), (Role.USER, "What is this?"),
        (Role.ASSISTANT, "A pixel."), (Role.USER, "Sure?")]
    assert len(prompt.images) == 1


def test_the_streamed_event_sequence_is_openais() -> None:
    result = post(client_for("Hello there."), stream=True)
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    sequence = events(result)
    assert [event["type"] for event in sequence] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    created, in_progress = sequence[0]["response"], sequence[1]["response"]
    assert created["status"] == in_progress["status"] == "in_progress"
    assert created["output"] == [] and created["id"] == "resp_1"
    added = sequence[2]
    assert added["output_index"] == 0 and added["item"] == {
        "id": "msg_1_0", "type": "message", "status": "in_progress", "role": "assistant",
        "content": []}
    assert sequence[3]["part"] == {"type": "output_text", "text": "", "annotations": [],
                                   "logprobs": []}
    assert [e["delta"] for e in sequence[4:6]] == ["Hello", " there."]
    assert all(e["item_id"] == "msg_1_0" and e["content_index"] == 0 for e in sequence[3:8])
    assert sequence[6]["text"] == "Hello there." and sequence[7]["part"]["text"] == "Hello there."
    done = sequence[8]["item"]
    assert done["status"] == "completed" and done["content"][0]["text"] == "Hello there."
    completed = sequence[9]["response"]
    assert completed["status"] == "completed" and completed["output"] == [done]
    assert completed["usage"]["output_tokens"] == 2
    # what GET returns is what the last event said
    client = client_for("Hello there.")
    streamed = events(post(client, stream=True))[-1]["response"]
    assert client.simulate_get(f"/v1/responses/{streamed['id']}").json == streamed


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_a_function_call_is_an_output_item(family: str) -> None:
    result = post(client_for(f"Let me look. {CALL[family]}"), model=family, tools=[WEATHER])
    assert result.status_code == 200, result.text
    message, call = result.json["output"]
    assert message["content"][0]["text"] == "Let me look."
    assert call == {"id": "fc_1_1", "type": "function_call", "status": "completed",
                    "call_id": call["call_id"], "name": "get_weather",
                    "arguments": call["arguments"]}
    assert json.loads(call["arguments"]) == {"city": "Paris", "days": 3}
    assert result.json["status"] == "completed" and result.json["tools"] == [WEATHER]


@pytest.mark.parametrize("family", ["gemma", "qwen"])
def test_streamed_function_call_round_trip(family: str) -> None:
    engine = RecordingEngine([CALL[family], "It is sunny in Paris."])
    client = client_for(engine=engine)
    sequence = events(post(client, model=family, tools=[WEATHER], stream=True, store=False))
    kinds = [event["type"] for event in sequence]
    assert kinds[2:] == ["response.output_item.added"] \
        + ["response.function_call_arguments.delta"] * (len(kinds) - 6) \
        + ["response.function_call_arguments.done", "response.output_item.done",
           "response.completed"]
    added, done = sequence[2]["item"], sequence[-2]["item"]
    assert added["type"] == "function_call" and added["arguments"] == ""
    assert added["status"] == "in_progress" and done["status"] == "completed"
    arguments = "".join(e["delta"] for e in sequence if e["type"].endswith("arguments.delta"))
    assert json.loads(arguments) == {"city": "Paris", "days": 3}
    assert sequence[-3]["arguments"] == arguments == done["arguments"]
    assert sequence[-3]["name"] == "get_weather" and sequence[-3]["item_id"] == added["id"]
    # the client runs the tool and sends the call and its output back (store was false)
    second = post(client, model=family, tools=[WEATHER], stream=True, input=[
        {"role": "user", "content": "Weather in Paris?"}, done,
        {"type": "function_call_output", "call_id": done["call_id"], "output": "18 C, sunny"}])
    final = events(second)[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "It is sunny in Paris."
    rendered = render(engine.prompts[-1].messages, engine.prompts[-1].tools)
    assert "get_weather" in rendered and "18 C, sunny" in rendered
    if family == "gemma":  # its profile rewrites calls and results into its own prompt text
        return
    user, assistant, tool = engine.prompts[-1].messages[-3:]
    assert user.role is Role.USER
    assert assistant.role is Role.ASSISTANT and assistant.tool_calls[0].id == done["call_id"]
    assert (tool.role, tool.text, tool.tool_call_id) == (Role.TOOL, "18 C, sunny", done["call_id"])


def test_previous_response_id_continues_the_stored_conversation() -> None:
    engine = RecordingEngine(["Paris is sunny.", "Rome too."])
    client = client_for(engine=engine)
    first = post(client, instructions="Be brief.", metadata={"turn": "1"})
    second = post(client, input="And Rome?", previous_response_id=first.json["id"],
                  instructions="Answer in French.")
    assert second.status_code == 200, second.text
    assert second.json["previous_response_id"] == first.json["id"]
    assert second.json["metadata"] == {}  # metadata is the request's own
    # the first turn's input and output, then the new input; its instructions are not carried
    assert [(m.role, m.text) for m in engine.prompts[-1].messages] == [
        (Role.SYSTEM, "Answer in French."), (Role.USER, "Weather in Paris?"),
        (Role.ASSISTANT, "Paris is sunny."), (Role.USER, "And Rome?")]
    third = post(client, input="And Oslo?", previous_response_id=second.json["id"])
    assert third.status_code == 200
    assert [m.text for m in engine.prompts[-1].messages] == [
        "Weather in Paris?", "Paris is sunny.", "And Rome?", "Rome too.", "And Oslo?"]


def test_store_false_is_not_kept() -> None:
    client = client_for("hi")
    result = post(client, store=False)
    assert result.json["store"] is False
    found = error(client.simulate_get(f"/v1/responses/{result.json['id']}"), 404)
    assert found["code"] == "response_not_found"
    chained = error(post(client, previous_response_id=result.json["id"]), 404)
    assert (chained["param"], chained["code"]) == ("previous_response_id",
                                                   "previous_response_not_found")


def test_get_and_delete() -> None:
    client = client_for("hi")
    created = post(client).json
    assert client.simulate_get(f"/v1/responses/{created['id']}").json == created
    deleted = client.simulate_delete(f"/v1/responses/{created['id']}")
    assert deleted.json == {"id": created["id"], "object": "response.deleted", "deleted": True}
    error(client.simulate_get(f"/v1/responses/{created['id']}"), 404)
    error(client.simulate_delete(f"/v1/responses/{created['id']}"), 404)
    missing = error(client.simulate_get("/v1/responses/resp_" + "x" * 100_000), 404)
    assert len(missing["message"]) < 300
    error(post(client, previous_response_id=created["id"]), 404)


def test_the_oldest_responses_are_evicted_by_count() -> None:
    client = client_for("hi", responses_max_count=2)
    ids = [post(client).json["id"] for _ in range(3)]
    error(client.simulate_get(f"/v1/responses/{ids[0]}"), 404)
    error(post(client, previous_response_id=ids[0]), 404)
    assert [client.simulate_get(f"/v1/responses/{i}").status_code for i in ids[1:]] == [200, 200]


def test_the_oldest_responses_are_evicted_by_bytes() -> None:
    one = len(json.dumps(post(client_for("hi")).json)) + 100  # about one record
    client = client_for("hi", responses_max_mb=2.5 * one / 2**20)
    ids = [post(client).json["id"] for _ in range(4)]
    assert [client.simulate_get(f"/v1/responses/{i}").status_code for i in ids] == [
        404, 404, 200, 200]
    # a record larger than the whole store is not kept, and says so by its absence
    huge = post(client, input="x " * one)
    assert huge.status_code == 200
    error(client.simulate_get(f"/v1/responses/{huge.json['id']}"), 404)


def test_max_output_tokens_makes_it_incomplete() -> None:
    result = post(client_for("one two three four"), max_output_tokens=2)
    assert (result.json["status"], result.json["incomplete_details"]) == (
        "incomplete", {"reason": "max_output_tokens"})
    assert result.json["output"][0]["status"] == "incomplete"
    assert result.json["output"][0]["content"][0]["text"] == "one two"
    assert result.json["max_output_tokens"] == 2
    sequence = events(post(client_for("one two three four"), max_output_tokens=2, stream=True))
    assert sequence[-1]["type"] == "response.incomplete"
    assert sequence[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert sequence[-2]["item"]["status"] == "incomplete"


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "json_schema", "name": "city", "strict": True,
      "schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
     ResponseFormat({"type": "object", "properties": {"city": {"type": "string"}}})),
    ({"type": "json_object"}, ResponseFormat()),
    ({"type": "text"}, None)])
def test_text_format_maps_to_the_domains_response_format(
        fmt: dict[str, Any], expected: ResponseFormat | None) -> None:
    engine = RecordingEngine(['{"city": "Paris"}'])
    result = post(client_for(engine=engine), text={"format": fmt})
    assert result.status_code == 200, result.text
    assert engine.sampling[-1].response_format == expected
    assert result.json["text"]["format"] == fmt


@pytest.mark.parametrize(("choice", "mode", "name"), [
    ("auto", "auto", None), ("required", "required", None), ("none", "none", None),
    ({"type": "function", "name": "get_weather"}, "function", "get_weather")])
def test_tool_choice_maps_onto_the_domains(choice: Any, mode: str, name: str | None) -> None:
    from mlx_server.adapters.http.responses_codec import to_request
    request = to_request({"model": "qwen", "tool_choice": choice, "parallel_tool_calls": False},
                         [], ())
    assert (request.tool_choice.mode.value, request.tool_choice.function) == (mode, name)
    assert not request.parallel_tool_calls


def test_parallel_tool_calls_false_returns_one_call() -> None:
    two = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
           '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>')
    result = post(client_for(two), model="qwen", tools=[WEATHER], parallel_tool_calls=False)
    assert [json.loads(i["arguments"]) for i in result.json["output"]] == [{"city": "Paris"}]
    both = post(client_for(two), model="qwen", tools=[WEATHER])
    assert len(both.json["output"]) == 2


def test_a_namespace_is_flattened_and_its_calls_carry_it() -> None:
    """Codex CLI's shape: function tools grouped in a namespace."""
    engine = RecordingEngine(['<tool_call>\n{"name": "spawn_agent", "arguments": {"task": "x"}}\n'
                              "</tool_call>", "done"])
    client = client_for(engine=engine)
    spawn = {"type": "function", "name": "spawn_agent", "strict": False,
             "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}}
    tools = [WEATHER, {"type": "namespace", "name": "agents", "description": "Sub-agents.",
                       "tools": [spawn]}]
    first = post(client, model="qwen", tools=tools)
    assert first.status_code == 200, first.text
    [call] = first.json["output"]
    assert (call["name"], call["namespace"]) == ("spawn_agent", "agents")
    assert [tool.name for tool in engine.prompts[-1].tools] == ["get_weather", "spawn_agent"]
    sequence = events(post(client_for(engine=engine), model="qwen", tools=tools, stream=True,
                           input=[{"role": "user", "content": "go"}, call,
                                  {"type": "function_call_output", "call_id": call["call_id"],
                                   "output": [{"type": "input_text", "text": "spawned"}]}]))
    assert sequence[-1]["type"] == "response.completed"
    assert engine.prompts[-1].messages[-2].tool_calls[0].name == "spawn_agent"
    assert engine.prompts[-1].messages[-1].text == "spawned"
    clash = error(post(client, model="qwen", tools=[
        WEATHER, {"type": "namespace", "name": "n", "tools": [{**WEATHER}]}]), 400)
    assert clash["param"] == "tools[1].tools[0].name"


def test_a_codex_request_is_served() -> None:
    """The shape Codex CLI 0.169 sends (captured): developer messages with ids, store false,
    reasoning {}, include reasoning.encrypted_content, prompt_cache_key, client_metadata."""
    engine = RecordingEngine(['<tool_call>\n{"name": "exec_command", "arguments": '
                              '{"cmd": "echo hi"}}\n</tool_call>'])
    exec_command = {"type": "function", "name": "exec_command", "description": "Runs a command.",
                    "strict": False, "parameters": {
                        "type": "object", "properties": {"cmd": {"type": "string"}},
                        "required": ["cmd"], "additionalProperties": False}}
    result = post(client_for(engine=engine), model="qwen", stream=True, input=[
        {"type": "message", "id": "msg_a", "role": "developer",
         "content": [{"type": "input_text", "text": "You are a coding agent."}]},
        {"type": "message", "id": "msg_b", "role": "user",
         "content": [{"type": "input_text", "text": "say hi"}]}],
        tools=[exec_command], tool_choice="auto", parallel_tool_calls=True, reasoning={},
        store=False, include=["reasoning.encrypted_content"], prompt_cache_key="k",
        client_metadata={"session_id": "s"})
    assert result.status_code == 200, result.text
    final = events(result)[-1]["response"]
    assert final["output"][0]["name"] == "exec_command"
    assert engine.prompts[-1].messages[0].role is Role.DEVELOPER


@pytest.mark.parametrize(("field", "value", "param"), [
    ("tools", [{"type": "web_search", "external_web_access": False}], "tools[0].type"),
    ("tools", [WEATHER, {"type": "file_search", "vector_store_ids": ["v"]}], "tools[1].type"),
    ("tools", [{"type": "code_interpreter", "container": {"type": "auto"}}], "tools[0].type"),
    ("tools", [{"type": "namespace", "name": "n", "tools": [{"type": "custom", "name": "c"}]}],
     "tools[0].tools[0].type"),
    ("reasoning", {"effort": "high"}, "reasoning.effort"),
    ("reasoning", {"summary": "concise"}, "reasoning.summary"),
    ("background", True, "background"), ("truncation", "auto", "truncation"),
    ("conversation", "conv_1", "conversation"), ("prompt", {"id": "p"}, "prompt"),
    ("top_logprobs", 3, "top_logprobs"), ("service_tier", "flex", "service_tier"),
    ("stream_options", {"include_obfuscation": True}, "stream_options")])
def test_what_is_not_supported_is_400_naming_it(field: str, value: Any, param: str) -> None:
    found = error(post(client_for("hi"), **{field: value}), 400)
    assert found["param"] == param
    assert found["code"] in ("unsupported_parameter", "unsupported_value")


def test_no_op_values_are_accepted() -> None:
    client = client_for("hi")
    for extra in ({"reasoning": None}, {"reasoning": {}}, {"reasoning": {"effort": None}},
                  {"background": False}, {"truncation": "disabled"}, {"service_tier": "auto"},
                  {"include": ["reasoning.encrypted_content"]}, {"top_logprobs": 0},
                  {"stream_options": {"include_obfuscation": False}, "stream": True}):
        assert post(client, **extra).status_code == 200, extra


def test_errors_before_and_after_the_status_line() -> None:
    client = client_for("hi")
    missing = error(client.simulate_post("/v1/responses", json={"model": "gemma"}), 400)
    assert (missing["param"], missing["code"]) == ("input", "missing_required_parameter")
    error(post(client, model="no-such-model"), 404)
    named = error(post(client, tools=[WEATHER], tool_choice={"type": "function", "name": "nope"}),
                  400)
    assert named["param"] == "tool_choice"
    error(post(client, tool_choice="required"), 400)
    failing = client_for(engine=FailingEngine())
    sequence = events(post(failing, stream=True))
    assert sequence[-1]["type"] == "response.failed"
    failed = sequence[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert "the device fell over" in failed["error"]["message"]
    assert failed["output"][0]["status"] == "incomplete"
    assert failing.simulate_get(f"/v1/responses/{failed['id']}").json["status"] == "failed"


def test_the_api_key_guards_every_responses_route() -> None:
    client = client_for("hi", api_key="sekrit")
    assert error(post(client), 401)["code"] == "invalid_api_key"
    auth = {"Authorization": "Bearer sekrit"}
    created = client.simulate_post("/v1/responses", headers=auth,
                                   json={"model": "gemma", "input": "hi"})
    assert created.status_code == 200
    error(client.simulate_get(f"/v1/responses/{created.json['id']}"), 401)
    assert client.simulate_get(f"/v1/responses/{created.json['id']}", headers=auth).status_code == 200
    error(client.simulate_delete(f"/v1/responses/{created.json['id']}"), 401)

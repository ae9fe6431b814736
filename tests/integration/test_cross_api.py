"""One domain under every API: for any raw model output, cut into any chunks, the final message of
chat completions, Anthropic Messages and OpenAI Responses (each streamed or not) carries the same
text, the same tool calls and the same stop reason. Parsing, stops and tool calls live below the
adapters, so an API can only differ in how it spells the answer. The Responses API has no stop
sequences: it is compared with the others on requests without them."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import falcon.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.conversation import SamplingParams
from tests.support.fakes import CountingIds, FixedClock
from tests.support.http import ConnectedTestClient

STOP = "<END>"
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "schema": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}


class ChunkedEngine(FakeEngine):
    """Streams exactly the chunks it is given, one token each: any cut of a raw output."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []

    def reply_tokens(self, payload: object, params: SamplingParams) -> list[str]:
        return list(self.chunks)


# -- raw outputs: prose, the request's stop sequence, and call blocks in each family's format ----

_words = st.text(st.sampled_from("ab c\n{}\"<>`:"), max_size=12)
_city = st.text(st.sampled_from("xyz é\""), min_size=1, max_size=6)


def _hermes(city: str) -> str:
    call = {"name": "get_weather", "arguments": {"city": city}}
    return "<tool_call>\n" + json.dumps(call) + "\n</tool_call>"


def _gemma(city: str) -> str:
    return f"```tool_code\nget_weather(city={city!r})\n```"


def _outputs(call: Callable[[str], str]) -> st.SearchStrategy[str]:
    piece = st.one_of(_words, st.just(STOP), _city.map(call),
                      st.just("<tool_call>\n{\"name\": \"nope\"}\n</tool_call>"),
                      st.just("```tool_code\nget_weather(\n```"))
    return st.lists(piece, min_size=1, max_size=5).map("".join)


@st.composite
def _chunked(draw: st.DrawFn, call: Callable[[str], str]) -> list[str]:
    text = draw(_outputs(call))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=8)))
    bounds = [0, *[c for c in cuts if c < len(text)], len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a] or [text]


# -- each API's answer, brought to one shape: (text, [(name, arguments)], stop) ---------------

Final = tuple[str, list[tuple[str, Any]], str]


def _chat_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
            "stop": [STOP], "tools": [{"type": "function", "function": {
                "name": TOOL["name"], "description": TOOL["description"],
                "parameters": TOOL["schema"]}}]}


def _messages_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "stream": stream, "stop_sequences": [STOP],
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": TOOL["name"], "description": TOOL["description"],
                       "input_schema": TOOL["schema"]}]}


def _responses_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "input": "hi", "stream": stream, "store": False,
            "tools": [{"type": "function", "name": TOOL["name"],
                       "description": TOOL["description"], "parameters": TOOL["schema"]}]}


_CHAT_STOP = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}
_MESSAGES_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls"}


def _chat_final(result: falcon.testing.Result, stream: bool) -> Final:
    if not stream:
        choice = result.json["choices"][0]
        message = choice["message"]
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
                 for c in message.get("tool_calls") or ()]
        return message["content"] or "", calls, _CHAT_STOP[choice["finish_reason"]]
    text, calls, reason = "", {}, ""
    for data in _sse_data(result.text):
        if data == "[DONE]":
            continue
        for choice in json.loads(data)["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                entry = calls.setdefault(call["index"], ["", ""])
                entry[0] += call["function"].get("name") or ""
                entry[1] += call["function"].get("arguments") or ""
            reason = choice["finish_reason"] or reason
    return text, [(n, json.loads(a)) for n, a in calls.values()], _CHAT_STOP[reason]


def _messages_final(result: falcon.testing.Result, stream: bool) -> Final:
    if not stream:
        body = result.json
        return _blocks(body["content"], body["stop_reason"])
    blocks: dict[int, dict[str, Any]] = {}
    reason = ""
    for data in _sse_data(result.text):
        event = json.loads(data)
        if event["type"] == "content_block_start":
            blocks[event["index"]] = dict(event["content_block"], partial="")
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                block["partial"] += delta["partial_json"]
        elif event["type"] == "message_delta":
            reason = event["delta"]["stop_reason"]
    for block in blocks.values():
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["partial"] or "{}")
    return _blocks([blocks[i] for i in sorted(blocks)], reason)


def _responses_final(result: falcon.testing.Result, stream: bool) -> Final:
    if not stream:
        return _items(result.json["output"], result.json["status"])
    items: dict[int, dict[str, Any]] = {}
    status = ""
    for data in _sse_data(result.text):
        event = json.loads(data)
        kind = event["type"]
        if kind == "response.output_item.added":
            items[event["output_index"]] = dict(event["item"], text="", arguments="")
        elif kind == "response.output_text.delta":
            items[event["output_index"]]["text"] += event["delta"]
        elif kind == "response.function_call_arguments.delta":
            items[event["output_index"]]["arguments"] += event["delta"]
        elif kind in ("response.completed", "response.incomplete"):
            status = event["response"]["status"]
    for item in items.values():
        item["content"] = [{"type": "output_text", "text": item["text"]}]
    return _items([items[i] for i in sorted(items)], status)


def _items(output: list[dict[str, Any]], status: str) -> Final:
    text = "".join(part["text"] for item in output if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")
    calls = [(item["name"], json.loads(item["arguments"])) for item in output
             if item["type"] == "function_call"]
    reason = "tool_calls" if calls else {"completed": "stop", "incomplete": "length"}[status]
    return text, calls, reason


def _blocks(content: list[dict[str, Any]], stop_reason: str) -> Final:
    text = "".join(block["text"] for block in content if block["type"] == "text")
    calls = [(block["name"], block["input"]) for block in content if block["type"] == "tool_use"]
    return text, calls, _MESSAGES_STOP[stop_reason]


def _sse_data(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


_ENGINE = ChunkedEngine()
_CLIENT = ConnectedTestClient(build(Settings(engine="fake"), engine=_ENGINE, clock=FixedClock(),
                                    ids=CountingIds()))


_APIS = {"chat": ("/v1/chat/completions", _chat_body, _chat_final, "stop"),
         "messages": ("/v1/messages", _messages_body, _messages_final, "stop_sequences"),
         "responses": ("/v1/responses", _responses_body, _responses_final, None)}


def _finals(model: str, chunks: list[str], stops: bool = True) -> dict[str, Final]:
    """Each API's final answer (streamed and not) to the same output; with `stops`, the APIs that
    take stop sequences with STOP among them, else every API with none."""
    _ENGINE.chunks = chunks
    out = {}
    for name, (path, body_for, final_of, stop_field) in _APIS.items():
        if stops and stop_field is None:
            continue
        for stream in (False, True):
            body = body_for(model, stream)
            if not stops and stop_field is not None:
                del body[stop_field]
            result = _CLIENT.simulate_post(path, json=body)
            assert result.status_code == 200, result.text
            out[f"{name} stream={stream}"] = final_of(result, stream)
    return out


_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _agree(finals: dict[str, Final], stops: bool) -> None:
    first = next(iter(finals.values()))
    assert all(final == first for final in finals.values()), finals
    text, calls, reason = first
    assert not stops or STOP not in text  # a stop sequence ends the answer and is never shown
    assert (reason == "tool_calls") == bool(calls)


@_SETTINGS
@given(_chunked(_hermes))
def test_every_api_reads_a_hermes_output_the_same_way(chunks: list[str]) -> None:
    for stops in (True, False):
        _agree(_finals("qwen", chunks, stops), stops)


@_SETTINGS
@given(_chunked(_gemma))
def test_every_api_reads_a_gemma_output_the_same_way(chunks: list[str]) -> None:
    for stops in (True, False):
        _agree(_finals("gemma", chunks, stops), stops)


def test_the_property_sees_calls_text_and_stops() -> None:
    """The property's readers are not blind: a known output reads as what it is on every API."""
    finals = _finals("qwen", ["Sure.", " " + _hermes("Paris")[:9], _hermes("Paris")[9:]])
    assert all(final[1:] == ([("get_weather", {"city": "Paris"})], "tool_calls")
               and final[0].strip() == "Sure." for final in finals.values()), finals
    assert len(finals) == 4
    finals = _finals("qwen", ["Sure.", " " + _hermes("Paris")[:9], _hermes("Paris")[9:]], False)
    assert len(finals) == 6 and all(
        final[1:] == ([("get_weather", {"city": "Paris"})], "tool_calls")
        and final[0].strip() == "Sure." for final in finals.values()), finals
    finals = _finals("gemma", ["Hello wor", "ld", STOP[:2], STOP[2:], " never"])
    assert all(final == ("Hello world", [], "stop") for final in finals.values()), finals
    finals = _finals("gemma", ["Hello wor", "ld", STOP[:2], STOP[2:], " never"], False)
    assert all(final == ("Hello world<END> never", [], "stop") for final in finals.values())

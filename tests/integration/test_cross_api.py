"""One domain under every API: for any raw model output, cut into any chunks, the final message of
chat completions, Anthropic Messages (and, streamed or not, each of them) carries the same text,
the same tool calls and the same stop reason. Parsing, stops and tool calls live below the
adapters, so an API can only differ in how it spells the answer."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Generator
from typing import Any

import falcon.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.completion import FinishReason, GenerationStep
from mlx_server.domain.conversation import SamplingParams
from mlx_server.domain.ports import PreparedPrompt
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

    def generate(self, prompt: PreparedPrompt, params: SamplingParams,
                 cancelled: Callable[[], bool] = lambda: False,
                 ) -> Generator[GenerationStep, None, None]:
        for index, chunk in enumerate(self.chunks, start=1):
            last = index == len(self.chunks)
            yield GenerationStep(chunk, index, FinishReason.STOP if last else None)


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


def _blocks(content: list[dict[str, Any]], stop_reason: str) -> Final:
    text = "".join(block["text"] for block in content if block["type"] == "text")
    calls = [(block["name"], block["input"]) for block in content if block["type"] == "tool_use"]
    return text, calls, _MESSAGES_STOP[stop_reason]


def _sse_data(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


_ENGINE = ChunkedEngine()
_CLIENT = ConnectedTestClient(build(Settings(engine="fake"), engine=_ENGINE, clock=FixedClock(),
                                    ids=CountingIds()))


def _finals(model: str, chunks: list[str]) -> dict[str, Final]:
    _ENGINE.chunks = chunks
    out = {}
    for stream in (False, True):
        chat = _CLIENT.simulate_post("/v1/chat/completions", json=_chat_body(model, stream))
        assert chat.status_code == 200, chat.text
        out[f"chat stream={stream}"] = _chat_final(chat, stream)
        messages = _CLIENT.simulate_post("/v1/messages", json=_messages_body(model, stream))
        assert messages.status_code == 200, messages.text
        out[f"messages stream={stream}"] = _messages_final(messages, stream)
    return out


_SETTINGS = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])


def _agree(finals: dict[str, Final]) -> None:
    first = next(iter(finals.values()))
    assert all(final == first for final in finals.values()), finals
    text, calls, reason = first
    assert STOP not in text  # the stop sequence ends the answer and is never shown
    assert (reason == "tool_calls") == bool(calls)


@_SETTINGS
@given(_chunked(_hermes))
def test_every_api_reads_a_hermes_output_the_same_way(chunks: list[str]) -> None:
    _agree(_finals("qwen", chunks))


@_SETTINGS
@given(_chunked(_gemma))
def test_every_api_reads_a_gemma_output_the_same_way(chunks: list[str]) -> None:
    _agree(_finals("gemma", chunks))


def test_the_property_sees_calls_text_and_stops() -> None:
    """The property's readers are not blind: a known output reads as what it is on every API."""
    finals = _finals("qwen", ["Sure.", " " + _hermes("Paris")[:9], _hermes("Paris")[9:]])
    assert all(final[1:] == ([("get_weather", {"city": "Paris"})], "tool_calls")
               and final[0].strip() == "Sure." for final in finals.values()), finals
    finals = _finals("gemma", ["Hello wor", "ld", STOP[:2], STOP[2:], " never"])
    assert all(final == ("Hello world", [], "stop") for final in finals.values()), finals

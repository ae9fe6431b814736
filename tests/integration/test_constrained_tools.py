"""Tool calls constrained by a grammar, on real MLX: the tiny random-weight checkpoints cannot
write a valid call on their own, so every valid call here is the grammar's doing.

NOTE (grammar-core branch): the Gemma cases need the real domain/gemma_grammar.py, written on
another branch; with this branch's placeholder (no Gemma grammar) they fail until the merge.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon.testing
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_server.adapters.mlx import engine as engine_module
from mlx_server.adapters.mlx.engine import MlxEngine
from mlx_server.adapters.store.catalog import StaticCatalog
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from mlx_server.domain.families import GEMMA3, GENERIC, QWEN3_VL
from mlx_server.domain.models import ModelRef
from tests.support.http import ConnectedTestClient

pytestmark = pytest.mark.slow

EXAMPLES = 40  # per family and test: the file runs in well under two minutes on 2 CPU cores
MAX_TOKENS = 160
TALLY: Counter[str] = Counter()  # "family valid" / "family total": quoted by the closing test
ASK = [{"role": "user", "content": "Call a tool."}]
QWEN_OPENER_ID = 591  # <tool_call> in the tiny Qwen tokenizer (tests/support/tiny_models.py)


@pytest.fixture(scope="module", autouse=True)
def tally() -> Iterator[None]:
    """After the module, the valid / total counts of the properties below (each example asserts
    its own call valid; run with -s to see them)."""
    yield
    counts = {family: f"{TALLY[family + ' valid']}/{TALLY[family + ' total']}"
              for family in ("qwen", "gemma", "qwen auto") if TALLY[family + " total"]}
    if counts:  # past pytest's capture: the counts the closing note quotes
        print(f"\nconstrained tool calls, valid/total: {counts}", file=sys.__stdout__)


@pytest.fixture(scope="module")
def client(tiny_gemma3: Path, tiny_qwen3_vl: Path, smollm_dir: Path) -> Iterator[Any]:
    catalog = StaticCatalog({
        "qwen": ModelRef("tiny-qwen3-vl", str(tiny_qwen3_vl), QWEN3_VL.name, 4096, vision=True),
        "gemma": ModelRef("tiny-gemma3", str(tiny_gemma3), GEMMA3.name, 4096, vision=True),
        "smollm": ModelRef("smollm", str(smollm_dir), GENERIC.name, 8192),
    })
    yield ConnectedTestClient(build(Settings(), engine=MlxEngine(), catalog=catalog))


# ----------------------------------------------------------------------------- schemas

_NAMES = st.sampled_from(["city", "days", "unit", "tags", "when", "flag", "n", "mode", "opts"])
# NOTE: integers and strings are bounded: a random-weight model never stops writing digits or
# characters on its own; the grammar makes a call valid, it cannot make the model end it
_SCALARS = st.one_of(
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-20, 20), st.integers(0, 500)),
    st.just({"type": "boolean"}),
    st.lists(st.sampled_from(["c", "f", "k", "auto", "x y"]), min_size=1, max_size=4,
             unique=True).map(lambda values: {"enum": values}),
    st.integers(1, 6).map(lambda most: {"type": "string", "maxLength": most}),
)


def _objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build_object(draw: st.DrawFn) -> dict[str, Any]:
        names = draw(st.lists(_NAMES, min_size=1, max_size=3, unique=True))
        properties = {name: draw(children) for name in names}
        required = [name for name in names if draw(st.booleans())]
        return {"type": "object", "properties": properties, "required": required,
                "additionalProperties": False}
    return build_object()


_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.builds(lambda items, most: {"type": "array", "items": items, "maxItems": most},
                  inner, st.integers(1, 3)),
        _objects(inner)),
    max_leaves=4)
_TOOLS = st.lists(_objects(_VALUES), min_size=1, max_size=3).map(
    lambda schemas: [{"type": "function", "function": {
        "name": f"tool_{i}", "description": "A tool.", "parameters": schema}}
        for i, schema in enumerate(schemas)])


# ----------------------------------------------------------------------------- helpers


def _post(client: falcon.testing.TestClient, model: str, **body: Any) -> falcon.testing.Result:
    return client.simulate_post("/v1/chat/completions", json={
        "model": model, "messages": ASK, "temperature": 1.0, "max_tokens": MAX_TOKENS, **body})


def _answer(result: falcon.testing.Result, stream: bool) -> tuple[str | None, list[Any], str]:
    """(content, calls as (name, arguments), finish_reason), streamed or not."""
    assert result.status_code == 200, result.text
    if not stream:
        choice = result.json["choices"][0]
        calls = [(c["function"]["name"], c["function"]["arguments"])
                 for c in choice["message"].get("tool_calls") or []]
        return choice["message"]["content"], calls, choice["finish_reason"]
    chunks = [json.loads(line[6:]) for line in result.text.split("\n\n")
              if line.startswith("data: {")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for delta in (chunk["choices"][0]["delta"].get("tool_calls") or []) if chunk["choices"] else []:
            function = delta.get("function", {})
            if "name" in function:
                names[delta["index"]] = function["name"]
            arguments[delta["index"]] = arguments.get(delta["index"], "") + function.get(
                "arguments", "")
    reason = next(c["choices"][0]["finish_reason"] for c in reversed(chunks)
                  if c["choices"] and c["choices"][0]["finish_reason"])
    return text or None, [(names[i], arguments[i]) for i in sorted(names)], reason


def _valid(calls: list[Any], tools: list[dict[str, Any]], allowed: set[str]) -> bool:
    schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in tools}
    for name, arguments in calls:
        if name not in allowed:
            return False
        try:
            jsonschema.validate(json.loads(arguments), schemas[name])
        except (ValueError, jsonschema.ValidationError):
            return False
    return bool(calls)


# ----------------------------------------------------------------------------- forced calls


@pytest.mark.parametrize("family", ["qwen", "gemma"])
@settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck), derandomize=True)
@given(tools=_TOOLS, named=st.booleans(), stream=st.booleans(), seed=st.integers(0, 2**16),
       parallel=st.booleans())
def test_required_and_named_choice_always_give_a_schema_valid_call(
        client: falcon.testing.TestClient, family: str, tools: list[dict[str, Any]],
        named: bool, stream: bool, seed: int, parallel: bool) -> None:
    names = [tool["function"]["name"] for tool in tools]
    choice: Any = {"type": "function", "function": {"name": names[-1]}} if named else "required"
    result = _post(client, family, tools=tools, tool_choice=choice, seed=seed, stream=stream,
                   parallel_tool_calls=parallel)
    content, calls, reason = _answer(result, stream)
    TALLY[f"{family} total"] += 1
    valid = reason == "tool_calls" and _valid(calls, tools, {names[-1]} if named else set(names))
    TALLY[f"{family} valid"] += valid
    assert valid, (calls, reason, content, tools)
    assert parallel or len(calls) == 1


# ----------------------------------------------------------------------------- auto (lazy)

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["city"], "additionalProperties": False}}}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_auto_leaves_the_text_before_the_call_alone_and_constrains_the_call(
        client: falcon.testing.TestClient, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    """The opener is made likely by a logit bias, never certain: the text up to it is what the
    model writes unconstrained (the same seed with the processor switched off), and the call
    that follows is valid."""
    body = {"tools": [WEATHER], "seed": seed, "parallel_tool_calls": False,
            "logit_bias": {str(QWEN_OPENER_ID): 7}}
    constrained = _post(client, "qwen", **body)
    content, calls, reason = _answer(constrained, False)
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "tool_call_processor", lambda *_: None)
        free = _post(client, "qwen", max_tokens=MAX_TOKENS, **body).json["choices"][0]["message"]
    TALLY["qwen auto total"] += 1
    assert reason == "tool_calls" and _valid(calls, [WEATHER], {"get_weather"}), (content, calls)
    TALLY["qwen auto valid"] += 1
    before, text = content or "", free["content"] or ""
    assert text.startswith(before) and text[len(before):].lstrip().startswith("<tool_call>")


def test_auto_streams_the_same_answer(client: falcon.testing.TestClient) -> None:
    body = {"tools": [WEATHER], "seed": 5, "parallel_tool_calls": False,
            "logit_bias": {str(QWEN_OPENER_ID): 7}}
    whole = _answer(_post(client, "qwen", **body), False)
    streamed = _answer(_post(client, "qwen", stream=True, **body), True)
    assert whole[2] == "tool_calls" and _valid(whole[1], [WEATHER], {"get_weather"})
    assert streamed == whole


def test_parallel_auto_constrains_every_block(client: falcon.testing.TestClient) -> None:
    """A strong bias: the model opens a call whenever it is free to; every closed block is a
    valid call (what max_tokens cuts is an unclosed block, content as always)."""
    body = {"tools": [WEATHER], "seed": 7, "max_tokens": 100,
            "logit_bias": {str(QWEN_OPENER_ID): 30}}
    content, calls, reason = _answer(_post(client, "qwen", **body), False)
    assert reason == "tool_calls" and len(calls) >= 2, (content, calls)
    assert _valid(calls, [WEATHER], {"get_weather"})
    assert content is None or (content.startswith("<tool_call>") and "</tool_call>" not in content)


# ----------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("family", ["qwen", "gemma"])
@pytest.mark.parametrize("keyword", [{"uniqueItems": True}, {"not": {"maxItems": 0}}])
def test_a_schema_the_grammar_cannot_enforce_is_served_as_before(
        client: falcon.testing.TestClient, family: str, keyword: dict[str, Any]) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", **keyword}}}}}
    result = _post(client, family, tools=[tool], tool_choice="required", max_tokens=8, seed=1)
    assert result.status_code == 200 and result.json["choices"][0]["finish_reason"] in (
        "length", "stop", "tool_calls")


def test_a_schema_llguidance_refuses_at_compile_time_is_served_unconstrained(
        client: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"when": {"type": "string", "format": "no-such"}}}}}
    with caplog.at_level(logging.WARNING):
        result = _post(client, "qwen", tools=[tool], tool_choice="required", max_tokens=8)
    assert result.status_code == 200
    assert "grammar cannot be used" in caplog.text


def test_response_format_wins_over_the_tool_grammar(client: falcon.testing.TestClient) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"],
              "additionalProperties": False}
    result = _post(client, "qwen", tools=[WEATHER], seed=3, max_tokens=30,
                   response_format={"type": "json_schema",
                                    "json_schema": {"name": "r", "schema": schema}})
    message = result.json["choices"][0]["message"]
    assert result.status_code == 200 and not message.get("tool_calls")
    jsonschema.validate(json.loads(message["content"]), schema)


def test_smollm_still_refuses_tools(client: falcon.testing.TestClient) -> None:
    result = _post(client, "smollm", tools=[WEATHER], tool_choice="required")
    assert result.status_code == 400 and result.json["error"]["param"] == "tools"
    assert "no tool-calling format" in result.json["error"]["message"]


# ----------------------------------------------------------------------------- the tally


# ----------------------------------------------------------------------------- other APIs

BOOKING = {"type": "object", "properties": {
    "city": {"enum": ["Paris", "Rome", "Oslo"]}, "nights": {"type": "integer", "minimum": 1,
                                                            "maximum": 14},
    "guests": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
    "late": {"type": "boolean"}}, "required": ["city", "nights"], "additionalProperties": False}


@pytest.mark.parametrize("family", ["qwen", "gemma"])
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_messages_and_responses_forced_choices_are_constrained_too(
        client: falcon.testing.TestClient, family: str, attempt: int) -> None:
    """Anthropic's `any` / `tool` and the Responses API's `required` / named function reach the
    same plan: the random-weight models write valid calls there as on chat. Neither API takes a
    seed: each attempt samples afresh (temperature 1), and every call must be valid."""
    for choice in ({"type": "any"}, {"type": "tool", "name": "book"}):
        result = client.simulate_post("/v1/messages", json={
            "model": family, "max_tokens": MAX_TOKENS, "messages": ASK, "temperature": 1.0,
            "tools": [{"name": "book", "input_schema": BOOKING},
                      # no arguments: a free-form object is one a random model never ends
                      {"name": "ping", "input_schema": {"type": "object", "properties": {},
                                                        "additionalProperties": False}}],
            "tool_choice": choice})
        assert result.status_code == 200, result.text
        uses = [block for block in result.json["content"] if block["type"] == "tool_use"]
        assert result.json["stop_reason"] == "tool_use" and uses, result.json
        for use in uses:
            assert use["name"] in ("book", "ping")
            if use["name"] == "book":
                jsonschema.validate(use["input"], BOOKING)
        assert choice["type"] == "any" or {u["name"] for u in uses} == {"book"}
    for tool_choice in ("required", {"type": "function", "name": "book"}):
        result = client.simulate_post("/v1/responses", json={
            "model": family, "input": "Book it.", "max_output_tokens": MAX_TOKENS,
            "temperature": 1.0, "store": False, "tool_choice": tool_choice,
            "tools": [{"type": "function", "name": "book", "parameters": BOOKING}]})
        assert result.status_code == 200, result.text
        calls = [item for item in result.json["output"] if item["type"] == "function_call"]
        assert calls, result.json
        for call in calls:
            assert call["name"] == "book"
            jsonschema.validate(json.loads(call["arguments"]), BOOKING)

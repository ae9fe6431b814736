"""Every property of the request schema in openapi.yaml is in the README's parameter table, and
behaves as the table says: honoured (accepted), metadata (accepted, output unchanged), refused
(400 unsupported_parameter naming it). The behaviour of each honoured one on real MLX is in
tests/integration/test_parameters.py and the tool/vision tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
import yaml

from mlx_server.adapters.fake_engine import FakeEngine
from mlx_server.app.bootstrap import build
from mlx_server.app.config import Settings
from tests.support.http import ConnectedTestClient

ROOT = Path(__file__).parents[2]
SCHEMAS = yaml.safe_load((ROOT / "openapi.yaml").read_text())["components"]["schemas"]
PROPERTIES = SCHEMAS["CreateChatCompletionRequest"]["properties"]
README = (ROOT / "README.md").read_text()


def fates(heading: str) -> dict[str, str]:
    """The fate table of the README section under `heading` (up to the next heading)."""
    section = README.split(f"\n{heading}\n", 1)[1]
    section = re.split(r"^#{2,3} ", section, maxsplit=1, flags=re.M)[0]
    return {name: fate for name, fate in re.findall(
        r"^\| `([a-z_]+)` \| (honoured|metadata|refused) \|", section, re.M)}


FATES = fates("### Request parameters")
BASE: dict[str, Any] = {"model": "gemma", "messages": [{"role": "user", "content": "hi there"}]}
ACCEPTED: dict[str, Any] = {  # a meaningful value for every honoured or metadata field
    "model": "qwen", "messages": BASE["messages"], "stream": False,
    "stream_options": {"include_usage": True}, "max_completion_tokens": 5, "max_tokens": 5,
    "stop": ["zzz"], "temperature": 0.5, "top_p": 0.9, "seed": 3, "n": 1, "logprobs": True,
    "top_logprobs": 2, "presence_penalty": 0.5, "frequency_penalty": 0.5,
    "logit_bias": {"42": 5}, "response_format": {"type": "json_object"},
    "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto",
    "parallel_tool_calls": False, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1,
    "user": "u-1", "metadata": {"k": "v"}, "store": False, "prompt_cache_key": "conv-1",
    "safety_identifier": "s-1", "reasoning_effort": "none",
    "chat_template_kwargs": {"enable_thinking": False},
    # SGLang's, which sglang-router adds (README "Fleet")
    "ignore_eos": True, "no_stop_trim": True, "continue_final_message": True}
REFUSED: dict[str, Any] = {
    "skip_special_tokens": False, "separate_reasoning": False, "stream_reasoning": False,
    "return_hidden_states": True,
    "service_tier": "flex", "modalities": ["text", "audio"], "audio": {"voice": "alloy"},
    "prediction": {"type": "content", "content": "x"},
    "verbosity": "low", "web_search_options": {}, "functions": [{"name": "f"}],
    "function_call": "auto", "prompt_cache_retention": "24h", "moderation": {}}


@pytest.fixture
def client() -> falcon.testing.TestClient:
    return ConnectedTestClient(build(Settings(engine="fake"), engine=FakeEngine()))


def test_every_property_has_a_fate_in_the_readme() -> None:
    assert sorted(FATES) == sorted(PROPERTIES)
    assert sorted(ACCEPTED) == sorted(n for n, fate in FATES.items() if fate != "refused")
    assert sorted(REFUSED) == sorted(n for n, fate in FATES.items() if fate == "refused")


@pytest.mark.parametrize("name", sorted(n for n, fate in FATES.items() if fate != "refused"))
def test_honoured_and_metadata_fields_are_accepted(client: falcon.testing.TestClient,
                                                   name: str) -> None:
    body = {**BASE, name: ACCEPTED[name]}
    if name == "top_logprobs":
        body["logprobs"] = True
    if name == "stream_options":
        body["stream"] = True
    if name == "tool_choice":
        body["tools"] = ACCEPTED["tools"]
    if name == "ignore_eos":
        body["max_tokens"] = 8
    if name == "continue_final_message":
        body["messages"] = [*BASE["messages"], {"role": "assistant", "content": "Well,"}]
    result = client.simulate_post("/v1/chat/completions", json=body)
    assert result.status_code == 200, result.text
    if FATES[name] == "metadata":
        plain = client.simulate_post("/v1/chat/completions", json=BASE).json
        assert result.json["choices"] == plain["choices"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_fields_are_400_naming_them(client: falcon.testing.TestClient, name: str) -> None:
    result = client.simulate_post("/v1/chat/completions", json={**BASE, name: REFUSED[name]})
    assert result.status_code == 400
    assert (result.json["error"]["code"], result.json["error"]["param"]) == (
        "unsupported_parameter", name)


# -- the legacy completions API (POST /v1/completions) -------------------------------------------

COMPLETION_PROPERTIES = SCHEMAS["CreateCompletionRequest"]["properties"]
COMPLETION_FATES = fates("### Legacy completions")
COMPLETION_BASE: dict[str, Any] = {"model": "gemma", "prompt": "Once upon a time"}
COMPLETION_ACCEPTED: dict[str, Any] = {
    "model": "qwen", "prompt": ["Once upon a time"], "max_tokens": 5, "stop": ["zzz"],
    "stream": False, "stream_options": {"include_usage": True}, "temperature": 0.5, "top_p": 0.9,
    "seed": 3, "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"42": 5},
    "logprobs": 2, "echo": True, "n": 1, "best_of": 1, "top_k": 5, "min_p": 0.1,
    "repetition_penalty": 1.1, "user": "u-1", "ignore_eos": True, "no_stop_trim": True}
COMPLETION_REFUSED: dict[str, Any] = {"suffix": "}\n", "skip_special_tokens": False,
                                      "return_hidden_states": True}


def test_every_completions_property_has_a_fate_in_the_readme() -> None:
    assert sorted(COMPLETION_FATES) == sorted(COMPLETION_PROPERTIES)
    assert sorted(COMPLETION_ACCEPTED) == sorted(
        n for n, fate in COMPLETION_FATES.items() if fate != "refused")
    assert sorted(COMPLETION_REFUSED) == sorted(
        n for n, fate in COMPLETION_FATES.items() if fate == "refused")


@pytest.mark.parametrize("name", sorted(n for n, f in COMPLETION_FATES.items() if f != "refused"))
def test_completions_honoured_and_metadata_fields_are_accepted(
        client: falcon.testing.TestClient, name: str) -> None:
    body = {**COMPLETION_BASE, name: COMPLETION_ACCEPTED[name]}
    if name == "stream_options":
        body["stream"] = True
    result = client.simulate_post("/v1/completions", json=body)
    assert result.status_code == 200, result.text
    if COMPLETION_FATES[name] == "metadata":
        plain = client.simulate_post("/v1/completions", json=COMPLETION_BASE).json
        assert result.json["choices"] == plain["choices"]


@pytest.mark.parametrize("name", sorted(COMPLETION_REFUSED))
def test_completions_refused_fields_are_400_naming_them(client: falcon.testing.TestClient,
                                                        name: str) -> None:
    result = client.simulate_post("/v1/completions",
                                  json={**COMPLETION_BASE, name: COMPLETION_REFUSED[name]})
    assert result.status_code == 400
    assert (result.json["error"]["code"], result.json["error"]["param"]) == (
        "unsupported_parameter", name)


# -- Anthropic's Messages API (/v1/messages) ------------------------------------------------------

MESSAGE_PROPERTIES = SCHEMAS["CreateMessageRequest"]["properties"]
MESSAGE_FATES = fates("### Anthropic Messages")
MESSAGE_BASE: dict[str, Any] = {"model": "gemma", "max_tokens": 16,
                                "messages": [{"role": "user", "content": "hi there"}]}
MESSAGE_ACCEPTED: dict[str, Any] = {
    "model": "qwen", "messages": MESSAGE_BASE["messages"], "max_tokens": 5,
    "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["zzz"],
    "stream": False, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
    "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "auto"},
    "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}},
                      "effort": "medium"},  # effort: accepted, no effect (README)
    "metadata": {"user_id": "u-1"}, "cache_control": {"type": "ephemeral"},
    # Claude Code's default; on a model without a thinking mode it just answers
    "service_tier": "standard_only", "thinking": {"type": "adaptive", "display": "omitted"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}}
MESSAGE_REFUSED: dict[str, Any] = {
    "speed": "fast",
    "container": "c-1", "inference_geo": "us", "diagnostics": {}, "mcp_servers": [{"name": "x"}]}


def test_every_messages_property_has_a_fate_in_the_readme() -> None:
    assert sorted(MESSAGE_FATES) == sorted(MESSAGE_PROPERTIES)
    assert sorted(MESSAGE_ACCEPTED) == sorted(
        n for n, fate in MESSAGE_FATES.items() if fate != "refused")
    assert sorted(MESSAGE_REFUSED) == sorted(
        n for n, fate in MESSAGE_FATES.items() if fate == "refused")


def test_messages_effort_is_documented_as_accepted_without_effect() -> None:
    """`output_config.effort` has no fate row of its own (its parent is honoured for `format`):
    the row, and the schema, say what it does."""
    [row] = [line for line in README.split("\n") if line.startswith("| `output_config` |")
             and "effort" in line]
    assert "no effect" in row and all(f"`{value}`" in row or value in row
                                      for value in ("low", "medium", "high", "xhigh", "max"))
    effort = SCHEMAS["OutputConfig"]["properties"]["effort"]
    assert effort["anyOf"][0]["enum"] == ["low", "medium", "high", "xhigh", "max"]
    assert "no effect" in effort["description"]


@pytest.mark.parametrize("name", sorted(n for n, f in MESSAGE_FATES.items() if f != "refused"))
def test_messages_honoured_and_metadata_fields_are_accepted(client: falcon.testing.TestClient,
                                                            name: str) -> None:
    body = {**MESSAGE_BASE, name: MESSAGE_ACCEPTED[name]}
    if name == "tool_choice":
        body["tools"] = MESSAGE_ACCEPTED["tools"]
    result = client.simulate_post("/v1/messages", json=body)
    assert result.status_code == 200, result.text
    if MESSAGE_FATES[name] == "metadata":
        plain = client.simulate_post("/v1/messages", json=MESSAGE_BASE).json
        assert result.json["content"] == plain["content"]


@pytest.mark.parametrize("name", sorted(MESSAGE_REFUSED))
def test_messages_refused_fields_are_400_naming_them(client: falcon.testing.TestClient,
                                                     name: str) -> None:
    result = client.simulate_post("/v1/messages", json={**MESSAGE_BASE, name: MESSAGE_REFUSED[name]})
    assert result.status_code == 400
    assert result.json["error"]["type"] == "invalid_request_error"
    assert f"'{name}'" in result.json["error"]["message"]


# -- OpenAI's Responses API (/v1/responses) -------------------------------------------------------

RESPONSE_PROPERTIES = SCHEMAS["CreateResponseRequest"]["properties"]
RESPONSE_FATES = fates("### OpenAI Responses")
RESPONSE_BASE: dict[str, Any] = {"model": "gemma", "input": "hi there", "max_output_tokens": 16}
RESPONSE_ACCEPTED: dict[str, Any] = {
    "model": "qwen", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
    "instructions": "Be brief.", "previous_response_id": None, "max_output_tokens": 5,
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "auto", "parallel_tool_calls": False,
    "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}},
    "temperature": 0.5, "top_p": 0.9, "stream": False, "store": False,
    "metadata": {"k": "v"}, "user": "u-1", "safety_identifier": "s-1", "prompt_cache_key": "c-1",
    "max_tool_calls": 3, "include": ["reasoning.encrypted_content"], "service_tier": "auto",
    # a model without reasoning may be told not to reason (effort on is refused for it: see
    # tests/integration/test_responses_thinking.py)
    "reasoning": {"effort": "none", "summary": "auto"},
    "top_k": -1, "min_p": 0.1, "repetition_penalty": 1.1}  # sglang-router sends these
RESPONSE_REFUSED: dict[str, Any] = {"priority": 1,
    "background": True, "truncation": "auto",
    "top_logprobs": 2, "stream_options": {"include_obfuscation": True},
    "conversation": "conv_1", "prompt": {"id": "pmpt_1"}, "context_management": [{"type": "x"}],
    "moderation": {"model": "m"}, "prompt_cache_retention": "24h"}


def test_every_responses_property_has_a_fate_in_the_readme() -> None:
    assert sorted(RESPONSE_FATES) == sorted(RESPONSE_PROPERTIES)
    assert sorted(RESPONSE_ACCEPTED) == sorted(
        n for n, fate in RESPONSE_FATES.items() if fate != "refused")
    assert sorted(RESPONSE_REFUSED) == sorted(
        n for n, fate in RESPONSE_FATES.items() if fate == "refused")


def output_texts(body: dict[str, Any]) -> list[Any]:
    """The output without its ids (they count up from request to request)."""
    return [item.get("content") or item.get("arguments") for item in body["output"]]


@pytest.mark.parametrize("name", sorted(n for n, f in RESPONSE_FATES.items() if f != "refused"))
def test_responses_honoured_and_metadata_fields_are_accepted(client: falcon.testing.TestClient,
                                                             name: str) -> None:
    body = {**RESPONSE_BASE, name: RESPONSE_ACCEPTED[name]}
    if name == "previous_response_id":  # a stored one
        body[name] = client.simulate_post("/v1/responses", json=RESPONSE_BASE).json["id"]
    result = client.simulate_post("/v1/responses", json=body)
    assert result.status_code == 200, result.text
    if RESPONSE_FATES[name] == "metadata":
        plain = client.simulate_post("/v1/responses", json=RESPONSE_BASE).json
        assert output_texts(result.json) == output_texts(plain)


@pytest.mark.parametrize("name", sorted(RESPONSE_REFUSED))
def test_responses_refused_fields_are_400_naming_them(client: falcon.testing.TestClient,
                                                      name: str) -> None:
    result = client.simulate_post("/v1/responses",
                                  json={**RESPONSE_BASE, name: RESPONSE_REFUSED[name]})
    assert result.status_code == 400
    assert result.json["error"]["code"] == "unsupported_parameter"
    assert result.json["error"]["param"].split(".")[0] == name

"""Model families: one profile per family, chosen from the config's model_type, and what the
profile decides for a request's tools (tool_plan)."""

from __future__ import annotations

import pytest

from mlx_server.domain.conversation import (
    ChatRequest,
    Message,
    Role,
    TextPart,
    ToolChoice,
    ToolChoiceMode,
    ToolSpec,
)
from mlx_server.domain.errors import InvalidRequest
from mlx_server.domain.families import (
    GEMMA3,
    GENERIC,
    PROFILES,
    QWEN3,
    QWEN3_VL,
    Profile,
    profile_for_model_type,
    profile_named,
    tool_families,
)
from mlx_server.domain.models import ModelRef
from mlx_server.domain.tool_calls import GemmaToolCalls, HermesToolCalls
from mlx_server.domain.tool_plan import plan_tools

WEATHER = ToolSpec("get_weather", "Weather for a city.", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
ASK = (Message(Role.USER, (TextPart("Weather in Paris?"),)),)


AUTO = ToolChoice()


def request(choice: ToolChoice = AUTO, tools: tuple[ToolSpec, ...] = (WEATHER,)) -> ChatRequest:
    return ChatRequest("m", ASK, tools=tools, tool_choice=choice)


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_model_type_a_profile_claims_maps_back_to_it(profile: Profile) -> None:
    for model_type in profile.model_types:
        assert profile_for_model_type(model_type) is profile
    assert profile_named(profile.name) is profile


def test_names_and_model_types_are_claimed_once() -> None:
    names = [profile.name for profile in PROFILES]
    claimed = [model_type for profile in PROFILES for model_type in profile.model_types]
    assert len(set(names)) == len(names) and len(set(claimed)) == len(claimed)


@pytest.mark.parametrize("model_type", ["llama", "gemma3_text", "qwen2", "", "QWEN3"])
def test_an_unknown_model_type_is_generic(model_type: str) -> None:
    assert profile_for_model_type(model_type) is GENERIC
    assert profile_named("no-such-family") is GENERIC


def test_the_built_in_families() -> None:
    assert profile_for_model_type("gemma3") is GEMMA3 and isinstance(GEMMA3.tool_format, GemmaToolCalls)
    assert profile_for_model_type("qwen3_vl") is QWEN3_VL
    assert profile_for_model_type("qwen3") is QWEN3 and isinstance(QWEN3.tool_format, HermesToolCalls)
    assert GENERIC.tool_format is None and GENERIC.model_types == ()
    assert [p.default_context for p in (GEMMA3, QWEN3_VL, QWEN3, GENERIC)] == [131072, 262144, 40960, 8192]
    assert QWEN3.thinking == ("<think>", "</think>") and GEMMA3.thinking is None
    assert tool_families() == (GEMMA3, QWEN3_VL, QWEN3)


def test_a_model_ref_defaults_to_the_generic_profile() -> None:
    ref = ModelRef("m", "/m")
    assert (ref.family, ref.context_length, ref.settled) == ("generic", GENERIC.default_context, True)


def test_qwen3_template_renders_the_tools_itself() -> None:
    plan = plan_tools(request(), ModelRef("q", "/q", QWEN3.name))
    assert isinstance(plan.format, HermesToolCalls)
    assert (plan.messages, plan.template_tools, plan.stops, plan.prefix) == (ASK, (WEATHER,), (), "")


@pytest.mark.parametrize(("choice", "parameters", "prefix"), [
    (ToolChoice(ToolChoiceMode.REQUIRED), WEATHER.parameters, "<tool_call>\n"),
    # a grammar writes the named call from the opener on; without one the call start is forced
    (ToolChoice(ToolChoiceMode.FUNCTION, "get_weather"), WEATHER.parameters, "<tool_call>\n"),
    (ToolChoice(ToolChoiceMode.FUNCTION, "get_weather"),
     {**WEATHER.parameters, "not": {"required": ["x"]}},
     '<tool_call>\n{"name": "get_weather", "arguments": '),
])
def test_qwen3_forced_choice_starts_a_parseable_call(
        choice: ToolChoice, parameters: dict[str, object], prefix: str) -> None:
    tool = ToolSpec(WEATHER.name, WEATHER.description, parameters)
    plan = plan_tools(request(choice, (tool,)), ModelRef("q", "/q", QWEN3.name))
    assert plan.prefix == prefix and plan.format is not None
    assert (plan.grammar is None) == ("not" in parameters)
    rest = '{"city": "Paris"}}\n</tool_call>'
    if not plan.prefix.endswith('"arguments": '):
        rest = '{"name": "get_weather", "arguments": ' + rest
    reply = plan.format.parse(plan.prefix + rest, plan.tools, lambda: "call_0")
    assert [(call.name, call.arguments) for call in reply.calls] == [
        ("get_weather", '{"city": "Paris"}')]


def test_gemma_prompt_carries_the_tools_and_stops_on_invented_results() -> None:
    plan = plan_tools(request(), ModelRef("g", "/g", GEMMA3.name))
    assert plan.template_tools == () and plan.stops == ("```tool_output",)
    assert "def get_weather(city: str) -> dict:" in plan.messages[0].text
    assert plan_tools(request(tools=()), ModelRef("g", "/g", GEMMA3.name)).stops == ()


def test_a_family_without_a_tool_format_refuses_tools_naming_those_with_one() -> None:
    with pytest.raises(InvalidRequest, match="choose a Gemma 3, Qwen3-VL or Qwen3 model"):
        plan_tools(request(), ModelRef("s", "/s"))
    plan = plan_tools(request(ToolChoice(ToolChoiceMode.NONE)), ModelRef("s", "/s"))
    assert (plan.format, plan.tools, plan.template_tools) == (None, (), ())

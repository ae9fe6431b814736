"""Gemma 3 tool conversations: instructions in the system turn, calls and results as text blocks,
roles alternating so that the model's real chat template accepts them."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from mlx_server.domain.conversation import ImagePart, Message, Role, TextPart, ToolCall, ToolSpec
from mlx_server.domain.families.gemma3 import gemma_tool_messages, tool_instructions, tool_signature
from mlx_server.domain.tool_gemma import GemmaToolCalls

TEMPLATE = Path(__file__).parents[1] / "support" / "templates" / "gemma3_chat_template.jinja"
WEATHER = ToolSpec("get_weather", "Get the current weather for a city.", {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                            "description": "Temperature unit", "default": "celsius"},
                   "days": {"type": ["integer", "null"]},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["city"]})
CALL = ToolCall("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}')


def text(role: Role, value: str, **fields: object) -> Message:
    return Message(role, (TextPart(value),), **fields)  # type: ignore[arg-type]


def render(messages: tuple[Message, ...]) -> str:
    """Gemma 3's real template, fed the way the MLX adapter feeds it (role, text content)."""
    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    entries = [{"role": m.role.value, "content": m.text} for m in messages]
    return template.render(messages=entries, bos_token="<bos>", add_generation_prompt=True)


LOOP = (text(Role.SYSTEM, "Be brief."),
        text(Role.USER, "Weather in Paris?"),
        Message(Role.ASSISTANT, (), tool_calls=(CALL,)),
        text(Role.TOOL, '{"temperature": 21}', tool_call_id="call_1"),
        text(Role.ASSISTANT, "21 °C and sunny."),
        text(Role.USER, "And tomorrow?"))


def test_tool_loop_alternates_and_carries_the_blocks() -> None:
    rewritten = gemma_tool_messages(LOOP, [WEATHER])
    assert [m.role for m in rewritten] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER,
                                           Role.ASSISTANT, Role.USER]
    assert rewritten[0].text.startswith("Be brief.\n\nYou have access to the following functions:")
    assert rewritten[2].text == "```tool_code\nget_weather(city='Paris', unit='celsius')\n```"
    assert GemmaToolCalls().parse(rewritten[2].text, [WEATHER], lambda: "call_1").calls == (CALL,)
    assert rewritten[3].text == '```tool_output\n{"temperature": 21}\n```'
    prompt = render(rewritten)
    assert prompt.startswith("<bos><start_of_turn>user\nBe brief.\n\nYou have access")
    assert "<start_of_turn>model\n```tool_code\nget_weather(city='Paris'" in prompt
    assert '<start_of_turn>user\n```tool_output\n{"temperature": 21}\n```<end_of_turn>' in prompt
    assert prompt.endswith("And tomorrow?<end_of_turn>\n<start_of_turn>model\n")


def test_the_unrewritten_loop_is_what_the_template_refuses() -> None:
    with pytest.raises(jinja2.TemplateError, match="alternate"):
        render(LOOP)


def test_parallel_calls_and_results_merge_into_one_turn_each() -> None:
    second = ToolCall("call_2", "get_weather", '{"city": "Rome"}')
    rewritten = gemma_tool_messages((
        text(Role.USER, "Paris and Rome?"),
        Message(Role.ASSISTANT, (TextPart("Checking both."),), tool_calls=(CALL, second)),
        text(Role.TOOL, "21", tool_call_id="call_1"),
        text(Role.TOOL, "18", tool_call_id="call_2"),
        text(Role.USER, "Thanks"),
    ), [])
    assert [m.role for m in rewritten] == [Role.USER, Role.ASSISTANT, Role.USER]
    assert rewritten[1].text == ("Checking both.\n```tool_code\nget_weather(city='Paris', "
                                 "unit='celsius')\nget_weather(city='Rome')\n```")
    assert rewritten[2].text == "```tool_output\n21\n```\n\n```tool_output\n18\n```\n\nThanks"
    render(rewritten)


def test_text_and_images_keep_their_order_when_turns_merge() -> None:
    image = ImagePart("data:image/png;base64,AAAA")
    rewritten = gemma_tool_messages((
        Message(Role.USER, (TextPart("Look "), TextPart("here:"), image, TextPart("ok?"))),
        text(Role.USER, "Where is it?"),
    ), [WEATHER])
    assert rewritten[1].content == (TextPart("Look here:"), image, TextPart("ok?\n\nWhere is it?"))


def test_conversations_without_tools_are_left_alone() -> None:
    plain = (text(Role.SYSTEM, "s"), text(Role.USER, "hi"), text(Role.USER, "again"))
    assert gemma_tool_messages(plain, []) == plain


def test_instructions_without_a_system_message_open_the_conversation() -> None:
    rewritten = gemma_tool_messages((text(Role.ASSISTANT, "Hello!"), text(Role.USER, "hi")), [WEATHER])
    assert [m.role for m in rewritten] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER]
    assert rewritten[0].text == tool_instructions([WEATHER])
    assert "```tool_code\nget_weather(...)\n```" in rewritten[0].text
    render(rewritten)


def test_signature_from_schema_with_descriptions_enums_and_optional_params() -> None:
    assert tool_signature(WEATHER) == (
        "def get_weather(city: str, unit: Literal['celsius', 'fahrenheit'] = 'celsius', "
        "days: int | None = ..., tags: list[str] = ...) -> dict:\n"
        '    """Get the current weather for a city.\n'
        "\n"
        "    Args:\n"
        "        city: City name\n"
        "        unit: Temperature unit\n"
        '    """')


def test_signature_goes_keyword_only_when_an_optional_param_comes_first() -> None:
    tool = ToolSpec("send-mail", "", {"type": "object", "required": ["to"],
                                      "properties": {"cc": {"type": "string"}, "to": {}}})
    assert tool_signature(tool) == 'def send_mail(*, cc: str = ..., to: Any) -> dict:\n    ...'
    assert tool_signature(ToolSpec("ping")) == 'def ping() -> dict:\n    ...'

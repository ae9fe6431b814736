"""`continuation`: which final message a reply continues (continue_final_message, Anthropic's
prefill) and what it cannot be combined with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_server.domain.conversation import (
    ChatRequest,
    Message,
    ResponseFormat,
    Role,
    SamplingParams,
    TextPart,
    ToolCall,
)
from mlx_server.domain.errors import InvalidRequest
from mlx_server.domain.tool_plan import continuation

USER = Message(Role.USER, (TextPart("hi"),))


def said(role: Role, text: str) -> Message:
    return Message(role, (TextPart(text),))


@given(st.text(max_size=20))
def test_the_final_assistant_text_is_continued_and_left_out(text: str) -> None:
    request = ChatRequest("m", (USER, said(Role.ASSISTANT, text)), continue_final=True)
    assert continuation(request) == ((USER,), text)


def test_without_the_flag_nothing_is_continued() -> None:
    messages = (USER, said(Role.ASSISTANT, "Sure"))
    assert continuation(ChatRequest("m", messages)) == (messages, None)


@pytest.mark.parametrize("final", [USER, Message(Role.ASSISTANT, tool_calls=(ToolCall("c", "f", "{}"),)),
                                   said(Role.TOOL, "42")])
def test_a_final_message_that_is_not_assistant_text_is_refused_naming_the_field(
        final: Message) -> None:
    with pytest.raises(InvalidRequest) as error:
        continuation(ChatRequest("m", (USER, final), continue_final=True))
    assert error.value.param == "continue_final_message"


def test_where_the_rule_is_the_apis_own_it_stays_an_earlier_turn() -> None:
    """Anthropic: a final assistant message of tool_use blocks is no prefill."""
    called = Message(Role.ASSISTANT, tool_calls=(ToolCall("c", "f", "{}"),))
    request = ChatRequest("m", (USER, called), continue_final=True, continue_param=None)
    assert continuation(request) == ((USER, called), None)


def test_a_constrained_reply_cannot_continue() -> None:
    request = ChatRequest("m", (USER, said(Role.ASSISTANT, "{")), continue_final=True,
                          sampling=SamplingParams(response_format=ResponseFormat()))
    with pytest.raises(InvalidRequest) as error:
        continuation(request)
    assert error.value.param == "continue_final_message"

"""Tool-call parsing and streaming for Gemma ```tool_code and Hermes (Qwen) <tool_call> output."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_server.domain.conversation import ToolCall, ToolChoice, ToolChoiceMode, ToolSpec
from mlx_server.domain.tool_calls import (
    ContentPiece,
    GemmaToolCalls,
    HermesToolCalls,
    ParsedReply,
    ToolCallFormat,
    ToolEvent,
    assemble,
)
from mlx_server.domain.tool_schema import fits_schema

WEATHER = ToolSpec("get_weather", "Get the weather.", {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name"},
                   "days": {"type": "integer"},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]})
FREE = ToolSpec("free", "Takes anything.", {})
MAIL = ToolSpec("send-mail", "", {"type": "object"})
TOOLS = (WEATHER, FREE, MAIL)
GEMMA, QWEN = GemmaToolCalls(), HermesToolCalls()
FORMATS = [pytest.param(GEMMA, id="gemma"), pytest.param(QWEN, id="qwen")]
FRAGMENTS = {
    GEMMA: ["```tool_code", "```", "``", "`", "```tool", "\n", " ", "get_weather(", ")", "city=",
            '"Paris"', "print(", "[", "]", "free(1)", "nope()", "send_mail(", "True"],
    QWEN: ["<tool_call>", "</tool_call>", "<tool", "</tool", "<", "\n", " ", "{", "}",
           '"name": ', '"arguments": ', '"get_weather"', '"free"', ", ", '{"city": "Rome"}'],
}


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"call_{next(counter)}"


def stream(fmt: ToolCallFormat, pieces: list[str]) -> ParsedReply:
    streamer, events = fmt.streamer(TOOLS, ids()), list[ToolEvent]()
    for piece in pieces:
        events += streamer.feed(piece)
    events += streamer.finish()
    assert all(not isinstance(event, ContentPiece) or event.text for event in events)
    return assemble(events, streamer.rejected)


def parse(fmt: ToolCallFormat, text: str) -> ParsedReply:
    return fmt.parse(text, TOOLS, ids())


# --- strategies --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
weather_args = st.fixed_dictionaries(
    {"city": st.text(max_size=10)},
    optional={"days": st.integers(-5, 400), "unit": st.sampled_from(["celsius", "fahrenheit"])})
free_args = st.dictionaries(st.text(max_size=6), json_values, max_size=4)
named_args = st.one_of(st.tuples(st.just("get_weather"), weather_args),
                       st.tuples(st.sampled_from(["free", "send-mail"]), free_args))
call_lists = st.lists(named_args, min_size=1, max_size=3).map(
    lambda items: tuple(ToolCall(f"call_{i}", name, json.dumps(args, ensure_ascii=False))
                        for i, (name, args) in enumerate(items)))
noise = st.text(st.sampled_from(" \n\tab<>/`{}()\"=,:_"), max_size=12) | st.text(max_size=8)


@st.composite
def outputs(draw: st.DrawFn, fmt: ToolCallFormat) -> str:
    """Model output: text, valid and broken call blocks, and loose pieces of markup."""
    opener, closer = FRAGMENTS[fmt][:2]
    broken = st.lists(noise | st.sampled_from(FRAGMENTS[fmt][2:]), max_size=4).map(
        lambda body: opener + "".join(body) + closer)
    pieces = st.one_of(noise, st.sampled_from(FRAGMENTS[fmt]), call_lists.map(fmt.render_calls), broken)
    return "".join(draw(st.lists(pieces, max_size=8)))


@st.composite
def splits(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    return [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]


# --- properties ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_split_streams_to_the_whole_text_parse(fmt: ToolCallFormat, data: st.DataObject) -> None:
    text = data.draw(outputs(fmt))
    whole = parse(fmt, text)
    assert stream(fmt, data.draw(splits(text))) == whole
    if not whole.calls:
        assert whole.content == text  # nothing accepted: every character is still there


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None)
@given(calls=call_lists)
def test_render_then_parse_gives_the_same_calls(fmt: ToolCallFormat, calls: tuple[ToolCall, ...]) -> None:
    assert parse(fmt, fmt.render_calls(calls)) == ParsedReply(None, calls)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_text_without_markup_passes_through(fmt: ToolCallFormat, data: st.DataObject) -> None:
    opener = "```tool_code" if fmt is GEMMA else "<tool_call>"
    text = data.draw((noise | st.text()).filter(lambda t: opener not in t))
    assert parse(fmt, text) == ParsedReply(text, ())
    assert stream(fmt, data.draw(splits(text))) == ParsedReply(text, ())


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_streamed_content_never_leaks_call_markup(fmt: ToolCallFormat, data: st.DataObject) -> None:
    before = data.draw(noise.filter(lambda t: not set(t) & set("`<")))
    text = before + fmt.render_calls(data.draw(call_lists)) + data.draw(st.sampled_from(["", "\n", " "]))
    streamer, shown = fmt.streamer(TOOLS, ids()), ""
    for piece in data.draw(splits(text)):
        shown += "".join(e.text for e in streamer.feed(piece) if isinstance(e, ContentPiece))
        assert before.rstrip().startswith(shown)


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=200, deadline=None)
@given(text=st.text() | st.lists(st.sampled_from([*FRAGMENTS[GEMMA], *FRAGMENTS[QWEN]])
                                 | st.text(max_size=3)).map("".join))
def test_parser_and_streamer_never_raise(fmt: ToolCallFormat, text: str) -> None:
    parse(fmt, text)
    stream(fmt, list(text))


# --- examples: Gemma -----------------------------------------------------------------------------

def gemma(body: str) -> str:
    return f"```tool_code\n{body}\n```"


def test_gemma_single_call() -> None:
    reply = parse(GEMMA, gemma('get_weather(city="Paris", days=3)'))
    assert reply == ParsedReply(None, (ToolCall("call_0", "get_weather",
                                                 '{"city": "Paris", "days": 3}'),))


def test_gemma_two_calls_in_one_block_and_in_two_blocks() -> None:
    expected = (ToolCall("call_0", "get_weather", '{"city": "Paris"}'),
                ToolCall("call_1", "get_weather", '{"city": "Rome"}'))
    one = parse(GEMMA, gemma('get_weather(city="Paris")\nget_weather(city="Rome")'))
    two = parse(GEMMA, gemma('get_weather(city="Paris")') + "\n" + gemma('get_weather(city="Rome")'))
    listed = parse(GEMMA, gemma('[get_weather(city="Paris"), get_weather(city="Rome")]'))
    assert one.calls == two.calls == listed.calls == expected


def test_gemma_text_then_call_and_positional_args() -> None:
    reply = parse(GEMMA, "Let me check.\n\n" + gemma('print(get_weather("Paris", 2))') + "\n")
    assert reply.content == "Let me check."
    assert json.loads(reply.calls[0].arguments) == {"city": "Paris", "days": 2}


def test_gemma_nested_literals_and_constants() -> None:
    reply = parse(GEMMA, gemma("free(a=True, b=False, c=None, d=[1, (2, 3), {'k': -1.5}], e={})"))
    assert json.loads(reply.calls[0].arguments) == {
        "a": True, "b": False, "c": None, "d": [1, [2, 3], {"k": -1.5}], "e": {}}


def test_gemma_dashed_tool_name_and_non_identifier_keys() -> None:
    call = ToolCall("call_0", "send-mail", '{"to": "a@b", "x-y": 1, "z": 2}')
    rendered = GEMMA.render_calls([call])
    assert "send_mail(to='a@b', **{'x-y': 1, 'z': 2})" in rendered
    assert parse(GEMMA, rendered).calls == (call,)


@pytest.mark.parametrize("body", [
    'get_weather(city="Paris"',  # syntax error
    "get_weather(city=open('x'))",  # not a literal
    'get_weather(city="Paris", city="Rome")',  # repeated
    'get_weather("Paris", 1, "celsius", 4)',  # too many positional
    'get_weather(city=3)',  # wrong type
    'get_weather(city="Paris", unit="kelvin")',  # not in enum
    "get_weather(days=1)",  # missing required
    'x = get_weather(city="Paris")',  # not a bare call
    'get_weather(city="Paris")\nnope()',  # one bad call rejects the block
    "get_weather(city={1, 2})",  # a set is not JSON
    "",  # empty block
])
def test_gemma_rejected_block_is_kept_as_content(body: str) -> None:
    text = "Sure. " + gemma(body)
    assert parse(GEMMA, text) == ParsedReply(text, (), rejected=1)
    assert stream(GEMMA, list(text)) == ParsedReply(text, (), rejected=1)


def test_gemma_unknown_tool_next_to_a_good_block() -> None:
    text = gemma("nope(a=1)") + "\n" + gemma('get_weather(city="Oslo")')
    reply = parse(GEMMA, text)
    assert (reply.content, len(reply.calls), reply.rejected) == (gemma("nope(a=1)"), 1, 1)


# --- examples: Qwen -------------------------------------------------------------------------------

def qwen(payload: str) -> str:
    return f"<tool_call>\n{payload}\n</tool_call>"


def test_qwen_single_and_two_calls_with_text_before() -> None:
    text = ("I'll look both up.\n" + qwen('{"name": "get_weather", "arguments": {"city": "Paris"}}')
            + "\n" + qwen('{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}'))
    reply = parse(QWEN, text)
    assert reply.content == "I'll look both up."
    assert [c.arguments for c in reply.calls] == ['{"city": "Paris"}', '{"city": "Rome"}']
    assert [c.id for c in reply.calls] == ["call_0", "call_1"]


@pytest.mark.parametrize("payload", [
    '{"name": "get_weather", "arguments": {"city": "Paris"}',  # malformed JSON
    '{"name": "nope", "arguments": {}}',  # unknown tool
    '{"name": "get_weather", "arguments": {"city": NaN}}',  # not JSON
    '{"name": "get_weather", "arguments": {"days": 2}}',  # missing required
    '{"name": "get_weather", "arguments": "[1]"}',  # arguments not an object
    '["get_weather"]',
])
def test_qwen_rejected_block_is_kept_as_content(payload: str) -> None:
    text = qwen(payload) + " after"
    assert parse(QWEN, text) == ParsedReply(text, (), rejected=1)


def test_whitespace_rule_and_unclosed_block() -> None:
    call = qwen('{"name": "free", "arguments": {}}')
    assert parse(QWEN, f"Hi {call}\n there").content == "Hi there"
    assert parse(QWEN, f"\n {call}\n{call} \n").content is None
    assert parse(QWEN, f"Hi\n\n{call}").content == "Hi"
    assert parse(QWEN, "a <tool_call>{").content == "a <tool_call>{"


def test_partial_opener_and_call_are_held_back_while_streaming() -> None:
    streamer = QWEN.streamer(TOOLS, ids())
    assert streamer.feed("Hello <tool_") == [ContentPiece("Hello")]
    assert streamer.feed('call>{"name": "free", "arguments": {"a": 1}}') == []
    events = streamer.feed("</tool_call>\n")
    assert [type(e).__name__ for e in events] == ["CallStarted", "CallArguments"]
    assert streamer.finish() == []


@pytest.mark.parametrize(("fmt", "rest"), [
    (GEMMA, 'city="Paris")\n```'), (QWEN, '{"city": "Paris"}}\n</tool_call>')])
def test_forced_prefix_continues_into_a_named_call(fmt: ToolCallFormat, rest: str) -> None:
    named = ToolChoice(ToolChoiceMode.FUNCTION, "get_weather")
    assert fmt.forced_prefix(ToolChoice()) == fmt.forced_prefix(ToolChoice(ToolChoiceMode.NONE)) == ""
    assert fmt.forced_prefix(named).startswith(fmt.forced_prefix(ToolChoice(ToolChoiceMode.REQUIRED)))
    reply = parse(fmt, fmt.forced_prefix(named) + rest)
    assert reply == ParsedReply(None, (ToolCall("call_0", "get_weather", '{"city": "Paris"}'),))


def test_schema_checker_keywords() -> None:
    schema = {"type": "object", "required": ["n"], "additionalProperties": False,
              "properties": {"n": {"type": ["integer", "null"]},
                             "tags": {"type": "array", "items": {"enum": ["a", True]}}}}
    assert fits_schema({"n": None, "tags": ["a", True]}, schema)
    assert fits_schema({"n": 2.0}, schema)
    assert not fits_schema({"n": True}, schema)
    assert not fits_schema({"n": 1, "tags": [1]}, schema)
    assert not fits_schema({"n": 1, "other": 0}, schema)
    assert fits_schema({"anything": [1]}, {"type": "object", "x-unknown": {"type": "string"}})


def test_arguments_nested_past_the_bound_are_not_an_object() -> None:
    from mlx_server.domain.tool_schema import MAX_DEPTH, depth, loads_object

    assert depth(1) == 0 and depth([]) == 1 and depth({"a": [[1]]}) == 3
    fits = '{"a": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    assert loads_object(fits) is not None
    assert loads_object('{"a": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}") is None
    assert loads_object('{"a": ' + "[" * 900 + "]" * 900 + "}") is None

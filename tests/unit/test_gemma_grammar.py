"""The Gemma 3 call grammar, checked with llguidance's matcher on the tiny Gemma 3 tokenizer.

`accepts` feeds a text byte by byte (the tokenizer's <0xNN> byte tokens); `walk` samples what a
random-weight model writes under the constraint: at each step a random token of the matcher's
bitmask, until the grammar is complete. Whatever the grammar lets through must be a block that
`judge` accepts, with arguments that fit the tool's schema (`fits_schema`, and `jsonschema` for
the bounds fits_schema does not check).
"""

from __future__ import annotations

import functools
import json
import random
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import llguidance
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mlx_server.domain.conversation import ToolCall, ToolSpec
from mlx_server.domain.gemma_grammar import UNSUPPORTED_KEYWORDS, gemma_call_grammar
from mlx_server.domain.tool_gemma import OPENER, GemmaToolCalls, judge, python_name
from mlx_server.domain.tool_schema import fits_schema
from tests.support.tiny_tokenizers import build_gemma_tokenizer

PREFIX = OPENER + "\n"
EOS = 1  # <eos> in the tiny Gemma tokenizer
FIRST_BYTE_TOKEN = 9  # <0x00>; specials come first
WEATHER = ToolSpec("get_weather", "", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"]})
RICH = ToolSpec("send-mail", "", {
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {
        "name": {"type": ["string", "null"]}, "email": {"type": "string", "minLength": 3}},
        "required": ["email"], "additionalProperties": False}},
    "properties": {
        "to": {"type": "array", "items": {"$ref": "#/$defs/address"}, "minItems": 1, "maxItems": 3},
        "subject": {"type": "string", "maxLength": 20},
        "priority": {"enum": [1, 2.5, "high", None, True, [1, "a"], {"k": "v"}]},
        "x-tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object"},
        "weight": {"type": "number"},
        "when": {"anyOf": [{"type": "integer"}, {"type": "string", "enum": ["now", "later"]}]},
        "class": {"type": "boolean"},
        "mode": {"const": "it's \"quoted\" `code`"}},
    "required": ["to", "subject"]})
NO_ARGS = ToolSpec("ping", "", {})


@functools.cache
def tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(build_gemma_tokenizer().to_str(), eos_token=EOS)


@functools.cache
def token_bytes() -> tuple[bytes, ...]:
    llt = tokenizer()
    return tuple(llt.decode_bytes([token]) for token in range(llt.vocab_size))


def matcher(grammar: str) -> llguidance.LLMatcher:
    assert llguidance.LLMatcher.validate_grammar(grammar, tokenizer()) == ""
    found = llguidance.LLMatcher(tokenizer(), grammar, log_level=0)
    assert not found.is_error(), found.get_error()
    return found


def accepts(grammar: str, text: str) -> bool:
    """Whether `grammar` matches all of `text` (fed as byte tokens)."""
    found = matcher(grammar)
    tokens = [FIRST_BYTE_TOKEN + byte for byte in text.encode("utf-8")]
    return found.consume_tokens(tokens) and found.is_accepting()


def allowed(found: llguidance.LLMatcher) -> np.ndarray[Any, Any]:
    bits = np.unpackbits(np.frombuffer(found.compute_bitmask(), dtype=np.uint8), bitorder="little")
    return np.flatnonzero(bits[:tokenizer().vocab_size])


STRUCTURE = frozenset(b"'\"()[]{},:= \n`0123456789.-")
CLOSERS = frozenset(b"'\")]}\n`")


def walk(grammar: str, rng: random.Random, steps: int = 600, settle: int = 120) -> str | None:
    """A random walk through `grammar`: the text written, or None when it did not finish."""
    found, pieces = matcher(grammar), token_bytes()
    written: list[int] = []
    for step in range(steps):
        if found.is_accepting():
            return tokenizer().decode_bytes(written).decode("utf-8")
        options = [int(token) for token in allowed(found) if token != EOS]
        assert options, "a grammar that is not complete must allow some token"
        single = [t for t in options if len(pieces[t]) == 1]
        closers = [t for t in single if pieces[t][0] in CLOSERS]
        structure = [t for t in single if pieces[t][0] in STRUCTURE]
        if step >= settle and closers and rng.random() < 0.9:
            options = closers
        elif structure and rng.random() < 0.5:
            options = structure
        token = rng.choice(options)
        assert found.consume_token(token), found.get_error()
        written.append(token)
    return None


def valid_block(text: str, tools: Sequence[ToolSpec]) -> bool:
    """`text` (after the opener) is a whole block judge accepts, every call fitting its schema."""
    if not text.endswith("\n```") or text.find("```") != len(text) - 3:
        return False  # the first closer must be the block's own
    found = judge(PREFIX + text, tools)
    if not found:
        return False
    by_name = {tool.name: tool for tool in reversed(tools)}
    for name, arguments in found:
        schema = by_name[name].parameters
        value = json.loads(arguments)
        if not fits_schema(value, schema):
            return False
        jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator)
    return True


def block_calls(text: str, tools: Sequence[ToolSpec]) -> int:
    found = judge(PREFIX + text, tools)
    return len(found) if found else 0


# -- strategies --------------------------------------------------------------------------------

NAMES = st.sampled_from(["city", "days", "x-y", "class", "a b", "flag", "n", "items", "é"])
TEXT = st.text(max_size=12)
# the grammar's numbers stop below 1e308 (repr writes larger finite floats, up to 1.79e308, too)
FLOATS = st.floats(-1e307, 1e307)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), FLOATS, TEXT)


def leaf_schemas() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda t: {"type": t}, st.sampled_from(
            ["string", "integer", "number", "boolean", "null"])),
        st.builds(lambda ts: {"type": ts}, st.lists(st.sampled_from(
            ["string", "integer", "number", "boolean", "null"]), min_size=1, max_size=3, unique=True)),
        st.builds(lambda options: {"enum": options}, st.lists(SCALARS, min_size=1, max_size=4)),
        st.builds(lambda options: {"type": "string", "enum": options},
                  st.lists(TEXT, min_size=1, max_size=4)),
        st.builds(lambda value: {"const": value}, SCALARS),
        st.just({}),
        st.builds(lambda low, extra: {"type": "string", "minLength": low, "maxLength": low + extra},
                  st.integers(0, 3), st.integers(0, 4)),
    )


def nested_schemas(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda items: {"type": "array", "items": items}, inner),
        st.builds(lambda items, low, extra: {"type": "array", "items": items, "minItems": low,
                                             "maxItems": low + extra},
                  inner, st.integers(0, 2), st.integers(0, 2)),
        object_schemas(inner),
        st.builds(lambda a, b: {"anyOf": [a, b]}, inner, inner),
        st.just({"type": "object"}),
        st.builds(lambda extra: {"type": "object", "additionalProperties": extra}, inner),
    )


def object_schemas(inner: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        properties = draw(st.dictionaries(NAMES, inner, max_size=4))
        required = [name for name in properties if draw(st.booleans())]
        schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        if draw(st.booleans()):
            schema["additionalProperties"] = False
        return schema
    return build()


SCHEMAS = st.recursive(leaf_schemas(), nested_schemas, max_leaves=8)
TOOL_NAMES = st.sampled_from(["get_weather", "send-mail", "lookup", "class", "f2", "ping"])


@st.composite
def toolsets(draw: st.DrawFn) -> list[ToolSpec]:
    names = draw(st.lists(TOOL_NAMES, min_size=1, max_size=4, unique=True))
    return [ToolSpec(name, "", draw(object_schemas(SCHEMAS))) for name in names]


def value_for(draw: st.DrawFn, schema: Any, level: int = 0) -> Any:
    """A value valid for `schema` (one of the generated kinds); at level 0 (the arguments) only
    declared properties, as the grammar writes them."""
    if not isinstance(schema, Mapping) or not schema:
        return draw(SCALARS)
    if "anyOf" in schema:
        return value_for(draw, draw(st.sampled_from(schema["anyOf"])), level)
    if "enum" in schema:
        return draw(st.sampled_from([o for o in schema["enum"] if fits_schema(o, schema)]))
    if "const" in schema:
        return schema["const"]
    kinds = schema.get("type")
    kind = draw(st.sampled_from(kinds)) if isinstance(kinds, list) else kinds
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength", 12)
        return draw(st.text(min_size=low, max_size=high))
    if kind == "integer":
        return draw(st.integers(-10**12, 10**12))
    if kind == "number":
        return draw(st.one_of(st.integers(-10**6, 10**6), FLOATS))
    if kind == "boolean":
        return draw(st.booleans())
    if kind == "null":
        return None
    if kind == "array":
        low, high = schema.get("minItems", 0), schema.get("maxItems", 3)
        size = draw(st.integers(low, high))
        return [value_for(draw, schema.get("items"), level + 1) for _ in range(size)]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    if not properties and level:
        if extra is False:
            return {}
        keys = draw(st.lists(TEXT, max_size=2, unique=True))
        return {key: value_for(draw, extra if isinstance(extra, Mapping) else {}, level + 1)
                for key in keys}
    required = schema.get("required", [])
    return {name: value_for(draw, sub, level + 1) for name, sub in properties.items()
            if name in required or draw(st.booleans())}


@st.composite
def calls_for(draw: st.DrawFn, tools: Sequence[ToolSpec], count: int) -> list[ToolCall]:
    callable_tools = [tool for tool in tools if python_name(tool.name) == tool.name
                      or all(other.name != python_name(tool.name) for other in tools)]
    calls = []
    for index in range(count):
        tool = draw(st.sampled_from(callable_tools))
        calls.append(ToolCall(f"call_{index}", tool.name,
                              json.dumps(value_for(draw, tool.parameters))))
    return calls


def after_opener(calls: Sequence[ToolCall]) -> str:
    return GemmaToolCalls().render_calls(calls)[len(PREFIX):]


# -- what render_calls writes is accepted --------------------------------------------------------

@settings(max_examples=60)
@given(st.data())
def test_grammar_accepts_rendered_calls(data: st.DataObject) -> None:
    tools = data.draw(toolsets())
    grammar = gemma_call_grammar(tools, parallel=False)
    assert grammar is not None
    call = data.draw(calls_for(tools, 1))
    text = after_opener(call)
    assert valid_block(text, tools)
    assert accepts(grammar, text), (grammar, text)


@settings(max_examples=30)
@given(st.data())
def test_parallel_grammar_accepts_several_calls_the_single_one_does_not(data: st.DataObject) -> None:
    tools = data.draw(toolsets())
    calls = data.draw(calls_for(tools, data.draw(st.integers(2, 3))))
    text = after_opener(calls)
    parallel, single = gemma_call_grammar(tools, True), gemma_call_grammar(tools, False)
    assert parallel is not None and single is not None
    assert accepts(parallel, text)
    assert accepts(parallel, after_opener(calls[:1]))
    assert not accepts(single, text)


def test_examples_accepted_and_rejected() -> None:
    grammar = gemma_call_grammar([WEATHER, RICH, NO_ARGS], parallel=False)
    assert grammar is not None
    good = [
        'get_weather(city="Paris", days=3)\n```',
        "get_weather(city='Paris', unit='celsius')\n```",
        "ping()\n```",
        "send_mail(to=[{'email': 'a@b'}], subject='hi', **{'x-tags': ['a'], 'meta': {'k': [1]}})\n```",
        "send_mail(to=[{\"name\": None, \"email\": \"a@b\"}], subject='', priority=[1, 'a'],"
        " weight=-1.5e-07, when='now', **{'class': False})\n```",
        "send_mail(to=[{'email': 'abc'}], subject='\\x60\\n\\u00e9', priority=None,"
        " mode='it\\'s \"quoted\" \\x60code\\x60')\n```",
    ]
    for text in good:
        assert valid_block(text, [WEATHER, RICH, NO_ARGS]), text
        assert accepts(grammar, text), text
    bad = [
        "get_weather(days=3)\n```",  # missing required
        "get_weather(city=3)\n```",  # wrong type
        "get_weather(city='Paris', days=3.5)\n```",
        "get_weather(city='Paris', unit='kelvin')\n```",  # not in the enum
        "get_weather(city='Paris', country='FR')\n```",  # unknown keyword
        "get_time(city='Paris')\n```",  # unknown tool
        "get_weather(city='Paris')\nping()\n```",  # two calls, parallel=False
        "get_weather(city='Paris')```",  # the closer on the call's line
        "get_weather(city='a`b')\n```",  # a raw backtick
        "get_weather(city='Paris', days=1e999)\n```",
        "send_mail(to=[], subject='x')\n```",  # minItems
        "send_mail(to=[{'email': 'ab'}], subject='x')\n```",  # minLength
        "send_mail(to=[{'email': 'abc', 'extra': 1}], subject='x')\n```",  # additionalProperties
        "send_mail(to=[{'email': 'abc'}], subject='x', **{'when': 'soon'})\n```",
        "print(ping())\n```",
    ]
    for text in bad:
        assert not accepts(grammar, text), text


def test_python_name_collisions_follow_judge() -> None:
    """`a-b` is called `a_b`, which judge finds as the tool named `a_b`: one `a_b(` in the grammar,
    with `a_b`'s schema."""
    first = ToolSpec("a_b", "", {"properties": {"n": {"type": "integer"}}, "required": ["n"]})
    second = ToolSpec("a-b", "", {"properties": {"s": {"type": "string"}}, "required": ["s"]})
    grammar = gemma_call_grammar([second, first], parallel=False)
    assert grammar is not None and grammar.count('"a_b("') == 1
    assert accepts(grammar, "a_b(n=1)\n```")
    assert not accepts(grammar, "a_b(s='x')\n```")


def test_grammar_text_is_deterministic() -> None:
    tools = [WEATHER, RICH, NO_ARGS]
    rebuilt = [ToolSpec(t.name, t.description, json.loads(json.dumps(t.parameters))) for t in tools]
    assert gemma_call_grammar(tools, True) == gemma_call_grammar(rebuilt, True)


# -- random walks ------------------------------------------------------------------------------

WALKS: Counter[str] = Counter()


@settings(max_examples=40)
@given(toolsets(), st.booleans(), st.randoms(use_true_random=False))
def test_random_walks_write_only_valid_calls(tools: list[ToolSpec], parallel: bool,
                                             rng: random.Random) -> None:
    grammar = gemma_call_grammar(tools, parallel)
    assert grammar is not None
    for _ in range(3):
        text = walk(grammar, rng)
        WALKS["total"] += 1
        if text is None:
            WALKS["unfinished"] += 1
            event("walk unfinished")
            continue
        assert valid_block(text, tools), (grammar, text)
        WALKS["valid"] += 1
        event(f"walk valid, {block_calls(text, tools)} call(s)")
        assert parallel or block_calls(text, tools) == 1


def test_random_walks_on_fixed_tools_counted(capsys: pytest.CaptureFixture[str]) -> None:
    tools = [WEATHER, RICH, NO_ARGS]
    counts: Counter[str] = Counter()
    for parallel in (False, True):
        grammar = gemma_call_grammar(tools, parallel)
        assert grammar is not None
        for seed in range(100):
            text = walk(grammar, random.Random(seed))
            counts["total"] += 1
            if text is None:
                counts["unfinished"] += 1
                continue
            assert valid_block(text, tools), text
            counts["valid"] += 1
            counts[f"calls={block_calls(text, tools)}"] += 1
            counts[f"tool={text.split('(', 1)[0]}"] += 1
    with capsys.disabled():
        print(f"\nrandom walks on fixed tools: {dict(sorted(counts.items()))}")
        if WALKS:
            print(f"random walks on generated tools: {dict(sorted(WALKS.items()))}")
    assert counts["valid"] >= 0.95 * counts["total"]
    assert counts["calls=2"] or counts["calls=3"]


# -- unsupported and arbitrary schemas --------------------------------------------------------

KEYWORD_EXAMPLES: dict[str, Any] = {
    "allOf": [{"type": "string"}], "not": {"type": "string"}, "if": {}, "then": {}, "else": {},
    "dependentRequired": {}, "dependentSchemas": {}, "dependencies": {},
    "patternProperties": {"^a": {}}, "propertyNames": {"maxLength": 3}, "minProperties": 1,
    "maxProperties": 2, "unevaluatedProperties": False, "unevaluatedItems": False,
    "prefixItems": [{}], "additionalItems": False, "contains": {}, "minContains": 1,
    "maxContains": 2, "uniqueItems": True, "pattern": "^a$", "format": "date", "contentEncoding":
    "base64", "contentMediaType": "text/plain", "contentSchema": {}, "minimum": 0, "maximum": 9,
    "exclusiveMinimum": 0, "exclusiveMaximum": 9, "multipleOf": 2, "$dynamicRef": "#x",
    "$recursiveRef": "#",
}


@pytest.mark.parametrize("keyword", sorted(UNSUPPORTED_KEYWORDS))
@pytest.mark.parametrize("where", ["top", "nested", "other tool"])
def test_unsupported_keywords_give_no_grammar(keyword: str, where: str) -> None:
    schema = {keyword: KEYWORD_EXAMPLES[keyword]}
    if where == "top":
        parameters = {"type": "object", "properties": {"a": {"type": "string"}}, **schema}
    else:
        parameters = {"type": "object", "properties": {"a": {"type": "array", "items": schema}}}
    tools = [ToolSpec("f", "", parameters)]
    if where == "other tool":
        tools.insert(0, WEATHER)
    assert gemma_call_grammar(tools, parallel=False) is None


@pytest.mark.parametrize("parameters", [
    {"properties": {"a": {"$ref": "#/$defs/node"}}, "$defs": {"node": {
        "type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}},  # recursive
    {"properties": {"a": {"$ref": "https://example.com/schema"}}},
    {"properties": {"a": {"$ref": "#/$defs/missing"}}},
    {"properties": {"a": {"type": "string", "anyOf": [{"minLength": 1}]}}},
    {"properties": {"a": {"type": "array", "items": [{"type": "string"}]}}},
    {"properties": {"a": {"type": "date"}}},
    {"properties": {"a": {"type": "string", "maxLength": 100000}}},
    {"type": "array"},
    {"properties": {"a": functools.reduce(lambda inner, _: {"type": "array", "items": inner},
                                          range(30), {"type": "string"})}},
])
def test_inexpressible_schemas_give_no_grammar(parameters: dict[str, Any]) -> None:
    assert gemma_call_grammar([ToolSpec("f", "", parameters)], parallel=True) is None


def test_uncallable_tools_are_left_out() -> None:
    never = ToolSpec("never", "", {"properties": {"a": False}, "required": ["a"]})
    assert gemma_call_grammar([never], parallel=False) is None
    grammar = gemma_call_grammar([never, WEATHER], parallel=False)
    assert grammar is not None and "never(" not in grammar


KEYS = st.one_of(st.sampled_from(["type", "properties", "required", "items", "enum", "const",
                                  "anyOf", "oneOf", "$ref", "$defs", "additionalProperties",
                                  "minItems", "maxItems", "minLength", "maxLength", "description"]),
                 st.text(string.ascii_letters, max_size=6))
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
              st.sampled_from(["object", "string", "integer", "array", "#/$defs/a", "a"])),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20)
PARAMETERS = JSONISH | st.builds(
    lambda properties, required: {"type": "object", "properties": properties, "required": required},
    st.dictionaries(st.sampled_from(["a", "b-c", "d"]), JSONISH, max_size=3),
    st.lists(st.sampled_from(["a", "b-c", "d"]), max_size=2))


@settings(max_examples=300)
@given(st.lists(st.tuples(st.text(max_size=6), PARAMETERS), min_size=1, max_size=3),
       st.booleans(), st.randoms(use_true_random=False))
def test_arbitrary_schemas_never_raise(specs: list[tuple[str, Any]], parallel: bool,
                                       rng: random.Random) -> None:
    tools = [ToolSpec(name, "", parameters) for name, parameters in specs]
    grammar = gemma_call_grammar(tools, parallel)
    event("grammar" if grammar is not None else "None")
    if grammar is not None:
        text = walk(grammar, rng)
        if text is not None:
            found = judge(PREFIX + text, tools)
            assert found, (grammar, text)
            by_name = {tool.name: tool for tool in reversed(tools)}
            assert all(fits_schema(json.loads(arguments), by_name[name].parameters)
                       for name, arguments in found)

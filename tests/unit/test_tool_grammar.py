"""The Hermes call grammar and the lazy trigger, against llguidance and the tiny Qwen tokenizer
(no MLX inference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mlx_server.domain.conversation import ToolCall, ToolGrammar, ToolSpec
from mlx_server.domain.tool_grammar import UNSUPPORTED_KEYWORDS, arguments_schema
from mlx_server.domain.tool_hermes import HermesToolCalls, hermes_call_grammar

WEATHER = ToolSpec("get_weather", "", {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]})


@pytest.fixture(scope="module")
def llt(tiny_qwen3_vl: Path) -> Any:
    import llguidance.hf
    from transformers import AutoTokenizer

    return llguidance.hf.from_tokenizer(AutoTokenizer.from_pretrained(str(tiny_qwen3_vl)))


def _matches(llt: Any, grammar: str, text: str) -> bool:
    import llguidance

    matcher = llguidance.LLMatcher(llt, grammar)
    return bool(matcher.consume_tokens(llt.tokenize_str(text)) and matcher.is_accepting())


def test_the_grammar_matches_what_the_template_renders_and_nothing_malformed(llt: Any) -> None:
    grammar = hermes_call_grammar([WEATHER, ToolSpec("noop")])
    assert grammar is not None
    rendered = HermesToolCalls().render_calls([ToolCall("c", "get_weather", '{"city": "Paris"}')])
    assert _matches(llt, grammar, rendered.removeprefix("<tool_call>\n"))
    assert _matches(llt, grammar, '{"name": "noop", "arguments": {}}\n</tool_call>')
    for bad in ('{"name": "get_weather", "arguments": {"days": 3}}\n</tool_call>',
                '{"name": "other", "arguments": {}}\n</tool_call>',
                '{"name": "get_weather", "arguments": {"city": 1}}\n</tool_call>'):
        assert not _matches(llt, grammar, bad)


@pytest.mark.parametrize("keyword", sorted(UNSUPPORTED_KEYWORDS - {"then", "else"}))
def test_every_unsupported_keyword_is_one_llguidance_refuses(llt: Any, keyword: str) -> None:
    import llguidance

    schema = {"type": "object", keyword: {"type": "integer"} if keyword != "dependentRequired"
              else {"a": ["b"]}}
    assert arguments_schema(schema) is None and hermes_call_grammar([ToolSpec("f", "", schema)]) is None
    lark = "start: %json " + json.dumps(schema)
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(lark), llt)


def test_nested_unsupported_keywords_and_remote_refs_fall_back() -> None:
    nested = {"type": "object", "properties": {"not": {"type": "object", "properties": {
        "xs": {"type": "array", "items": {"type": "array", "uniqueItems": True}}}}}}
    assert arguments_schema(nested) is None
    assert arguments_schema({"properties": {"not": {"type": "string"}}}) is not None  # a name
    assert arguments_schema({"properties": {"a": {"$ref": "https://x/y.json"}}}) is None
    assert arguments_schema({"type": "string"}) is None


def _feed(processor: Any, llt: Any, text: str, first: bool = True) -> None:
    import mlx.core as mx

    logits = mx.zeros((1, llt.vocab_size))
    if first:
        processor(mx.array([1, 2]), logits)
    for token in llt.tokenize_str(text):
        processor(mx.array([token]), logits)


def test_the_lazy_trigger_spans_tokens_and_releases_after_the_closer(llt: Any) -> None:
    from mlx_server.adapters.mlx.tool_constraint import ToolCallProcessor, lazy_grammar

    grammar = ToolGrammar(hermes_call_grammar([WEATHER]) or "", "<tool_call>", "\n")
    processor = ToolCallProcessor(llt, grammar, lazy_grammar(grammar), portable=True)
    _feed(processor, llt, "Sure. <")  # free text, a partial opener
    assert processor._matcher is None
    # the opener spelled in pieces (not the added token) still triggers
    for piece in ("tool", "_call", ">"):
        _feed(processor, llt, piece, first=False)
    assert processor._matcher is not None and processor.blocks == 1
    _feed(processor, llt, '\n{"name": "get_weather", "arguments": {"city": "P"}}\n</tool_call>',
          first=False)
    assert processor._matcher is None  # free again; not single: a second opener re-triggers
    _feed(processor, llt, "<tool_call>", first=False)
    assert processor.blocks == 2


def test_single_never_triggers_twice_and_compiles_once(llt: Any) -> None:
    from mlx_server.adapters.mlx.tool_constraint import CACHE, ToolCallProcessor, lazy_grammar

    grammar = ToolGrammar(hermes_call_grammar([WEATHER]) or "", "<tool_call>", "\n",
                          active_from_start=True, single=True)
    compiles = CACHE.compiles
    for _ in range(2):
        processor = ToolCallProcessor(llt, grammar, lazy_grammar(grammar), portable=True)
        _feed(processor, llt, '{"name": "get_weather", "arguments": {"city": "P"}}\n</tool_call>')
        _feed(processor, llt, "<tool_call>", first=False)
        assert processor.blocks == 1 and processor._matcher is None
    assert CACHE.compiles - compiles <= 2  # the forced and the lazy grammar, once each

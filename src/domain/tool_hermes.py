"""Hermes-style tool calls: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks,
the convention of most tool-tuned open models (Qwen3, Qwen3-VL, Hermes, ...): their chat templates
offer the tools in a `<tools>` block and give results back in `<tool_response>` blocks.

`arguments` may also arrive as a JSON string holding the object (normalised), or be missing
(no arguments); `parameters` is read when `arguments` is absent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .conversation import ToolCall, ToolSpec
from .tool_blocks import BlockFormat, Syntax
from .tool_grammar import arguments_schema, lark_json, lark_literal
from .tool_schema import dumps, fits_schema, loads_object

OPENER = "<tool_call>"
CLOSER = "</tool_call>"
SYNTAX = Syntax(OPENER, CLOSER)


def judge(block: str, tools: Sequence[ToolSpec]) -> tuple[tuple[str, str], ...] | None:
    """The block's call as (tool name, JSON arguments), or None when it is not acceptable."""
    call = loads_object(block[len(OPENER):len(block) - len(CLOSER)])
    if call is None or not isinstance(call.get("name"), str):
        return None
    arguments: Any = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        arguments = loads_object(arguments)
    tool = next((tool for tool in tools if tool.name == call["name"]), None)
    if tool is None or not isinstance(arguments, dict) or not fits_schema(arguments, tool.parameters):
        return None
    return ((tool.name, dumps(arguments)),)


def _json(value: object) -> str:
    """JSON with `</` escaped as `<\\/`, so a string can never close the block early."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


class HermesToolCalls(BlockFormat):
    """The ToolCallFormat of Hermes-style checkpoints (the chat template offers the tools)."""

    syntax = SYNTAX
    judge = staticmethod(judge)

    def call_start(self, name: str) -> str:
        """The JSON object up to its arguments."""
        return f'{{"name": {_json(name)}, "arguments": '

    def call_grammar(self, tools: Sequence[ToolSpec], parallel: bool) -> str | None:
        """What follows `<tool_call>\\n`: `{"name": <a tool>, "arguments": <valid JSON>}`, then
        `\\n</tool_call>`. One call per block whatever `parallel` says (several calls are several
        blocks); None when a tool's schema cannot be enforced."""
        return hermes_call_grammar(tools)

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        """The blocks exactly as Qwen's (Hermes-style) chat templates write earlier calls."""
        return "\n".join(
            f'{OPENER}\n{{"name": {_json(call.name)}, "arguments": '
            f"{_json(loads_object(call.arguments) or {})}}}\n{CLOSER}" for call in calls)


def hermes_call_grammar(tools: Sequence[ToolSpec]) -> str | None:
    """The Lark grammar of one Hermes call block's body, as the model writes it after the opener
    and its newline; None when a tool's parameters cannot be enforced (see tool_grammar)."""
    if not tools:
        return None
    rules = []
    for index, tool in enumerate(tools):
        schema = arguments_schema(tool.parameters)
        if schema is None:
            return None
        start = f'{{"name": {_json(tool.name)}, "arguments": '
        rules.append(f"call_{index}: {lark_literal(start)} args_{index} \"}}\"\n"
                     f"args_{index}: {lark_json(schema)}")
    calls = " | ".join(f"call_{index}" for index in range(len(tools)))
    # NOTE: Qwen's tokenizers hold the closer as one added token, which llguidance takes for a
    # special token: a text literal alone would let its mask offer that token and then refuse it
    closer = f"({lark_literal(CLOSER)} | {CLOSER})"
    return "\n".join([f'start: ({calls}) "\\n" {closer}', *rules]) + "\n"

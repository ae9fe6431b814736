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

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        """The blocks exactly as Qwen's (Hermes-style) chat templates write earlier calls."""
        return "\n".join(
            f'{OPENER}\n{{"name": {_json(call.name)}, "arguments": '
            f"{_json(loads_object(call.arguments) or {})}}}\n{CLOSER}" for call in calls)

"""Gemma 3 tool calls: ```tool_code blocks of Python call syntax, parsed with `ast` (never eval).

A block holds one or more calls, one per statement: `get_weather(city="Paris", days=3)`. Also
accepted: `print(call)` and a list or tuple of calls on one line (Google's documented prompt).
Positional arguments map onto the schema's `properties` in order; `**{...}` carries argument
names that are not Python identifiers. Values are literals (strings, numbers, True/False/None,
lists, tuples, dicts).
"""

from __future__ import annotations

import ast
import keyword
import math
import re
import textwrap
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

from .conversation import ToolCall, ToolSpec
from .tool_blocks import BlockFormat, Syntax
from .tool_schema import dumps, fits_schema, loads_object, to_json

OPENER = "```tool_code"
CLOSER = "```"
SYNTAX = Syntax(OPENER, CLOSER)


class Rejected(Exception):
    """A block that looks like a call but is not an acceptable one."""


def judge(block: str, tools: Sequence[ToolSpec]) -> tuple[tuple[str, str], ...] | None:
    """The block's calls as (tool name, JSON arguments), or None when any of them is not
    acceptable. Never raises: whatever the parser or the literals throw is a rejection."""
    code = textwrap.dedent(block[len(OPENER):len(block) - len(CLOSER)]).strip()
    try:
        statements = ast.parse(code).body
        calls = [call for statement in statements for call in _statement_calls(statement)]
        found = tuple(_accept(call, tools) for call in calls)
    except Exception:  # SyntaxError, ValueError, RecursionError, MemoryError, Rejected...
        return None
    return found or None


def _statement_calls(statement: ast.stmt) -> list[ast.Call]:
    if not isinstance(statement, ast.Expr):
        raise Rejected("not an expression")
    value = statement.value
    if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            and value.func.id == "print" and len(value.args) == 1 and not value.keywords):
        value = value.args[0]
    items = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
    if not items or not all(isinstance(item, ast.Call) for item in items):
        raise Rejected("not a call")
    return [item for item in items if isinstance(item, ast.Call)]


def _accept(call: ast.Call, tools: Sequence[ToolSpec]) -> tuple[str, str]:
    tool = _find_tool(_called_name(call.func), tools)
    parameters = tool.parameters if isinstance(tool.parameters, Mapping) else {}
    properties = parameters.get("properties")
    order = list(properties) if isinstance(properties, Mapping) else []
    if len(call.args) > len(order):
        raise Rejected("more positional arguments than parameters")
    arguments: dict[str, Any] = {}
    for name, node in zip(order, call.args, strict=False):
        arguments[name] = _literal(node)
    for item in call.keywords:
        given = _literal(item.value)
        if item.arg is not None:
            given = {item.arg: given}
        if not isinstance(given, dict) or any(name in arguments for name in given):
            raise Rejected("repeated or malformed argument")
        arguments.update(given)
    if not fits_schema(arguments, parameters):
        raise Rejected("arguments do not fit the schema")
    return tool.name, dumps(arguments)


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Starred):
        raise Rejected("*args")
    return to_json(ast.literal_eval(node))


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):  # default_api.get_weather(...)
        return func.attr
    raise Rejected("not a function name")


def _find_tool(name: str, tools: Sequence[ToolSpec]) -> ToolSpec:
    for tool in tools:
        if tool.name == name:
            return tool
    for tool in tools:
        if python_name(tool.name) == name:
            return tool
    raise Rejected(f"unknown tool {name!r}")


def python_name(name: str) -> str:
    """`name` as a Python identifier (how the model sees and calls it): `send-mail` → `send_mail`."""
    name = unicodedata.normalize("NFKC", name)
    name = re.sub(r"[^0-9A-Za-z_]", "_", name) if not name.isidentifier() else name
    if not name or name[0].isdigit() or not _plain_identifier(name):
        name = "_" + name
    return name


def render_call(name: str, arguments: Mapping[str, Any]) -> str:
    """`name(key=value, ...)`; from the first key that is not a plain identifier on, the rest go
    in a trailing `**{...}` so that key order survives."""
    items = list(arguments.items())
    plain = next((i for i, (key, _) in enumerate(items) if not _plain_identifier(key)), len(items))
    parts = [f"{key}={py_literal(value)}" for key, value in items[:plain]]
    if plain < len(items):
        parts.append("**" + py_literal(dict(items[plain:])))
    return f"{python_name(name)}({', '.join(parts)})"


def py_literal(value: object) -> str:
    """A JSON value as a Python literal; backticks escaped so a block's closer never appears."""
    if isinstance(value, str):
        return repr(value).replace("`", "\\x60")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "None"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(py_literal(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{py_literal(str(key))}: {py_literal(item)}"
                               for key, item in value.items()) + "}"
    return py_literal(str(value))


def _plain_identifier(name: str) -> bool:
    """Usable as `name=value` in a call and read back unchanged."""
    return (name.isidentifier() and not keyword.iskeyword(name) and name != "__debug__"
            and unicodedata.normalize("NFKC", name) == name)


class GemmaToolCalls(BlockFormat):
    """The ToolCallFormat of Gemma 3 checkpoints."""

    syntax = SYNTAX
    judge = staticmethod(judge)

    def call_start(self, name: str) -> str:
        """`name(`, with the name as Python can call it."""
        return f"{python_name(name)}("

    def call_grammar(self, tools: Sequence[ToolSpec], parallel: bool) -> str | None:
        """What follows "```tool_code\\n": one call (parallel: one or more, one per line), then
        "\\n```" (domain/gemma_grammar.py)."""
        from .gemma_grammar import gemma_call_grammar  # it builds on this module's literals

        return gemma_call_grammar(tools, parallel)

    def render_calls(self, calls: Sequence[ToolCall]) -> str:
        """One ```tool_code block, one call per line."""
        lines = [render_call(call.name, loads_object(call.arguments) or {}) for call in calls]
        return OPENER + "\n" + "\n".join(lines) + "\n" + CLOSER

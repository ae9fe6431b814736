"""Gemma 3 (`model_type` gemma3): ```tool_code blocks of Python calls (tool_gemma parses them).

Its chat template knows no tools and wants strictly alternating user/assistant turns (a leading
system message is merged into the first user turn), so the prompt carries the tools: they are
described in the system turn as Python signatures with docstrings, plus the instruction to answer
with a ```tool_code block; earlier calls become ```tool_code blocks in the assistant turn and tool
results ```tool_output blocks in a user turn; turns of the same role are merged so the roles
alternate. Gemma has no tool-result role: a ```tool_output block it writes itself is made up, so
it stops generation while tools are offered. Its text config declares a 131072-token context.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

from ..conversation import Message, Part, Role, TextPart, ToolSpec
from ..tool_gemma import GemmaToolCalls, py_literal, python_name
from .profile import Profile

INSTRUCTIONS = """\
You have access to the following functions:

```python
{signatures}
```

To call functions, answer with a ```tool_code block that contains only the Python call(s), one per \
line, with keyword arguments, for example:
```tool_code
{example}(...)
```
The results will be given to you in a ```tool_output block. If no function is needed, answer \
normally, without a tool_code block."""

_TYPES = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
          "array": "list", "object": "dict", "null": "None"}
_FORMAT = GemmaToolCalls()


def gemma_tool_messages(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> tuple[Message, ...]:
    """`messages` rewritten for Gemma 3's template when tools are offered or the history holds
    tool calls or results; otherwise returned unchanged."""
    if not tools and not any(m.tool_calls or m.role is Role.TOOL for m in messages):
        return tuple(messages)
    leading = 0
    while leading < len(messages) and messages[leading].role in (Role.SYSTEM, Role.DEVELOPER):
        leading += 1
    system = [m.text for m in messages[:leading] if m.text]
    if tools:
        system.append(tool_instructions(tools))
    turns: list[Message] = []
    for message in messages[leading:]:
        role, parts = _turn(message)
        if turns and turns[-1].role is role:
            turns[-1] = Message(role, _join(turns[-1].content, parts, "\n\n"))
        else:
            turns.append(Message(role, parts))
    if turns and turns[0].role is Role.ASSISTANT:
        turns.insert(0, Message(Role.USER, (TextPart(""),)))
    head = (Message(Role.SYSTEM, (TextPart("\n\n".join(system)),)),) if system else ()
    return head + tuple(turns)


def tool_instructions(tools: Sequence[ToolSpec]) -> str:
    """The system-turn text that teaches the model the tools and the tool_code convention."""
    signatures = "\n\n".join(tool_signature(tool) for tool in tools)
    return INSTRUCTIONS.format(signatures=signatures, example=python_name(tools[0].name))


def tool_signature(tool: ToolSpec) -> str:
    """A Python `def` for `tool` from its JSON schema, with its description as docstring.

    Parameters keep the schema's `properties` order (positional calls map onto it); optional
    ones get their schema default or `...`. When an optional parameter comes before a required
    one, all parameters are keyword-only (`*`)."""
    schema: Mapping[str, Any] = tool.parameters if isinstance(tool.parameters, Mapping) else {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    required = schema.get("required")
    required = set(required) if isinstance(required, list) else set()
    params, seen_optional, keyword_only = [], False, False
    for name, spec in properties.items():
        spec = spec if isinstance(spec, Mapping) else {}
        text = f"{name}: {annotation(spec)}"
        if name in required:
            keyword_only = keyword_only or seen_optional
        else:
            seen_optional = True
            text += " = " + (py_literal(spec["default"]) if "default" in spec else "...")
        params.append(text)
    if keyword_only:
        params.insert(0, "*")
    head = f"def {python_name(tool.name)}({', '.join(params)}) -> dict:"
    return head + "\n" + _docstring(tool.description, properties)


def annotation(schema: Mapping[str, Any]) -> str:
    """A Python type annotation for a JSON schema: enums as Literal, lists of types as unions."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return "Literal[" + ", ".join(py_literal(value) for value in enum) + "]"
    options = schema.get("anyOf", schema.get("oneOf"))
    if isinstance(options, list) and options:
        return " | ".join(annotation(o if isinstance(o, Mapping) else {}) for o in options)
    kind = schema.get("type")
    if isinstance(kind, list) and kind:
        return " | ".join(annotation({**schema, "type": item}) for item in kind)
    items = schema.get("items")
    if kind == "array" and isinstance(items, Mapping) and items:
        return f"list[{annotation(items)}]"
    return _TYPES.get(kind, "Any") if isinstance(kind, str) else "Any"


def _docstring(description: str, properties: Mapping[str, Any]) -> str:
    lines = [description.strip()] if description.strip() else []
    documented = [f"    {name}: {' '.join(spec['description'].split())}" for name, spec in properties.items()
                  if isinstance(spec, Mapping) and isinstance(spec.get("description"), str)]
    if documented:
        lines += ["", "Args:", *documented] if lines else ["Args:", *documented]
    if not lines:
        return "    ..."
    body = textwrap.indent("\n".join(lines).replace('"""', '\\"""'), "    ").lstrip()
    return f'    """{body}\n    """'


def _turn(message: Message) -> tuple[Role, tuple[Part, ...]]:
    """The alternating-role turn a message becomes, text parts joined, images kept in place."""
    parts = _join((), message.content, "")
    if message.role is Role.ASSISTANT:
        if message.tool_calls:
            parts = _join(parts, (TextPart(_FORMAT.render_calls(message.tool_calls)),), "\n")
        return Role.ASSISTANT, parts
    if message.role is Role.TOOL:
        block = TextPart(f"```tool_output\n{message.text.strip()}\n```")
        return Role.USER, (block, *message.images)
    return Role.USER, parts


def _join(left: Sequence[Part], right: Sequence[Part], separator: str) -> tuple[Part, ...]:
    """`left` then `right`, whose own texts merge (empty ones dropped); where a text meets a
    text at the junction they merge with `separator`. Images stay in order."""
    out, rest = list(left), _merged(right)
    if out and rest and isinstance(out[-1], TextPart) and isinstance(rest[0], TextPart):
        out[-1] = TextPart(out[-1].text + separator + rest[0].text)
        rest = rest[1:]
    return (*out, *rest)


def _merged(parts: Sequence[Part]) -> list[Part]:
    out: list[Part] = []
    for part in parts:
        if isinstance(part, TextPart) and out and isinstance(out[-1], TextPart):
            out[-1] = TextPart(out[-1].text + part.text)
        elif not isinstance(part, TextPart) or part.text:
            out.append(part)
    return out


# Gemma has no tool-result role: when it writes a result block itself, it is making one up.
INVENTED_RESULT = "```tool_output"

PROFILE = Profile(name="gemma3", title="Gemma 3", model_types=("gemma3",), tool_format=_FORMAT,
                  rewrite=gemma_tool_messages, extra_stops=(INVENTED_RESULT,),
                  default_context=131072)

"""A small JSON-schema checker for tool arguments, and JSON values from parsed literals.

Implemented keywords: `type` (a name or a list of names: string, integer, number, boolean, array,
object, null), `enum`, `const`, `properties`, `required`, `additionalProperties`, `items`. Every
other keyword is ignored, so an argument is never rejected for a rule that is not checked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

JsonValue = None | bool | int | float | str | list[Any] | dict[str, Any]
# arrays and objects nested deeper than this are refused wherever JSON comes in (request bodies,
# tool-call arguments in a conversation or from a model): every later walk over it recurses
MAX_DEPTH = 64


class NotJson(ValueError):
    """A value with no JSON equivalent (a set, bytes, a complex or non-finite number...)."""


def to_json(value: object) -> JsonValue:
    """`value` (from ast.literal_eval) as plain JSON data: tuples become lists."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJson("non-finite number")
        return value
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise NotJson("object keys must be strings")
        return {key: to_json(item) for key, item in value.items()}
    raise NotJson(f"{type(value).__name__} is not JSON")


def loads_object(text: str) -> dict[str, Any] | None:
    """`text` as a JSON object, or None (invalid JSON, NaN/Infinity, not an object, nested deeper
    than MAX_DEPTH)."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and depth(value) <= MAX_DEPTH else None


def depth(value: object) -> int:
    """How deep arrays and objects nest in `value` (a scalar: 0), found without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def dumps(arguments: Mapping[str, Any]) -> str:
    """The arguments string clients get: JSON, non-ASCII kept as is. A lone surrogate (a model
    may write `\\ud800` in a call) is not text and cannot be sent as UTF-8: then every non-ASCII
    character is escaped instead, which is the same JSON."""
    text = json.dumps(arguments, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(arguments)
    return text


def fits_schema(value: object, schema: object) -> bool:
    """Whether `value` satisfies the implemented keywords of `schema` (anything not a mapping
    accepts everything)."""
    if not isinstance(schema, Mapping):
        return True
    names = schema.get("type")
    names = [names] if isinstance(names, str) else names if isinstance(names, list) else []
    if names and not any(_has_type(value, name) for name in names):
        return False
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(_same(value, option) for option in enum):
        return False
    if "const" in schema and not _same(value, schema["const"]):
        return False
    if isinstance(value, dict):
        return _fits_object(value, schema)
    if isinstance(value, list):
        return all(fits_schema(item, schema.get("items")) for item in value)
    return True


def _fits_object(value: dict[str, Any], schema: Mapping[str, Any]) -> bool:
    required = schema.get("required")
    if isinstance(required, list) and any(key not in value for key in required):
        return False
    properties = schema.get("properties")
    properties = properties if isinstance(properties, Mapping) else {}
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            if not fits_schema(item, properties[key]):
                return False
        elif extra is False or not fits_schema(item, extra):
            return False
    return True


def _has_type(value: object, name: object) -> bool:
    if name == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    checks: dict[object, bool] = {
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        "null": value is None,
    }
    return checks.get(name, True)


def _same(value: object, option: object) -> bool:
    """JSON equality: True is not 1."""
    if isinstance(value, bool) != isinstance(option, bool):
        return False
    if isinstance(value, list) and isinstance(option, list):
        return len(value) == len(option) and all(map(_same, value, option))
    return value == option


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")

"""Grammars for tool calls that cannot be malformed: what the formats share.

A format's `call_grammar(tools, parallel)` is an llguidance Lark grammar whose `start` matches
exactly what the model writes after the format's forced prefix (opener + "\\n"): a call of one of
`tools` whose arguments are valid for that tool's JSON schema, then the closer. None when a tool's
schema uses a keyword the grammar engine cannot enforce (UNSUPPORTED_KEYWORDS): the request is then
served as before, the calls checked after they are written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

# JSON Schema keywords llguidance (1.9) refuses to compile ("Unimplemented keys"), found by
# compiling each one (tests/unit/test_tool_grammar.py keeps the list honest)
UNSUPPORTED_KEYWORDS = frozenset({
    "uniqueItems", "contains", "minContains", "maxContains", "propertyNames", "if", "then", "else",
    "dependentRequired", "dependentSchemas", "dependencies", "not", "unevaluatedProperties",
    "unevaluatedItems", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor",
})
# how JSON inside a constrained call is spelled: as json.dumps writes it (and the templates render
# earlier calls), no free whitespace
JSON_STYLE = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}

_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_SCHEMA_ONE = ("additionalProperties", "items", "additionalItems", "contains", "not", "if", "then",
               "else", "propertyNames", "unevaluatedItems", "unevaluatedProperties")
_SCHEMA_LISTS = ("items", "prefixItems", "allOf", "anyOf", "oneOf")


def unsupported_keywords(schema: object) -> set[str]:
    """The keywords of `schema` (and of every subschema) the grammar cannot enforce; a `$ref`
    that leaves the document counts as one ("$ref")."""
    found: set[str] = set()
    for node in _subschemas(schema):
        found.update(key for key in node if key in UNSUPPORTED_KEYWORDS)
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            found.add("$ref")
    return found


def _subschemas(schema: object) -> Iterator[Mapping[str, Any]]:
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        yield node
        for key in _SCHEMA_MAPS:
            if isinstance(children := node.get(key), Mapping):
                stack.extend(children.values())
        stack.extend(node.get(key) for key in _SCHEMA_ONE)
        for key in _SCHEMA_LISTS:
            if isinstance(children := node.get(key), list):
                stack.extend(children)


def arguments_schema(parameters: Mapping[str, Any]) -> dict[str, Any] | None:
    """A tool's parameters as the schema its arguments are generated from: always an object (a
    schema without `type` is made one), written in JSON_STYLE. None when the grammar cannot
    enforce it (an unsupported keyword, a `type` that excludes objects)."""
    if unsupported_keywords(parameters):
        return None
    schema = dict(parameters)
    kind = schema.get("type")
    if kind is None or (isinstance(kind, list) and "object" in kind):
        schema["type"] = "object"
    elif kind != "object":
        return None
    schema["x-guidance"] = JSON_STYLE
    return schema


def lark_literal(text: str) -> str:
    """`text` as a Lark string literal (JSON's escapes, which llguidance's Lark reads)."""
    return json.dumps(text, ensure_ascii=False)


def lark_json(schema: Mapping[str, Any]) -> str:
    """An inline JSON-schema rule body."""
    return "%json " + json.dumps(schema, ensure_ascii=False)

"""Gemma 3 tool calls that cannot be malformed: an llguidance Lark grammar from the offered tools.

`gemma_call_grammar(tools, parallel)` describes exactly what the model may write right after the
opener line "```tool_code\\n": one call (or, with `parallel`, one or more calls, one per line) of
one of the tools, then "\\n```". Each call is `name(key=value, ...)` with the keyword arguments
of the tool's `parameters` schema in schema order (all required ones, any subset of the optional
ones); from the first present name that is not a plain identifier on, the rest go in a trailing
`**{'key': value, ...}`, as `tool_gemma.render_call` writes them. Values are Python literals of
the JSON types. Every string the grammar accepts is a block that `tool_gemma.judge` accepts, and
whose arguments satisfy `tool_schema.fits_schema` (and the length and item-count bounds).

Choices:
- strings: single- or double-quoted Python literals with the escapes \\\\ \\' \\" \\a \\b \\f \\n \\r
  \\t \\v \\xHH \\uHHHH \\UHHHHHHHH; no raw control characters and no backtick (written \\x60, as
  `py_literal` does), so a string never closes the block;
- integers: at most 31 digits; numbers: JSON-like, with the exponent bounded so that the value is
  finite (repr's own forms, up to 9.9e+307, are included);
- objects with declared `properties` (nested or the parameters themselves): only the declared
  properties (plus `required` names that are not declared, with the `additionalProperties`
  schema), whatever `additionalProperties` says; an object schema without `properties`: any keys,
  values of its `additionalProperties` schema (any value when absent or true; `{}` when false);
- `oneOf` is read as `anyOf` (alternatives); `anyOf`/`oneOf`/`$ref` must be the only validation
  keyword of their schema; `$ref` only to `#/$defs/...` or `#/definitions/...`, never recursive;
- a schema `false` (or any sub-schema no value can satisfy) drops an optional property or an
  `anyOf` branch; a tool that cannot be called at all is left out.

The grammar text is deterministic (same tools, same text), so a caller can cache its compiled form
by the text's hash. Pure: no llguidance here; tests check the grammar with llguidance's matcher.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

from .conversation import ToolSpec
from .tool_gemma import _plain_identifier, py_literal, python_name
from .tool_grammar import lark_json
from .tool_schema import depth, fits_schema, to_json

UNSUPPORTED_KEYWORDS: frozenset[str] = frozenset({
    "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies",
    "patternProperties", "propertyNames", "minProperties", "maxProperties", "unevaluatedProperties",
    "unevaluatedItems", "prefixItems", "additionalItems", "contains", "minContains", "maxContains",
    "uniqueItems", "pattern", "format", "contentEncoding", "contentMediaType", "contentSchema",
    "$dynamicRef", "$recursiveRef",
})
NUMERIC_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
"""Bounds of an integer or a number: written as llguidance's own JSON-schema rule (`%json`), since a
JSON number is a Python literal too."""
"""JSON Schema keywords the grammar cannot express: a tool schema that uses any of them, anywhere,
gets no grammar (`gemma_call_grammar` returns None) and the caller falls back to validating the
call after it is written. Also refused: `$ref` other than `#/$defs/<name>` or
`#/definitions/<name>`, recursive `$ref`, `$ref`/`anyOf`/`oneOf` beside other validation
keywords, `items` as a list, `type` names outside the seven JSON types, `minLength`/`maxLength`/
`minItems`/`maxItems` above 1024, and schemas nested deeper than 24 levels. Other keywords
(`title`, `description`, `default`, `examples`, ...) are annotations and ignored."""

MAX_SCHEMA_DEPTH = 24  # nested schemas (objects, arrays, alternatives) below the parameters
MAX_BOUND = 1024  # largest minLength/maxLength/minItems/maxItems expressed
ANY_DEPTH = 4  # nesting of free-form values (a schema that allows any value)
ENUM_DEPTH = 32  # nesting of an enum/const option
_ANNOTATIONS_ONLY = frozenset({
    "title", "description", "default", "examples", "$comment", "deprecated", "readOnly",
    "writeOnly", "$schema", "$id", "$anchor", "$defs", "definitions",
})
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")

_ESCAPE = r"""\\([\\'"abfnrtv]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U000[0-9a-fA-F]{5}|U0010[0-9a-fA-F]{4})"""
_SQ_CHAR = r"([^'\\\x00-\x1f\x7f`]|" + _ESCAPE + ")"
_DQ_CHAR = r'([^"\\\x00-\x1f\x7f`]|' + _ESCAPE + ")"
_RULE_NAME = re.compile(r"\br[0-9]+\b")
_LARK_STRING = re.compile(r'"(\\.|[^"\\])*"')
_TERMINALS = {
    "STRING": f"/'{_SQ_CHAR}*'|\"{_DQ_CHAR}*\"/",
    "INT": "/-?(0|[1-9][0-9]{0,30})/",
    "NUMBER": r"/-?(0|[1-9][0-9]{0,16})(\.[0-9]+)?([eE](\+?[0-9]{1,2}|-[0-9]{1,3}))?"
              r"|-?[0-9](\.[0-9]+)?[eE]\+?([12][0-9]{2}|30[0-7])/",
}


class Unsupported(Exception):
    """The schema uses something the grammar cannot express."""


class Impossible(Exception):
    """No value satisfies the schema."""


def gemma_call_grammar(tools: Sequence[ToolSpec], parallel: bool) -> str | None:
    """The Lark grammar of what follows "```tool_code\\n" when a call of one of `tools` is
    written, through the closing "\\n```"; None when a schema uses what the grammar cannot
    express (see UNSUPPORTED_KEYWORDS) or no tool can be called. Never raises."""
    try:
        return _Builder().grammar(tools, parallel)
    except Exception:  # Unsupported, RecursionError on absurd inputs...
        return None


class _Builder:
    def __init__(self) -> None:
        self.rules: dict[str, str] = {}  # body -> rule name, in creation order
        self.terminals: dict[str, str] = {}
        self.root: Mapping[str, Any] = {}
        self.memo: dict[tuple[int, int], str | Exception] = {}
        self.keep: list[object] = []  # the schemas memo's ids refer to stay alive

    def grammar(self, tools: Sequence[ToolSpec], parallel: bool) -> str | None:
        calls = []
        for index, tool in enumerate(tools):
            if _resolves_to(tool, tools) != index:
                continue  # its Python name reaches another tool (or it is a repeated name)
            try:
                calls.append(self.call(tool))
            except Impossible:
                continue
        if not calls:
            return None
        call = self.rule(" | ".join(calls))
        repeat = f' ("\\n" {call})*' if parallel else ""
        start = f'start: {call}{repeat} "\\n" "```"'
        lines = [start] + [f"{name}: {body}" for name, body in self.reachable(start)]
        lines += [f"{name}: {body}" for name, body in sorted(self.terminals.items())]
        return "\n".join(lines) + "\n"

    def reachable(self, start: str) -> list[tuple[str, str]]:
        """The rules `start` uses (an unused alternative chain is not written), in creation order."""
        bodies = {name: body for body, name in self.rules.items()}
        seen: set[str] = set()
        todo = _rule_names(start)
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(_rule_names(bodies[name]))
        return [(name, body) for name, body in bodies.items() if name in seen]

    # -- rules and terminals -------------------------------------------------------------------

    def rule(self, body: str) -> str:
        """A rule named for `body` (the same body, the same rule)."""
        if body not in self.rules:
            self.rules[body] = f"r{len(self.rules)}"
        return self.rules[body]

    def terminal(self, name: str, regex: str | None = None) -> str:
        self.terminals[name] = regex if regex is not None else _TERMINALS[name]
        return name

    def string(self, low: int, high: int | None) -> str:
        if low == 0 and high is None:
            return self.terminal("STRING")
        count = f"{{{low},{'' if high is None else high}}}"
        return self.terminal(f"STRING_{low}_{'' if high is None else high}",
                             f"/'{_SQ_CHAR}{count}'|\"{_DQ_CHAR}{count}\"/")

    # -- calls ---------------------------------------------------------------------------------

    def call(self, tool: ToolSpec) -> str:
        parameters = tool.parameters if isinstance(tool.parameters, Mapping) else {}
        self.root, self.memo = parameters, {}  # $ref resolves against this tool's schema
        _check_keywords(parameters)
        kind = parameters.get("type", "object")
        if kind not in ("object", ["object"]) or _validators(parameters) & {
                "enum", "const", "anyOf", "oneOf", "$ref", "items", "minItems", "maxItems",
                "minLength", "maxLength"}:
            raise Unsupported("parameters must be a plain object schema")
        members = self.members(parameters, 1)
        # chains from the end: K0 nothing written yet, K1 something written, D inside **{...}
        k0, k1, dict_tail = "", "", '"}"'
        for key, value, required in reversed(members):
            plain = _plain_identifier(key)
            entry = _key_literals(key) + ' ": " ' + value
            d_here = _join('", "', entry, dict_tail)
            if plain:
                k0_here = _join(_literal(key + "="), value, k1)
                k1_here = _join('", "', _literal(key + "="), value, k1)
            else:
                k0_here = _join('"**{"', entry, dict_tail)
                k1_here = _join('", **{"', entry, dict_tail)
            if not required:
                k0_here = _alternatives(k0_here, k0)
                k1_here = _alternatives(k1_here, k1)
                d_here = _alternatives(d_here, dict_tail)
            k0, k1, dict_tail = self.rule(k0_here), self.rule(k1_here), self.rule(d_here)
        return self.rule(_join(_literal(python_name(tool.name) + "("), k0, '")"'))

    def members(self, schema: Mapping[str, Any], level: int) -> list[tuple[str, str, bool]]:
        """(name, value rule, required) of the object's declared properties in schema order, then
        required names not declared; optional ones no value satisfies are left out."""
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        if not isinstance(properties, Mapping) or not isinstance(required, list):
            raise Unsupported("properties or required malformed")
        if not all(isinstance(name, str) for name in required):
            raise Impossible("a required name that is not a string")
        names = list(properties) + [name for name in dict.fromkeys(required) if name not in properties]
        members = []
        for name in names:
            needed = name in required
            sub = properties.get(name, extra)
            if name not in properties and extra is False:
                raise Impossible(f"{name!r} required but not allowed")
            try:
                members.append((name, self.value(sub, level), needed))
            except Impossible:
                if needed:
                    raise
        return members

    # -- values --------------------------------------------------------------------------------

    def value(self, schema: object, level: int) -> str:
        """A rule for the literals that satisfy `schema`."""
        if level > MAX_SCHEMA_DEPTH:
            raise Unsupported("schema nested too deeply")
        key = (id(schema), level)
        if key not in self.memo:
            self.keep.append(schema)
            try:
                self.memo[key] = self._value(schema, level)
            except (Unsupported, Impossible) as exc:
                self.memo[key] = exc
        found = self.memo[key]
        if isinstance(found, Exception):
            raise found
        return found

    def _value(self, schema: object, level: int) -> str:
        if schema is False:
            raise Impossible("false schema")
        if not isinstance(schema, Mapping):
            return self.any_value(ANY_DEPTH)  # fits_schema accepts anything
        _check_keywords(schema)
        validators = _validators(schema)
        alternatives = [kw for kw in ("anyOf", "oneOf", "$ref") if kw in schema]
        if alternatives:
            if len(validators) > 1:
                raise Unsupported(f"{alternatives[0]} beside other validation keywords")
            if alternatives == ["$ref"]:
                return self.value(self.resolve(schema["$ref"]), level + 1)
            branches = schema[alternatives[0]]
            if not isinstance(branches, list) or not branches:
                raise Unsupported("anyOf/oneOf must be a non-empty list")
            found = []
            for branch in branches:
                try:
                    found.append(self.value(branch, level + 1))
                except Impossible:
                    continue
            if not found:
                raise Impossible("no branch")
            return self.rule(" | ".join(dict.fromkeys(found)))
        if "enum" in schema or "const" in schema:
            return self.enum(schema)
        names = schema.get("type", list(_TYPES))
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or not all(name in _TYPES for name in names):
            raise Unsupported("type must name JSON types")
        if "integer" in names and "number" in names:
            names = [name for name in names if name != "integer"]
        found = []
        for name in _TYPES:
            if name in names:
                try:
                    found.append(self.typed(name, schema, level))
                except Impossible:
                    continue
        if not found:
            raise Impossible("no type")
        return self.rule(" | ".join(found))

    def typed(self, name: str, schema: Mapping[str, Any], level: int) -> str:
        if name == "null":
            return '"None"'
        if name == "boolean":
            return '"True" | "False"'
        if name in ("integer", "number"):
            bounds = {key: schema[key] for key in NUMERIC_BOUNDS if key in schema}
            if not bounds:
                return self.terminal("INT" if name == "integer" else "NUMBER")
            if not all(isinstance(v, int | float) and not isinstance(v, bool)
                       and math.isfinite(v) for v in bounds.values()):
                raise Unsupported("numeric bounds must be finite numbers")
            return self.rule(lark_json({"type": name, **bounds}))
        if name == "string":
            low, high = _bounds(schema, "minLength", "maxLength")
            return self.string(low, high)
        if name == "array":
            return self.array(schema, level)
        return self.dict_value(schema, level)

    def array(self, schema: Mapping[str, Any], level: int) -> str:
        low, high = _bounds(schema, "minItems", "maxItems")
        items = schema.get("items", True)
        if isinstance(items, list):
            raise Unsupported("items as a list")
        try:
            item = self.value(items, level + 1)
        except Impossible:
            if low:
                raise
            return '"[]"'
        if high == 0:
            return '"[]"'
        more = f'(", " {item})'
        if high is None:
            more += "*" if low <= 1 else f"{{{low - 1},}}"
        elif high > 1:
            more += f"{{{max(low - 1, 0)},{high - 1}}}"
        else:
            more = ""
        body = _join(item, more)
        return _join('"["', body if low else f"({body})?", '"]"')

    def dict_value(self, schema: Mapping[str, Any], level: int) -> str:
        properties = schema.get("properties")
        if not properties and not schema.get("required"):
            return self.free_object(schema.get("additionalProperties", True), level)
        members = self.members(schema, level + 1)
        a, b = "", ""  # a: nothing written yet, b: something written
        for key, value, required in reversed(members):
            entry = _join(_key_literals(key), '": "', value)
            a_here = _join(entry, b)
            b_here = _join('", "', entry, b)
            if not required:
                a_here = _alternatives(a_here, a)
                b_here = _alternatives(b_here, b)
            a, b = self.rule(a_here), self.rule(b_here)
        return _join('"{"', a, '"}"')

    def free_object(self, extra: object, level: int) -> str:
        if extra is False:
            return '"{}"'
        try:
            value = self.value(extra, level + 1)
        except Impossible:
            return '"{}"'
        entry = self.rule(f'{self.terminal("STRING")} ": " {value}')
        return f'"{{" ({entry} (", " {entry})*)? "}}"'

    def any_value(self, levels: int) -> str:
        scalars = f'{self.terminal("STRING")} | {self.terminal("NUMBER")} | "True" | "False" | "None"'
        if levels == 0:
            return self.rule(scalars)
        inner = self.any_value(levels - 1)
        entry = self.rule(f'STRING ": " {inner}')
        return self.rule(f'{scalars} | "[" ({inner} (", " {inner})*)? "]"'
                         f' | "{{" ({entry} (", " {entry})*)? "}}"')

    def enum(self, schema: Mapping[str, Any]) -> str:
        options = schema["enum"] if "enum" in schema else [schema["const"]]
        if not isinstance(options, list):
            raise Unsupported("enum must be a list")
        found: list[str] = []
        for option in options:
            found.extend(_literal(text) for text in _option_literals(option, schema))
        if not found:
            raise Impossible("no enum option fits")
        return self.rule(" | ".join(dict.fromkeys(found)))

    def resolve(self, ref: object) -> object:
        if not isinstance(ref, str):
            raise Unsupported("$ref must be a string")
        for prefix in ("#/$defs/", "#/definitions/"):
            if ref.startswith(prefix):
                name = ref[len(prefix):].replace("~1", "/").replace("~0", "~")
                defs = self.root.get(prefix[2:-1])
                if isinstance(defs, Mapping) and name in defs and "/" not in ref[len(prefix):]:
                    return cast(object, defs[name])
        raise Unsupported(f"$ref {ref!r}")


def _resolves_to(tool: ToolSpec, tools: Sequence[ToolSpec]) -> int:
    """Which tool `judge` finds for the name this tool is called by."""
    called = python_name(tool.name)
    for index, other in enumerate(tools):
        if other.name == called:
            return index
    for index, other in enumerate(tools):
        if python_name(other.name) == called:
            return index
    return -1


def _rule_names(body: str) -> list[str]:
    return _RULE_NAME.findall(_LARK_STRING.sub("", body))


def _check_keywords(schema: Mapping[str, Any]) -> None:
    used = UNSUPPORTED_KEYWORDS.intersection(key for key in schema if isinstance(key, str))
    if used:
        raise Unsupported(f"unsupported keywords {sorted(used)}")


def _validators(schema: Mapping[str, Any]) -> set[str]:
    return {key for key in schema if key not in _ANNOTATIONS_ONLY}


def _bounds(schema: Mapping[str, Any], low_name: str, high_name: str) -> tuple[int, int | None]:
    low, high = schema.get(low_name), schema.get(high_name)
    low = 0 if low is None else low  # null: no bound, as fits_schema reads it
    for bound in (low, high):
        if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)
                                  or not 0 <= bound <= MAX_BOUND):
            raise Unsupported(f"{low_name}/{high_name} must be integers from 0 to {MAX_BOUND}")
    if high is not None and high < low:
        raise Impossible("maxItems/maxLength below the minimum")
    return low, high


def _option_literals(option: object, schema: Mapping[str, Any]) -> list[str]:
    """The Python literals for an enum/const option that read back as a value fitting `schema`."""
    try:
        if depth(option) > ENUM_DEPTH:
            return []
        texts = _string_literals(option) if isinstance(option, str) else [py_literal(option)]
        return [text for text in texts if _reads_back(text, schema)]
    except Exception:  # an option that is not JSON (a set, a NaN...) is no option
        return []


def _reads_back(text: str, schema: Mapping[str, Any]) -> bool:
    try:
        value = to_json(ast.literal_eval(text))
    except Exception:
        return False
    return "`" not in text and fits_schema(value, schema) and _within_bounds(value, schema)


def _within_bounds(value: object, schema: object) -> bool:
    """The length and item-count bounds fits_schema does not check, down the same keywords."""
    if not isinstance(schema, Mapping):
        return True
    if isinstance(value, str) and not _between(len(value), schema, "minLength", "maxLength"):
        return False
    if isinstance(value, list):
        return _between(len(value), schema, "minItems", "maxItems") and all(
            _within_bounds(item, schema.get("items")) for item in value)
    if isinstance(value, dict):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        extra = schema.get("additionalProperties")
        return all(_within_bounds(item, properties.get(key, extra)) for key, item in value.items())
    return True


def _between(size: int, schema: Mapping[str, Any], low_name: str, high_name: str) -> bool:
    low, high = schema.get(low_name), schema.get(high_name)
    return not (isinstance(low, int) and size < low) and not (isinstance(high, int) and size > high)


def _string_literals(text: str) -> list[str]:
    """`text` as Python string literals: repr's form (what render_call writes) and the double-
    quoted JSON-like form, where they read back as `text`."""
    forms = [py_literal(text), json.dumps(text, ensure_ascii=False).replace("`", "\\x60")]
    found = []
    for form in dict.fromkeys(forms):
        try:
            form.encode("utf-8")
            if ast.literal_eval(form) == text and "`" not in form:
                found.append(form)
        except Exception:
            continue
    return found


def _key_literals(key: str) -> str:
    literals = [_literal(form) for form in _string_literals(key)]
    if not literals:
        raise Impossible("a key with no literal")
    return literals[0] if len(literals) == 1 else "(" + " | ".join(literals) + ")"


def _literal(text: str) -> str:
    """`text` as a Lark string literal (JSON syntax, ASCII)."""
    return json.dumps(text).replace("\x7f", "\\u007f")


def _join(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _alternatives(*options: str) -> str:
    """`options` as alternatives, an empty one (nothing written) as an optional group."""
    present = [option for option in options if option]
    if len(present) == len(options):
        return " | ".join(f"({option})" if " | " in option else option for option in present)
    inner = " | ".join(present)
    return f"({inner})?" if inner else ""

"""Request validation by the served contract itself: openapi.yaml's request schema."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError, best_match

from ...domain.errors import InvalidRequest

# OpenAI request fields this server does not implement: accepted only at their no-op value
# (openapi.yaml declares the same no-op-only schemas, so the contract and this table agree).
UNSUPPORTED_PARAMETERS: Mapping[str, tuple[Any, ...]] = {
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "service_tier": ("auto", "default"),
    "web_search_options": (),
    "functions": (),
    "function_call": (),
    "verbosity": (),
    "prompt_cache_retention": (),
    "moderation": (),
}

# SGLang's request fields that sglang-router adds to every chat and completions request it
# forwards (README "Fleet"): accepted at the value that is what this server does anyway (the
# reply's text holds no end-of-turn token and its tool and reasoning markers are parsed out;
# reasoning is returned apart, as it comes; no hidden states), else 400 naming them.
# `ignore_eos`, `no_stop_trim` and `continue_final_message` are honoured (codec.py).
ROUTER_NO_OPS: Mapping[str, tuple[Any, ...]] = {
    "skip_special_tokens": (True,),
    "separate_reasoning": (True,),
    "stream_reasoning": (True,),
    "return_hidden_states": (False,),
}
CHAT_UNSUPPORTED_PARAMETERS: Mapping[str, tuple[Any, ...]] = {**UNSUPPORTED_PARAMETERS, **ROUTER_NO_OPS}

# The same for the legacy completions API (createCompletion): no fill-in-the-middle.
COMPLETION_UNSUPPORTED_PARAMETERS: Mapping[str, tuple[Any, ...]] = {
    "suffix": ("",), **{name: ROUTER_NO_OPS[name] for name in ("skip_special_tokens",
                                                                 "return_hidden_states")}}

# Fields only meaningful when another is true: field -> (that field, True). openapi.yaml
# declares the same as dependentSchemas; checked first so that the message names the field sent.
ONLY_WITH: Mapping[str, tuple[str, Any]] = {"stream_options": ("stream", True)}

ERROR_CODE = "x-mlx-server-error-code"  # a schema's own error code, where `invalid_value` is vaguer

_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
               float: "number", type(None): "null"}


class RequestValidator:
    """Checks a decoded JSON body against one schema of the OpenAPI document."""

    def __init__(self, spec: Mapping[str, Any], schema_name: str, *,
                 unsupported: Mapping[str, tuple[Any, ...]] = UNSUPPORTED_PARAMETERS,
                 only_with: Mapping[str, tuple[str, Any]] = ONLY_WITH) -> None:
        schema = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
        self._validator = jsonschema.Draft202012Validator(schema)
        self._unsupported, self._only_with = unsupported, only_with

    def validate(self, body: object) -> None:
        if not isinstance(body, dict):
            raise InvalidRequest(
                f"The request body must be a JSON object, not {_json_type(body)}.",
                code="invalid_type")
        _refuse_unsupported(body, self._unsupported)
        _refuse_orphans(body, self._only_with)
        error = best_match(self._validator.iter_errors(body), key=_relevance)
        if error is not None:
            raise _to_domain(_specific(error))


def _refuse_unsupported(body: Mapping[str, Any],
                        unsupported: Mapping[str, tuple[Any, ...]]) -> None:
    for name, no_ops in unsupported.items():
        value = body.get(name)
        if value is not None and value not in no_ops:
            accepted = (" (it is accepted only as " + " or ".join(json.dumps(v) for v in no_ops)
                        + ")") if no_ops else ""
            raise InvalidRequest(
                f"Unsupported parameter: '{name}' is not supported by this server{accepted}.",
                param=name, code="unsupported_parameter")


def _refuse_orphans(body: Mapping[str, Any], only_with: Mapping[str, tuple[str, Any]]) -> None:
    for name, (needed, value) in only_with.items():
        if body.get(name) is not None and body.get(needed) != value:
            raise InvalidRequest(  # OpenAI's own words
                f"The '{name}' parameter is only allowed when '{needed}' is enabled.", param=name,
                code="invalid_value")


def _relevance(error: ValidationError) -> tuple[int, int]:
    # Prefer errors deep in the document: they name the field at fault.
    return (-len(error.absolute_path), 0 if error.validator in ("oneOf", "anyOf") else 1)


def _specific(error: ValidationError) -> ValidationError:
    """Descend through oneOf/anyOf to the one alternative the client evidently meant (the
    message whose `role`, the part whose `type` matches), so the error names the real fault."""
    while error.validator in ("oneOf", "anyOf") and error.context:
        branches: dict[Any, list[ValidationError]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        viable = [errs for errs in branches.values() if not any(map(_rules_out_branch, errs))]
        if len(viable) != 1:
            return _type_union(error, branches) if not viable else error
        error = max(viable[0], key=_relevance)  # no descent: the loop does it, pruning
    return error


def _rules_out_branch(error: ValidationError) -> bool:
    at_top = not error.relative_path
    discriminator = (error.validator in ("const", "enum") and len(error.relative_path) == 1
                     and error.relative_path[0] in ("role", "type"))
    return (at_top and error.validator == "type") or discriminator


def _type_union(error: ValidationError, branches: dict[Any, list[ValidationError]]) -> ValidationError:
    expected: list[str] = []
    for errs in branches.values():
        for sub in errs:
            if sub.validator == "type" and not sub.relative_path:
                value = sub.validator_value
                expected.extend(value if isinstance(value, list) else [value])
            elif sub.validator in ("const", "enum") and not sub.relative_path:
                expected.append("one of the documented values")
    if not expected:
        return error
    return ValidationError(error.message, validator="type", validator_value=expected,
                           instance=error.instance, path=error.absolute_path)


def _to_domain(error: ValidationError) -> InvalidRequest:
    path = param_path(error.absolute_path)
    if error.validator == "required":
        missing = str(error.message).split("'")[1]
        param = f"{path}.{missing}" if path else missing
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    if error.validator == "dependentRequired":
        needed, given = str(error.message).split("'")[1::2][:2]
        return InvalidRequest(f"'{given}' is only allowed when '{needed}' is specified.",
                              param=given, code="invalid_value")
    where = f"'{path}'" if path else "the request body"
    if error.validator == "not" and error.validator_value == {}:  # a field refused where it is
        return InvalidRequest(f"{where} is not allowed here (on this message's role).",
                              param=path or None, code=error.schema.get(ERROR_CODE, "invalid_value"))
    if error.validator == "type":
        return InvalidRequest(
            f"Invalid type for {where}: expected {_expected(error.validator_value)}, "
            f"but got {_json_type(error.instance)}.", param=path or None, code="invalid_type")
    code = error.schema.get(ERROR_CODE, "invalid_value") if isinstance(error.schema, dict) \
        else "invalid_value"
    return InvalidRequest(f"Invalid value for {where}: {_short(error.message)}", param=path or None,
                          code=code)


def _short(message: str, limit: int = 300) -> str:
    """jsonschema's messages quote the offending value, which may be megabytes long."""
    return message if len(message) <= limit else f"{message[:limit]}... (cut)"


def param_path(path: Any) -> str:
    """OpenAI's `param` spelling of a JSON path: `messages[2].content[0].image_url.url`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _expected(value: object) -> str:
    return " or ".join(value) if isinstance(value, list) else str(value)


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)

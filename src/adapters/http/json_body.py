"""Reading a JSON request body safely: bounded in size, time and shape, decoded off the event loop.

Everything here is proportional to the body's size, so none of it may run on the event loop (a
100,000-message body would stall every other connection): `read_json` awaits the bytes with a
deadline, then decodes and checks them in a worker thread. Every JSON API (chat today, others to
come) reads its body through here, so the rules below hold on all of them:

- at most `limit` bytes (413), arriving within `timeout` seconds (408: a client may not trickle
  a body in for as long as it likes);
- strict JSON: `NaN`, `Infinity` and numbers too large for a float (`1e999`) are refused, since
  Python's decoder would turn them into floats no sampler can use;
- containers nested at most `MAX_DEPTH` deep (every later walk over the body, schema validation
  included, recurses);
- no lone UTF-16 surrogates (`"\\ud800"`) in any string or key: they cannot be encoded as UTF-8,
  so the tokenizer, the logs or the response would fail later, mid-generation.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

import falcon
import falcon.asgi

from ...domain.errors import InvalidRequest
from ...domain.tool_schema import MAX_DEPTH
from .validation import param_path

T = TypeVar("T")


async def read_json(req: falcon.asgi.Request, limit: int, timeout: float,
                    then: Callable[[Any], T]) -> T:
    """The body of `req` decoded and checked, passed to `then` in the same worker thread (the
    codec: validation and structuring are proportional to the body's size too)."""
    body = await read_body(req, limit, timeout)
    return await asyncio.to_thread(lambda: then(decode(body)))


async def read_body(req: falcon.asgi.Request, limit: int, timeout: float) -> bytes:
    if req.content_length is not None and req.content_length > limit:
        raise falcon.HTTPContentTooLarge(description=_too_large(limit))
    try:
        body: bytes = await asyncio.wait_for(req.stream.read(limit + 1), timeout)
    except TimeoutError:
        raise falcon.HTTPError(  # Falcon has no class of its own for 408
            falcon.HTTP_408, description=f"The request body did not arrive within {timeout:g} "
                                         "seconds.") from None
    if len(body) > limit:
        raise falcon.HTTPContentTooLarge(description=_too_large(limit))
    return body


def decode(body: bytes) -> Any:
    """Strict JSON from `body`, checked by `check_shape`. InvalidRequest when it is not."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep(None) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc}). Send valid JSON with "
            "'Content-Type: application/json'.", code="invalid_json") from None
    check_shape(value)
    return value


def check_shape(value: Any) -> None:
    """Walk `value` without recursion: depth, finite numbers, strings encodable as UTF-8."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            _check_depth(path)
            for key, child in item.items():
                _check_text(key, path)
                stack.append((child, (*path, key)))
        elif isinstance(item, list):
            _check_depth(path)
            stack.extend((child, (*path, index)) for index, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidRequest(
                f"Invalid value for '{param_path(path)}': numbers must be finite (this one overflows a "
                "64-bit float).", param=param_path(path) or None, code="invalid_value")


def _check_depth(path: tuple[str | int, ...]) -> None:
    if len(path) >= MAX_DEPTH:
        raise _too_deep(path)


def _check_text(text: str, path: tuple[str | int, ...]) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        where = f"'{param_path(path)}'" if path else "the request body"
        raise InvalidRequest(
            f"Invalid string in {where}: it contains a lone UTF-16 surrogate (such as \\ud800), "
            "which is not text. Send valid Unicode.", param=param_path(path) or None,
            code="invalid_value") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON: numbers must be finite")


def _too_deep(path: tuple[str | int, ...] | None) -> InvalidRequest:
    where = f" (at '{param_path(path)}')" if path else ""
    return InvalidRequest(f"The request body nests arrays and objects more than {MAX_DEPTH} levels "
                          f"deep{where}.", param=param_path(path) if path else None,
                          code="invalid_value")


def _too_large(limit: int) -> str:
    return f"The request body is larger than the server's limit of {limit} bytes."

"""What a request may ask of the sampler, checked once per request before anything reaches the
engine's native code.

An index past the model's vocabulary does not fail politely there: MLX scatters out of bounds
(a `logit_bias` key) and the process dies, or mlx_vlm raises mid-generation (`top_k` as large as
the vocabulary). So every token id, count or number that sizes an array is checked here against
the loaded model, and every other number against OpenAI's documented range, with a 400 naming the
parameter and the range it must lie in.

A JSON schema (`response_format`) that no finite JSON value satisfies is refused here as well: the
grammar engine would compile it and then find no token to emit (or loop until it gives up).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import unquote

from .conversation import ResponseFormat, SamplingParams
from .errors import InvalidRequest

LOGIT_BIAS = 100.0  # OpenAI: each bias lies in [-100, 100]
TOP_LOGPROBS = 20  # OpenAI: 0 to 20 alternatives per position
SEED_BITS = 64  # OpenAI: a signed 64-bit integer
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: below it MLX holds 0
# a stop sequence is matched against the text as it grows, costing up to its length squared per
# token; OpenAI states no bound, and real stops are a few characters
STOP_CHARS = 1000
# (name, low, high, low inclusive): OpenAI's ranges, and the extensions' documented ones
_RANGES: tuple[tuple[str, float, float, bool], ...] = (
    ("temperature", 0.0, 2.0, True),
    ("top_p", 0.0, 1.0, True),
    ("min_p", 0.0, 1.0, True),
    ("presence_penalty", -2.0, 2.0, True),
    ("frequency_penalty", -2.0, 2.0, True),
    ("repetition_penalty", 0.0, 10.0, False),  # 0 divides by zero; negative flips the logits
)


def check_sampling(params: SamplingParams, vocab_size: int | None = None) -> None:
    """Raise InvalidRequest (`invalid_value`, naming the parameter) for a value out of range.
    Without `vocab_size` (no model loaded yet) only the model-independent ranges are checked;
    with it, every token id and count is checked against it (check_token_ids)."""
    for name, low, high, inclusive in _RANGES:
        _check_number(name, getattr(params, name), low, high, inclusive)
    _check_seed(params.seed)
    _check_stops(params.stop)
    if params.max_tokens is not None and (not _is_int(params.max_tokens) or params.max_tokens < 1):
        raise _invalid("max_tokens", "must be an integer of at least 1")
    check_token_ids(params, vocab_size)
    _check_response_format(params.response_format)


def check_token_ids(params: SamplingParams, vocab_size: int | None) -> None:
    """The part of check_sampling that depends on the model: token ids lie in [0, vocab_size),
    counts within it. Cheap (no walk over the request), so it can run once the model is loaded,
    after check_sampling ran without it."""
    for token, bias in params.logit_bias.items():
        _check_bias(token, bias, vocab_size)
    _check_top_k(params.top_k, vocab_size)
    _check_top_logprobs(params.top_logprobs, vocab_size)


def _check_number(name: str, value: float | None, low: float, high: float, inclusive: bool) -> None:
    if value is None:
        return
    inside = (low <= value if inclusive else low < value) and value <= high  # NaN is outside
    if isinstance(value, bool) or not isinstance(value, int | float) or not inside:
        bound = "from" if inclusive else "greater than"
        raise _invalid(name, f"must be a number {bound} {low:g} to {high:g}, not {value!r}")
    if not inclusive and low == 0 and value < FLOAT32_TINY:  # float32 holds 0: it divides by 0
        raise _invalid(name, f"is {value!r}, too close to 0 for the sampler's 32-bit floats: it "
                       f"must be at least {FLOAT32_TINY:.9g}")


def _check_seed(seed: int | None) -> None:
    limit = 1 << (SEED_BITS - 1)
    if seed is not None and (not _is_int(seed) or not -limit <= seed < limit):
        raise _invalid("seed", f"must be an integer from {-limit} to {limit - 1} (64-bit)")


def _check_stops(stops: tuple[str, ...]) -> None:
    for stop in stops:
        if len(stop) > STOP_CHARS:
            raise _invalid("stop", f"holds a sequence of {len(stop)} characters; each may have at "
                           f"most {STOP_CHARS}")


def _check_bias(token: int, bias: float, vocab_size: int | None) -> None:
    if not _is_int(token) or token < 0 or (vocab_size is not None and token >= vocab_size):
        raise _invalid("logit_bias", f"has the key {token!r}, which is not a token id of this "
                       f"model: ids run from 0 to {_last_id(vocab_size)}. Token ids are the model's own "
                       "tokenizer's, not OpenAI's")
    if isinstance(bias, bool) or not isinstance(bias, int | float) or \
            not -LOGIT_BIAS <= bias <= LOGIT_BIAS:
        raise _invalid("logit_bias", f"maps token {token} to {bias!r}: a bias must be a number "
                       f"from {-LOGIT_BIAS:g} to {LOGIT_BIAS:g}")


def _check_top_k(top_k: int | None, vocab_size: int | None) -> None:
    """mlx_vlm's top-k sampler takes 0 < k < the logits' width; 0 (or none) means no limit."""
    if top_k is None:
        return
    if not _is_int(top_k) or top_k < 0 or (vocab_size is not None and top_k >= vocab_size):
        raise _invalid("top_k", f"must be an integer from 0 (no limit) to {_last_id(vocab_size)}, "
                       f"smaller than this model's vocabulary, not {top_k!r}")


def _check_top_logprobs(count: int, vocab_size: int | None) -> None:
    most = min(TOP_LOGPROBS, vocab_size) if vocab_size is not None else TOP_LOGPROBS
    if not _is_int(count) or not 0 <= count <= most:
        raise _invalid("top_logprobs", f"must be an integer from 0 to {most}, not {count!r}")


def _check_response_format(response_format: ResponseFormat | None) -> None:
    if response_format is None or response_format.schema is None:
        return
    try:
        satisfiable = _satisfiable(response_format.schema)
    except RecursionError:  # nested deeper than the interpreter's stack: no grammar engine takes it
        raise _invalid("response_format", "holds a JSON schema nested too deeply") from None
    if not satisfiable:
        raise InvalidRequest(
            "The JSON schema in response_format cannot be used: no finite JSON value satisfies "
            "it (every path through its $ref recursion recurses again, or a required part is "
            "`false`). Make the recursion optional: a property not in `required`, an array "
            "without `minItems`, or an `anyOf` with a non-recursive branch.",
            param="response_format", code="invalid_value")


def _satisfiable(root: Mapping[str, Any]) -> bool:
    """Whether some finite JSON value could satisfy `root`: a least fixpoint over its subschemas
    ("productive" in grammar terms), each evaluated again only when one it depends on is found
    productive, so a schema of n parts costs O(n) evaluations. Conservative: a keyword it does not
    know never makes a schema unsatisfiable; refs it cannot resolve are left to the grammar
    engine, which names them."""
    nodes = _subschemas(root)
    parents: dict[int, list[Any]] = {}
    for node in nodes.values():
        for child in _needs(node, root):
            parents.setdefault(id(child), []).append(node)
    productive: set[int] = set()

    def holds(schema: Any) -> bool:
        if isinstance(schema, bool):
            return schema
        return not isinstance(schema, dict) or id(schema) in productive

    pending = list(nodes.values())
    while pending:
        node = pending.pop()
        if id(node) not in productive and _productive(node, root, holds):
            productive.add(id(node))
            pending.extend(parents.get(id(node), ()))
    return holds(root)


def _subschemas(root: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """Every dict inside `root` (iteratively: deep schemas must not exhaust the stack)."""
    found: dict[int, dict[str, Any]] = {}
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict) and id(item) not in found:
            found[id(item)] = item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _needs(node: Mapping[str, Any], root: Mapping[str, Any]) -> Iterator[Any]:
    """The subschemas whose satisfiability `node`'s may depend on."""
    if (target := _resolve(node.get("$ref"), root)) is not None:
        yield target
    for key in ("allOf", "anyOf", "oneOf", "prefixItems"):
        if isinstance(node.get(key), list):
            yield from node[key]
    if isinstance(node.get("properties"), dict):
        yield from node["properties"].values()
    if "items" in node:
        yield node["items"]


def _productive(node: Mapping[str, Any], root: Mapping[str, Any], holds: Callable[[Any], bool]) -> bool:
    """One step of the fixpoint: is `node` satisfiable if exactly the subschemas `holds` are?"""
    target = _resolve(node.get("$ref"), root)
    if target is not None and not holds(target):
        return False
    if isinstance(node.get("allOf"), list) and not all(map(holds, node["allOf"])):
        return False
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and node[key] and not any(map(holds, node[key])):
            return False
    if "enum" in node or "const" in node:
        return True
    kinds = node.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else None
    if kinds is None:  # no type: a string, number, ... satisfies what remains
        return True
    return any(_kind_productive(kind, node, holds) for kind in kinds)


def _kind_productive(kind: Any, node: Mapping[str, Any], holds: Callable[[Any], bool]) -> bool:
    if kind == "object":
        properties = node.get("properties")
        required = node.get("required")
        if not isinstance(properties, dict) or not isinstance(required, list):
            return True
        return all(holds(properties[name]) for name in required
                   if isinstance(name, str) and name in properties)
    if kind == "array":
        least = node.get("minItems", 0)
        if not _is_int(least) or least < 1:
            return True
        prefix = node.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        if not all(map(holds, prefix[:least])):
            return False
        return least <= len(prefix) or holds(node.get("items", True))
    return True


def _resolve(ref: Any, root: Mapping[str, Any]) -> Any:
    """The subschema a local `#/...` JSON pointer names; None for anything else (external refs,
    anchors, missing targets: the grammar engine reports those)."""
    if not isinstance(ref, str) or not ref.startswith("#") or (ref != "#" and ref[1:2] != "/"):
        return None
    target: Any = root
    for part in ref[2:].split("/") if ref != "#" else ():
        part = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return None
    return target


def _last_id(vocab_size: int | None) -> str:
    return f"{vocab_size - 1}" if vocab_size is not None else "the vocabulary size - 1"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invalid(param: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid value for '{param}': it {problem}.", param=param,
                          code="invalid_value")


"""Constrained JSON output with llguidance (response_format), on every MLX device.

mlx_vlm's LLGuidanceLogitsProcessor applies its token mask with a Metal kernel; on the CPU (and
CUDA) this subclass applies the same llguidance bitmask with plain MLX ops instead.

Whatever llguidance makes of a schema is the client's business, never a server fault: a schema it
cannot compile, one that admits no token at all, one too deep for the encoder, a panic in its Rust
code (pyo3 raises those as BaseException), or a matcher that gives up mid-generation all become
InvalidRequest naming `response_format`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from ...domain.errors import InvalidRequest

_ANY_OBJECT: Mapping[str, Any] = {"type": "object"}
_CONTROL_FLOW = (GeneratorExit, KeyboardInterrupt, SystemExit)


def json_logits_processor(tokenizer: Any, schema: Mapping[str, Any] | None) -> Any:
    """A logits processor that only lets `tokenizer`'s tokens spell JSON valid against
    `schema` (any JSON object when None). Raises InvalidRequest when llguidance cannot compile
    the schema, or its grammar admits no first token, with the reason."""
    import mlx.core as mx

    processor = _compiled(tokenizer, dict(schema) if schema is not None else _ANY_OBJECT)
    processor.__class__ = _guarded_class(portable=not mx.metal.is_available())
    return processor


def _compiled(tokenizer: Any, schema: Mapping[str, Any]) -> Any:
    import llguidance
    from mlx_vlm.structured import build_json_schema_logits_processor

    try:
        processor = build_json_schema_logits_processor(tokenizer, json.dumps(schema))
        error = str(llguidance.LLMatcher.validate_grammar(processor.grammar,
                                                          processor.llg_tokenizer))
        error = error or _first_step_error(processor)
    except RecursionError:
        error = "it is nested too deeply"
    except BaseException as exc:  # a Rust panic is a BaseException
        if isinstance(exc, _CONTROL_FLOW):
            raise
        error = str(exc) or type(exc).__name__
    if error:
        raise _unusable(error)
    return processor


def _first_step_error(processor: Any) -> str:
    """llguidance compiles a grammar whose every path recurses forever (`{"$ref": "#"}`) and only
    fails when asked for the first token mask: ask it now, on a matcher of its own, so the client
    gets a 400 before any generation starts."""
    import llguidance

    matcher = llguidance.LLMatcher(processor.llg_tokenizer, processor.grammar)
    matcher.compute_bitmask()
    return str(matcher.get_error() or "")


def _unusable(reason: str) -> InvalidRequest:
    return InvalidRequest(f"The JSON schema in response_format cannot be used: {reason}",
                          param="response_format", code="invalid_value")


def _portable_apply(self: Any, logits: Any) -> Any:
    self._fill_next_token_mask()  # fills the numpy view self.bitmask of packed int32 words
    return apply_bitmask(logits, self.bitmask, portable=True)


def apply_bitmask(logits: Any, bitmask: Any, *, portable: bool) -> Any:
    """`logits` with every token llguidance's packed `bitmask` (numpy int32 words, one row per
    batch entry) bans set to -inf: by plain MLX ops (`portable`, any device) or by mlx_vlm's
    Metal kernel."""
    import mlx.core as mx
    import numpy as np

    if not portable:
        from mlx_vlm.structured import _apply_llguidance_mask

        return _apply_llguidance_mask(logits, mx.array(bitmask))
    bits = np.unpackbits(bitmask.view(np.uint8), axis=-1, bitorder="little")
    vocab = logits.shape[-1]
    allowed = np.zeros((bits.shape[0], vocab), dtype=bool)
    width = min(vocab, bits.shape[1])
    allowed[:, :width] = bits[:, :width].astype(bool)  # rows past the tokenizer stay banned
    return mx.where(mx.array(allowed), logits, mx.array(-float("inf"), dtype=logits.dtype))


@functools.cache
def _guarded_class(portable: bool) -> type:
    """mlx_vlm's processor with matcher failures reported as the client's, and (`portable`) the
    mask applied by plain MLX ops instead of a Metal kernel (built lazily: importing mlx_vlm costs
    seconds)."""
    from mlx_vlm.structured import LLGuidanceLogitsProcessor

    def _consume_tokens(self: Any, last_tokens: list[int]) -> None:
        """mlx_vlm's step, with a matcher that gives up (a recursion its parser cannot bound,
        found only tokens in) reported as the schema's fault, not the server's."""
        try:
            LLGuidanceLogitsProcessor._consume_tokens(self, last_tokens)
        except BaseException as exc:  # a Rust panic is a BaseException
            if isinstance(exc, _CONTROL_FLOW):
                raise
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise _unusable(f"generation could not follow it ({reason})") from exc

    methods: dict[str, Any] = {"_consume_tokens": _consume_tokens}
    if portable:
        methods["_apply_bitmask"] = _portable_apply
    name = "PortableLLGuidanceProcessor" if portable else "GuardedLLGuidanceProcessor"
    return type(name, (LLGuidanceLogitsProcessor,), methods)

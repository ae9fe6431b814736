"""Constrained JSON output with llguidance (response_format), on every MLX device.

mlx_vlm's LLGuidanceLogitsProcessor applies its token mask with a Metal kernel; on the CPU (and
CUDA) this subclass applies the same llguidance bitmask with plain MLX ops instead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from ..domain.errors import InvalidRequest

_ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


def json_logits_processor(tokenizer: Any, schema: Mapping[str, Any] | None) -> Any:
    """A logits processor that only lets `tokenizer`'s tokens spell JSON valid against
    `schema` (any JSON object when None). Raises InvalidRequest when llguidance cannot compile
    the schema, with its reason."""
    import llguidance
    import mlx.core as mx
    from mlx_vlm.structured import build_json_schema_logits_processor

    text = json.dumps(dict(schema) if schema is not None else _ANY_OBJECT)
    try:
        processor = build_json_schema_logits_processor(tokenizer, text)
        error = str(llguidance.LLMatcher.validate_grammar(processor.grammar,
                                                          processor.llg_tokenizer))
    except Exception as exc:  # the compiler raises on schemas it cannot turn into a grammar
        error = str(exc) or type(exc).__name__
    if error:
        raise InvalidRequest(f"The JSON schema in response_format cannot be used: {error}",
                             param="response_format", code="invalid_value")
    if mx.metal.is_available():
        return processor
    processor.__class__ = _portable_class()
    return processor


def _portable_apply(self: Any, logits: Any) -> Any:
    import mlx.core as mx
    import numpy as np

    self._fill_next_token_mask()  # fills the numpy view self.bitmask of packed int32 words
    bits = np.unpackbits(self.bitmask.view(np.uint8), axis=-1, bitorder="little")
    vocab = logits.shape[-1]
    allowed = np.zeros((bits.shape[0], vocab), dtype=bool)
    width = min(vocab, bits.shape[1])
    allowed[:, :width] = bits[:, :width].astype(bool)  # rows past the tokenizer stay banned
    return mx.where(mx.array(allowed), logits, mx.array(-float("inf"), dtype=logits.dtype))


@functools.cache
def _portable_class() -> type:
    """mlx_vlm's processor with the mask applied by plain MLX ops (built lazily: importing
    mlx_vlm costs seconds)."""
    from mlx_vlm.structured import LLGuidanceLogitsProcessor

    return type("PortableLLGuidanceProcessor", (LLGuidanceLogitsProcessor,),
                {"_apply_bitmask": _portable_apply})

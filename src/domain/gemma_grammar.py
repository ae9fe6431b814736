"""PLACEHOLDER (grammar-core branch): the Gemma `tool_code` call grammar is written on another
branch; the lead replaces this whole file with that one at merge. Until then Gemma calls are not
constrained (every request falls back to checking the calls after they are written)."""

from __future__ import annotations

from collections.abc import Sequence

from .conversation import ToolSpec

# the JSON Schema keywords the Gemma grammar cannot express (the real module lists them)
UNSUPPORTED_KEYWORDS: frozenset[str] = frozenset()


def gemma_call_grammar(tools: Sequence[ToolSpec], parallel: bool) -> str | None:
    """PLACEHOLDER: always None (no grammar) until the real module is merged."""
    return None

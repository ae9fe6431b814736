"""Tool calls in model output: the public face of the formats (which family uses which is in
its profile, domain.families).

Rules, identical for `parse` and for a streamer (see tool_blocks for the details):
- a call block runs from the family's opener to the first closer after it; each block is judged
  on its own and is accepted only when every call in it parses, names a known tool and fits the
  tool's JSON schema;
- a rejected block stays in the content verbatim (never lost) and is counted in `rejected`; an
  opener never closed is content too;
- accepted blocks are cut out together with the whitespace around them; text on both sides is
  joined by the whitespace that preceded the block; content is None when nothing remains and
  there are calls;
- finish_reason is "tool_calls" when at least one call was accepted.
"""

from __future__ import annotations

from .tool_gemma import GemmaToolCalls
from .tool_hermes import HermesToolCalls
from .tool_types import (
    CallArguments,
    CallStarted,
    ContentPiece,
    ParsedReply,
    ToolCallFormat,
    ToolCallStreamer,
    ToolEvent,
    assemble,
)

__all__ = [
    "CallArguments",
    "CallStarted",
    "ContentPiece",
    "GemmaToolCalls",
    "HermesToolCalls",
    "ParsedReply",
    "ToolCallFormat",
    "ToolCallStreamer",
    "ToolEvent",
    "assemble",
]

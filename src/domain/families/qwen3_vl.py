"""Qwen3-VL (`model_type` qwen3_vl): Hermes `<tool_call>` blocks; its chat template renders the
tools (a `<tools>` block in the system turn) and tool results (`<tool_response>` in a user turn)
itself. Its text config declares a 262144-token context."""

from __future__ import annotations

from ..tool_hermes import HermesToolCalls
from .profile import Profile

PROFILE = Profile(name="qwen3_vl", title="Qwen3-VL", model_types=("qwen3_vl",),
                  tool_format=HermesToolCalls(), default_context=262144)
